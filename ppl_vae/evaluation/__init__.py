"""Numbers of a trained pair at fixed parameters: the per-datapoint ELBO terms and the
importance-sampled log-likelihood (``evaluation``), the variance of the estimators' estimate
and gradient on the same draws (``variance``), and the split of the gap log p(x) − ELBO into
amortization and approximation (``gap``) with the per-datapoint optimum of q it needs
(``refine``). Nothing here trains the pair. May import: `utils`, `pair`, `estimators`,
`arviz_compat`.
"""
