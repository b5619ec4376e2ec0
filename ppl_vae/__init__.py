"""ppl_vae: VAE-style models fitted by Pyro SVI, with the sampled-KL and analytic-KL ELBO
measured side by side, and the posterior checked in ArviZ.

The identity everything rests on (see docs/derivation.md)::

    log p(x) - KL(q(z|x) || p(z|x)) = E_q[log p(x|z)] - KL(q(z|x) || p(z))   (the ELBO)
"""

import importlib

# every public name and the module that defines it (below the subpackage of its layer,
# docs/architecture.md); they are imported on first use (PEP 562),
# so that `ppl-vae` can catch a Ctrl-C while torch and Pyro load
_HOME = {
    "arviz_compat": None, "nets": None, "optim": None,
    "Calibration": "diagnostics.sbc", "calibration": "diagnostics.sbc",
    "Comparison": "comparison.comparison", "ComparisonSettings": "comparison.comparison",
    "compare_estimators": "comparison.comparison",
    "load_data": "pair.data", "train_test_split": "pair.data",
    "vi_diagnostics": "diagnostics.diagnostics",
    "CheckpointError": "utils.errors", "DataError": "utils.errors",
    "EstimatorError": "utils.errors", "NumericalError": "utils.errors",
    "OutputError": "utils.errors", "PairError": "utils.errors",
    "PplVaeError": "utils.errors", "ScoringError": "utils.errors",
    "ESTIMATORS": "estimators.estimators", "Estimator": "estimators.estimators",
    "inference_gap": "evaluation.gap",
    "elpd": "evaluation.predictive", "plot_loo_pit": "evaluation.predictive",
    "evaluate": "evaluation.evaluation", "importance_log_weights": "evaluation.evaluation",
    "log_likelihood": "evaluation.evaluation",
    "LogLikelihoodWarning": "diagnostics.inference_data",
    "to_inference_data": "diagnostics.inference_data",
    "KLFallbackWarning": "estimators.kl",
    "ModelGuidePair": "pair.pair", "load_pair": "pair.pair",
    "load_params": "utils.params", "save_params": "utils.params",
    "ParticleLoopWarning": "estimators.particles",
    "compare_posteriors": "diagnostics.reference",
    "reference_posterior": "diagnostics.reference",
    "FitResult": "training.training", "StepInfo": "training.training",
    "fit": "training.training",
    "gradient_variance": "evaluation.variance",
}


def __getattr__(name: str):
    if name in _HOME:
        module = importlib.import_module(f".{_HOME[name] or name}", __name__)
        value = module if _HOME[name] is None else getattr(module, name)
    else:  # a subpackage: ppl_vae.training, ppl_vae.estimators, ...
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))


__version__ = "0.1.0"

__all__ = [
    "arviz_compat",
    "Calibration",
    "calibration",
    "CheckpointError",
    "compare_estimators",
    "compare_posteriors",
    "Comparison",
    "ComparisonSettings",
    "DataError",
    "EstimatorError",
    "ESTIMATORS",
    "Estimator",
    "elpd",
    "evaluate",
    "fit",
    "FitResult",
    "gradient_variance",
    "importance_log_weights",
    "inference_gap",
    "KLFallbackWarning",
    "load_data",
    "load_pair",
    "load_params",
    "log_likelihood",
    "LogLikelihoodWarning",
    "ModelGuidePair",
    "nets",
    "NumericalError",
    "optim",
    "OutputError",
    "PairError",
    "ParticleLoopWarning",
    "plot_loo_pit",
    "PplVaeError",
    "reference_posterior",
    "save_params",
    "ScoringError",
    "StepInfo",
    "to_inference_data",
    "train_test_split",
    "vi_diagnostics",
]
