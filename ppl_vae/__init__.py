"""ppl_vae: VAE-style models fitted by Pyro SVI, with the sampled-KL and analytic-KL ELBO
measured side by side, and the posterior checked in ArviZ.

The identity everything rests on (see docs/derivation.md)::

    log p(x) - KL(q(z|x) || p(z|x)) = E_q[log p(x|z)] - KL(q(z|x) || p(z))   (the ELBO)
"""

from . import arviz_compat, nets, optim
from .comparison import Comparison, ComparisonSettings, compare_estimators
from .data import load_data, train_test_split
from .diagnostics import vi_diagnostics
from .errors import (
    CheckpointError,
    DataError,
    EstimatorError,
    NumericalError,
    OutputError,
    PairError,
    PplVaeError,
)
from .estimators import ESTIMATORS, Estimator
from .evaluation import evaluate, importance_log_weights, log_likelihood
from .inference_data import to_inference_data
from .kl import KLFallbackWarning
from .pair import ModelGuidePair, load_pair
from .params import load_params, save_params
from .particles import ParticleLoopWarning
from .reference import compare_posteriors, reference_posterior
from .training import FitResult, StepInfo, fit
from .variance import gradient_variance

__version__ = "0.1.0"

__all__ = [
    "arviz_compat",
    "CheckpointError",
    "compare_estimators",
    "compare_posteriors",
    "Comparison",
    "ComparisonSettings",
    "DataError",
    "EstimatorError",
    "ESTIMATORS",
    "Estimator",
    "evaluate",
    "fit",
    "FitResult",
    "gradient_variance",
    "importance_log_weights",
    "KLFallbackWarning",
    "load_data",
    "load_pair",
    "load_params",
    "log_likelihood",
    "ModelGuidePair",
    "nets",
    "NumericalError",
    "optim",
    "OutputError",
    "PairError",
    "ParticleLoopWarning",
    "PplVaeError",
    "reference_posterior",
    "save_params",
    "StepInfo",
    "to_inference_data",
    "train_test_split",
    "vi_diagnostics",
]
