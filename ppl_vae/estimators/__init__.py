"""The ELBO estimators and what they are made of: one ``Estimator`` record per estimator in
the ``ESTIMATORS`` registry with the ELBO classes ppl_vae adds (``estimators``), the KL rule
per site of q (``kl``), exact sums over enumerated discrete sites (``enumeration``) and the
particle engine that scores K draws of q under the model, per row and joint (``particles``).
The registry and the ELBO classes are importable from here (``ppl_vae.estimators.register``
adds an estimator that every entry point takes). May import: `utils`, `pair`.
"""

from .estimators import (
    ESTIMATORS,
    IWAE_ELBO,
    AnalyticELBO,
    Estimator,
    STLTrace_ELBO,
    get,
    register,
)

__all__ = ["ESTIMATORS", "AnalyticELBO", "Estimator", "IWAE_ELBO", "STLTrace_ELBO", "get",
           "register"]
