"""The toy mixture of pyro-ppl/pyro ``examples/toy_mixture_model_discrete_enumeration.py``:
(A) → [B] → (C) per row, A and C observed Bernoulli, the hidden B summed out of the model
(``infer={"enumerate": "parallel"}`` under ``config_enumerate``), ``Vindex`` indexing, and
global Beta latents p_A, p_B, p_C with a Beta guide (mean-field, reparameterized).

What was changed:

- the example calls ``model(prior, obs, num_obs)`` with ``obs`` a dict of the two columns; a
  library that minibatches per-row arrays calls ``model(A, C)``, so :func:`model_rows` and
  :func:`guide_rows` pass ``prior``, ``{"A": A, "C": C}`` and ``len(A)`` on to the example's
  functions, which are unchanged (``guide`` ignores ``obs`` and ``num_obs``);
- the data: 200 rows from ``generate_data`` with ``torch.manual_seed(0)``.

Truth: Pyro's ``TraceEnum_ELBO(max_plate_nesting=1)`` at the same parameters (there is no
closed form: B's sum sits inside a log under the Beta draws).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from torch.distributions import constraints
from torch.distributions.bernoulli import Bernoulli
from torch.distributions.beta import Beta

from . import Pair

SOURCE = "examples/toy_mixture_model_discrete_enumeration.py"
ROWS = 200


def generate_data(num_obs):
    # domain = [False, True]
    prior = {
        "A": torch.tensor([1.0, 10.0]),
        "B": torch.tensor([[10.0, 1.0], [1.0, 10.0]]),
        "C": torch.tensor([[10.0, 1.0], [1.0, 10.0]]),
    }
    CPDs = {
        "p_A": Beta(prior["A"][0], prior["A"][1]).sample(),
        "p_B": Beta(prior["B"][:, 0], prior["B"][:, 1]).sample(),
        "p_C": Beta(prior["C"][:, 0], prior["C"][:, 1]).sample(),
    }
    data = {"A": Bernoulli(torch.ones(num_obs) * CPDs["p_A"]).sample()}
    data["B"] = Bernoulli(torch.gather(CPDs["p_B"], 0, data["A"].type(torch.long))).sample()
    data["C"] = Bernoulli(torch.gather(CPDs["p_C"], 0, data["B"].type(torch.long))).sample()
    return prior, CPDs, data


@pyro.infer.config_enumerate
def model(prior, obs, num_obs):
    p_A = pyro.sample("p_A", dist.Beta(1, 1))
    p_B = pyro.sample("p_B", dist.Beta(torch.ones(2), torch.ones(2)).to_event(1))
    p_C = pyro.sample("p_C", dist.Beta(torch.ones(2), torch.ones(2)).to_event(1))
    with pyro.plate("data_plate", num_obs):
        A = pyro.sample("A", dist.Bernoulli(p_A.expand(num_obs)), obs=obs["A"])
        # Vindex used to ensure proper indexing into the enumerated sample sites
        B = pyro.sample(
            "B",
            dist.Bernoulli(Vindex(p_B)[A.type(torch.long)]),
            infer={"enumerate": "parallel"},
        )
        pyro.sample("C", dist.Bernoulli(Vindex(p_C)[B.type(torch.long)]), obs=obs["C"])


def guide(prior, obs, num_obs):
    a = pyro.param("a", prior["A"], constraint=constraints.positive)
    pyro.sample("p_A", dist.Beta(a[0], a[1]))
    b = pyro.param("b", prior["B"], constraint=constraints.positive)
    pyro.sample("p_B", dist.Beta(b[:, 0], b[:, 1]).to_event(1))
    c = pyro.param("c", prior["C"], constraint=constraints.positive)
    pyro.sample("p_C", dist.Beta(c[:, 0], c[:, 1]).to_event(1))


def pair() -> Pair:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        prior, _, data = generate_data(ROWS)

    def model_rows(A, C):
        return model(prior, {"A": A, "C": C}, len(A))

    def guide_rows(A, C):
        return guide(prior, {"A": A, "C": C}, len(A))

    return Pair(
        name="toy_mixture",
        source=SOURCE,
        model=model_rows,
        guide=guide_rows,
        data=(data["A"], data["C"]),
        global_sites=("p_A", "p_B", "p_C"),
        broadcasts=False,  # p_A.expand(num_obs) drops a particle dim
    )
