"""ppl_vae: VAE-style models fitted by Pyro SVI, with the sampled-KL and analytic-KL ELBO
measured side by side, and the posterior checked in ArviZ.

The identity everything rests on (see docs/derivation.md)::

    log p(x) - KL(q(z|x) || p(z|x)) = E_q[log p(x|z)] - KL(q(z|x) || p(z))   (the ELBO)
"""

import importlib

# every public name and the module that defines it; they are imported on first use (PEP 562),
# so that `ppl-vae` can catch a Ctrl-C while torch and Pyro load
_HOME = {
    "arviz_compat": None, "nets": None, "optim": None,
    "Calibration": "sbc", "calibration": "sbc",
    "Comparison": "comparison", "ComparisonSettings": "comparison",
    "compare_estimators": "comparison",
    "load_data": "data", "train_test_split": "data",
    "vi_diagnostics": "diagnostics",
    "CheckpointError": "errors", "DataError": "errors", "EstimatorError": "errors",
    "NumericalError": "errors", "OutputError": "errors", "PairError": "errors",
    "PplVaeError": "errors", "ScoringError": "errors",
    "ESTIMATORS": "estimators", "Estimator": "estimators",
    "inference_gap": "gap",
    "elpd": "predictive", "plot_loo_pit": "predictive",
    "evaluate": "evaluation", "importance_log_weights": "evaluation",
    "log_likelihood": "evaluation",
    "LogLikelihoodWarning": "inference_data", "to_inference_data": "inference_data",
    "KLFallbackWarning": "kl",
    "ModelGuidePair": "pair", "load_pair": "pair",
    "load_params": "params", "save_params": "params",
    "ParticleLoopWarning": "particles",
    "compare_posteriors": "reference", "reference_posterior": "reference",
    "FitResult": "training", "StepInfo": "training", "fit": "training",
    "gradient_variance": "variance",
}


def __getattr__(name: str):
    if name in _HOME:
        module = importlib.import_module(f".{_HOME[name] or name}", __name__)
        value = module if _HOME[name] is None else getattr(module, name)
    else:  # a submodule: ppl_vae.traces, ppl_vae.particles, ...
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
