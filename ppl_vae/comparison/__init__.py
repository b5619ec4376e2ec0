"""The estimators measured side by side: ``compare_estimators`` and the ``Comparison`` it
returns (``comparison``), training and measuring one (estimator, seed) run (``measure``), the
tables as pure functions of the runs' records (``tables``), and the markdown report
(``report``) with its figures (``figures``), which read the comparison as its tables
(``measurements``). May import: `utils`, `pair`, `estimators`, `training`, `evaluation`,
`arviz_compat`.
"""
