"""Training a pair by SVI: ``fit`` and its loop (``training``), one step over an explicit
training state (``svi``, ``state``), the checks before the first step (``preflight``),
minibatch scaling of the data plate (``plates``), KL warm-up (``warmup``), the parameters a
step read (``step_params``), the compiled step (``compiled``), data-parallel training
(``distributed``) and exact resume from checkpoints (``checkpoint``). May import: `utils`,
`pair`, `estimators`, `optim`.
"""
