"""Shared utilities that every layer may use: the error family and argument checks
(``errors``), seeding that leaves the caller's random streams alone (``rng``), atomic file
writes (``files``), OS locks on output locations (``locks``), run directories written whole
(``runs``), stop signals that stop a command once (``signals``) and the one owner of Pyro's
param store and its file format (``params``). Nothing here knows about pairs, estimators or
training. May import: nothing.
"""
