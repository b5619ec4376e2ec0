"""The pair's log-densities on a first minibatch, computed before any step or evaluation.

A pair traces without error even where a distribution cannot score its value (a likelihood
built for another data width: torch raises only when ``log_prob`` broadcasts the value against
the distribution's shape). Computing every scored site's ``log_prob`` once, as the ELBO will,
turns that into a :class:`~ppl_vae.utils.errors.PairError` naming the site, both shapes and
the fix, before a step or an evaluation fails inside torch.
"""

from __future__ import annotations

import torch

from ..utils.errors import PairError, first_line, raised_at
from .dataset import Batch
from .traces import PAIR_FAILURES, PairTraces, is_guide_term, is_latent, is_likelihood


def check_log_densities(layout: PairTraces, x: Batch) -> None:
    """Compute the log-density of every site the ELBO scores on the first minibatch ``x``, as
    the first step will, and refuse a site whose distribution cannot score its value: the
    data's width not the one the pair's likelihood was built for (named with both), or another
    failure (named with the site and where it was raised)."""
    data = {id(t) for t in x.tensors}
    sites = [("model", n, s) for n, s in layout.model.nodes.items()
             if is_latent(s) or is_likelihood(s)]
    sites += [("guide", n, s) for n, s in layout.guide.nodes.items() if is_guide_term(s)]
    with torch.no_grad():
        for role, name, site in sites:
            fn, value = site["fn"], site["value"]
            try:
                fn.log_prob(value, *site["args"], **site["kwargs"])
            except PAIR_FAILURES as e:
                shape = tuple(fn.batch_shape + fn.event_shape)
                width = int(value.shape[-1]) if value.dim() >= 2 else None
                if id(value) in data and shape and width not in (None, shape[-1]):
                    raise PairError(
                        f"the data has {width} columns but the distribution of the {role}'s "
                        f"site {name!r} has shape {shape}: the pair was built for {shape[-1]} "
                        f"columns; build it for {width} (its x_dim option, e.g. "
                        f"make_pair(x_dim={width})) or give it the data of {shape[-1]} columns "
                        "it was built for"
                    ) from e
                raise PairError(
                    f"computing the log-density of the {role}'s site {name!r} (a value of shape "
                    f"{tuple(value.shape)}, a distribution of shape {shape}) on the first "
                    f"minibatch failed at {raised_at(e)} ({type(e).__name__}: {first_line(e)}); "
                    "make the site's value and distribution agree in shape"
                ) from e
