"""Can the guide be trusted: Pareto k̂ of the importance weights (``diagnostics``),
simulation-based calibration (``sbc``, with data drawn from the pair's own model in
``simulation`` and the rank tests in ``ranks``), the guide's posterior as ArviZ
``InferenceData`` (``inference_data``), a NUTS reference posterior (``reference``) and their
figures (``diagnostic_figures``). May import: `utils`, `pair`, `estimators`, `training`,
`evaluation`, `arviz_compat`.
"""
