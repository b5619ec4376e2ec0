"""The model/guide pair and the data it is called with: ``ModelGuidePair`` and loading a pair
file (``pair``), reading and validating arrays (``data``), the per-row arguments and their
minibatches (``dataset``), and running a pair once to read its traces, where every error a
pair can cause becomes a ``PairError`` (``traces``). Everything above that looks inside a
pair goes through here. May import: `utils`.
"""
