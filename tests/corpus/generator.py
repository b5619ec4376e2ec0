"""The corpus generator: from a seed, a :class:`Plan` of Pyro idioms, then the pair it describes.

Three layouts, each written as a Pyro user writes it:

- ``flat``: rows in ``pyro.plate("data", n)`` at dim -1, vector sites ``.to_event(1)``
  (the VAE examples);
- ``nested``: rows at dim -2, elementwise sites in inner plates over the latent and feature
  dims (the sparse gamma DEF's layout), a global latent in the feature plate, ``obs_mask=`` per
  entry;
- ``markov``: a ``pyro.markov`` chain whose length is the minibatch's longest sequence, shorter
  ones masked with ``.mask(t < lengths)`` (the deep Markov model): the sites differ between
  minibatches.

On top of a layout a plan composes: local latents with an amortized encoder, a non-amortized
``pyro.param("z_loc", ...)[idx]`` indexed by int64 row numbers passed as data, a ``Delta`` site
carrying a reparameterized draw with its log-Jacobian as a guide ``pyro.factor(...,
has_rsample=True)``, an auxiliary guide site, a normalizing flow; global latents with a
hand-written guide or an autoguide of the blocked model (AutoNormal, AutoDiagonalNormal,
AutoDelta), or an autoguide of the whole model; ``poutine.scale`` as KL annealing (its factor
passed as a keyword constant) or on the likelihood; discrete sites sampled by the guide
(score function), enumerated in the guide, or summed out of the model; model factors in and
outside the data plate; ``pyro.deterministic``; bool per-row masks in ``.mask(...)``,
``poutine.mask(mask=...)`` (a second, semi-supervised observed site) and ``obs_mask=``; data
as a tensor, a tuple or a dict; float32 or float64.

Seed ``s`` first applies theme ``THEMES[s % len(THEMES)]`` (so every idiom appears), then
random compatible extras. Everything is deterministic in the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn as nn
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoNormal

from . import CorpusPair

AUTOGUIDES = {"AutoNormal": AutoNormal, "AutoDiagonalNormal": AutoDiagonalNormal,
              "AutoDelta": AutoDelta}
CLASSES = 3  # values of the model's enumerated mixture component
POSITIVE = constraints.positive


@dataclass(frozen=True)
class Plan:
    """The choices of one pair (see the module doc)."""

    seed: int
    theme: str
    layout: str = "flat"  # flat | nested | markov
    rows: int = 20
    x_dim: int = 4
    z_dim: int = 2
    steps: int = 5  # markov: the longest sequence
    data_form: str = "tensor"  # tensor | tuple | dict
    float64: bool = False
    local: str | None = "amortized"  # amortized | nonamortized | delta_factor | auxiliary | flow
    global_mu: bool = False
    global_sd: bool = False
    global_guide: str = "normal"  # normal | AutoNormal | AutoDiagonalNormal | AutoDelta
    whole: str | None = None  # an autoguide of the whole model instead of a written guide
    annealing: float | None = None  # poutine.scale of the local latents, a keyword constant
    lik_scale: float | None = None  # poutine.scale of the likelihood
    discrete: str | None = None  # score | guide_enum | model_enum
    model_factor: str | None = None  # local | global
    deterministic: bool = False
    keep_mask: bool = False  # likelihood .mask(keep), keep a bool per-row array
    semi: bool = False  # a second observed site under poutine.mask(mask=has_label)
    obs_mask: bool = False  # imputation: obs_mask= a bool per-row (flat) or per-entry array


def _theme(**changes) -> Callable[[Plan], Plan]:
    return lambda plan: replace(plan, **changes)


THEMES: dict[str, Callable[[Plan], Plan]] = {
    "amortized": _theme(local="amortized", annealing=0.5),
    "non-amortized": _theme(local="nonamortized", data_form="dict"),
    "delta+factor": _theme(local="delta_factor", data_form="tuple"),
    "auxiliary": _theme(local="auxiliary"),
    "flow": _theme(local="flow"),
    "global": _theme(global_mu=True),
    "global-autonormal": _theme(global_mu=True, global_sd=True, global_guide="AutoNormal"),
    "global-autodiagonal": _theme(global_mu=True, global_guide="AutoDiagonalNormal"),
    "global-autodelta": _theme(global_mu=True, global_sd=True, global_guide="AutoDelta"),
    "whole-autonormal": _theme(whole="AutoNormal", global_mu=True),
    "whole-autodiagonal": _theme(whole="AutoDiagonalNormal"),
    "whole-autodelta": _theme(whole="AutoDelta"),
    "score-function": _theme(discrete="score"),
    "guide-enum": _theme(discrete="guide_enum", rows=12),
    "model-enum": _theme(discrete="model_enum", rows=12),
    "semi-supervised": _theme(semi=True, data_form="dict"),
    "keep-mask": _theme(keep_mask=True, data_form="tuple"),
    "obs-mask": _theme(obs_mask=True, data_form="tuple"),
    "nested-obs-mask": _theme(layout="nested", obs_mask=True, data_form="dict"),
    "nested-global": _theme(layout="nested", global_mu=True),
    "markov": _theme(layout="markov", local=None, data_form="tuple"),
    "markov-global": _theme(layout="markov", local=None, global_mu=True, data_form="dict",
                            annealing=0.7),
    "model-factors": _theme(model_factor="local", deterministic=True),
    "global-factor": _theme(model_factor="global", deterministic=True, global_mu=True),
    "float64": _theme(float64=True, global_mu=True),
    "likelihood-scale": _theme(lik_scale=0.5, global_mu=True, data_form="tuple"),
}


def plan_for(seed: int) -> Plan:
    """The plan of ``seed``: its theme, sizes and random compatible extras."""
    rng = random.Random(seed)
    names = list(THEMES)
    theme = names[seed % len(names)] if seed < len(names) else rng.choice(names)
    plan = Plan(seed=seed, theme=theme, rows=rng.randint(10, 24), x_dim=rng.randint(3, 6),
                z_dim=rng.randint(1, 3), steps=rng.randint(4, 6))
    plan = THEMES[theme](plan)
    if seed >= len(names):  # the seeds after one round of themes mix more idioms
        plan = _extras(plan, rng, chance=0.5, add_globals=True)
    else:  # a theme's own pair keeps its rows independent unless the theme couples them
        plan = _extras(plan, rng, chance=0.2, add_globals=False)
    return _compatible(plan)


def _extras(plan: Plan, rng: random.Random, chance: float, add_globals: bool) -> Plan:
    def maybe() -> bool:
        return rng.random() < chance

    changes = {}
    if plan.data_form == "tensor" and maybe():
        changes["data_form"] = rng.choice(["tuple", "dict"])
    if not plan.annealing and maybe():
        changes["annealing"] = 0.6
    if add_globals and not plan.global_mu and maybe():
        changes["global_mu"] = True
    if not plan.model_factor and maybe():  # a global factor with global latents only
        global_mu = changes.get("global_mu", plan.global_mu)
        changes["model_factor"] = rng.choice(["local", "global"]) if global_mu else "local"
    if not plan.deterministic and maybe():
        changes["deterministic"] = True
    return replace(plan, **changes)


def _compatible(plan: Plan) -> Plan:
    """Drop the extras a plan's main idioms exclude (each rule says why)."""
    p = plan
    if p.layout != "flat":  # one observed array per entry: no per-row masks but obs_mask
        p = replace(p, discrete=None, semi=False, keep_mask=False, global_sd=False,
                    lik_scale=None)
    if p.layout == "markov":  # the chain is the only latent per row
        p = replace(p, local=None, obs_mask=False, model_factor=None, deterministic=False,
                    whole=None, global_guide="normal",
                    data_form="tuple" if p.data_form == "tensor" else p.data_form)
    if p.layout == "nested" and p.local not in ("amortized", "nonamortized"):
        p = replace(p, local="amortized")
    if p.whole:  # an autoguide of the whole model: one Normal (or point) per latent
        p = replace(p, local="amortized", discrete=None, obs_mask=False, global_guide="normal")
    if p.discrete == "model_enum":  # enumerated dims: no deterministic value of the draw
        p = replace(p, deterministic=False)
    if p.semi and not p.local:
        p = replace(p, local="amortized")
    if p.global_sd and not p.global_mu:
        p = replace(p, global_mu=True)
    if p.global_guide != "normal" and not (p.global_mu or p.global_sd):
        p = replace(p, global_guide="normal")
    if p.model_factor == "global" and p.layout == "markov":
        p = replace(p, model_factor=None)
    if p.local == "nonamortized" or p.keep_mask or p.semi or p.obs_mask:
        if p.data_form == "tensor":
            p = replace(p, data_form="tuple")
    if p.layout == "markov" and p.data_form == "tensor":
        p = replace(p, data_form="tuple")
    return p


# =============================================================================================
# data
# =============================================================================================


def _data(plan: Plan, g: torch.Generator) -> dict[str, torch.Tensor]:
    """The per-row arrays, rows chosen so that the first evaluation batch of 3 rows is not
    typical: the longest sequence and some masked rows come later."""
    n, d = plan.rows, plan.x_dim
    dtype = torch.float64 if plan.float64 else torch.float32
    arrays: dict[str, torch.Tensor] = {}
    if plan.layout == "markov":
        lengths = torch.randint(2, plan.steps, (n,), generator=g)
        lengths[-1] = plan.steps  # the longest sequence is the last row
        walk = torch.randn(n, plan.steps, generator=g, dtype=dtype).cumsum(1) * 0.7
        steps = torch.arange(plan.steps)
        arrays["seq"] = torch.where(steps < lengths[:, None], walk, torch.zeros((), dtype=dtype))
        arrays["lengths"] = lengths  # int64
        return arrays
    centers = torch.randn(CLASSES, d, generator=g, dtype=dtype) * 2
    label = torch.randint(0, CLASSES, (n,), generator=g)
    arrays["x"] = centers[label] + torch.randn(n, d, generator=g, dtype=dtype)
    if plan.local == "nonamortized":
        arrays["idx"] = torch.randperm(n, generator=g)  # int64 row numbers into z_loc
    if plan.semi:
        arrays["has_label"] = torch.arange(n) % 3 != 1  # bool; row 1 of the first batch lacks it
        arrays["label"] = label.to(dtype) - 1.0
    if plan.keep_mask:
        arrays["keep"] = torch.arange(n) % 4 != 2  # bool
    if plan.obs_mask and plan.layout == "flat":
        arrays["observed"] = torch.arange(n) % 5 != 3  # bool: rows 3, 8, ... are imputed
        arrays["x"] = torch.where(arrays["observed"][:, None], arrays["x"], 0.0)
    if plan.obs_mask and plan.layout == "nested":
        entries = torch.rand(n, d, generator=g) > 0.25
        entries[:, 0] = True
        arrays["observed"] = entries  # bool per entry
        arrays["x"] = torch.where(entries, arrays["x"], 0.0)
    return arrays


def _form(plan: Plan, arrays: dict[str, torch.Tensor]):
    if plan.data_form == "dict":
        return arrays
    if plan.data_form == "tuple":
        return tuple(arrays.values())
    (x,) = arrays.values()
    return x


def _called_by_pyro(body: Callable, names: tuple[str, ...]) -> Callable:
    """``fn(*args, **kwargs)`` as Pyro calls a model or guide, running ``body(arrays, beta,
    args, kwargs)`` with the per-row arrays by name and the annealing factor (a keyword
    constant)."""

    def fn(*args, **kwargs):
        arrays = dict(zip(names, args, strict=False))  # no positional arrays with dict data
        arrays |= {k: v for k, v in kwargs.items() if k in names}
        return body(arrays, kwargs.get("annealing_factor", 1.0), args, kwargs)

    return fn


# =============================================================================================
# the pair
# =============================================================================================


@dataclass
class Parts:
    """What the model and guide of one plan close over: networks and starting values."""

    plan: Plan
    names: tuple[str, ...]
    start: dict[str, torch.Tensor]
    decoder: nn.Module | None = None
    encoder: nn.Module | None = None
    b_net: nn.Module | None = None
    flow: nn.Module | None = None
    auto: Callable | None = None

    def param(self, name: str, constraint=constraints.real) -> torch.Tensor:
        return pyro.param(name, self.start[name].clone(), constraint=constraint)


def _parts(plan: Plan, arrays: dict[str, torch.Tensor]) -> Parts:
    n, d, z = plan.rows, plan.x_dim, plan.z_dim
    dtype = torch.float64 if plan.float64 else torch.float32
    with torch.random.fork_rng():
        torch.manual_seed(1000 + plan.seed)

        def rand(*shape, scale=0.5, shift=0.0):
            return (shift + scale * torch.randn(*shape)).to(dtype)

        start = {
            "bias": rand(d), "sd": rand((), scale=0.1, shift=1.0).abs(),
            "mu_loc": rand(d), "mu_scale": rand(d, scale=0.05, shift=0.4).abs(),
            "sd_loc": rand((), scale=0.1), "sd_scale": rand((), scale=0.05, shift=0.3).abs(),
            "z_loc": rand(n, z), "z_scale": rand(n, z, scale=0.1, shift=0.6).abs(),
            "label_w": rand(z, scale=1.0),
            "shift": rand(d, scale=1.0), "pi_logits": rand(CLASSES),
            "centers": rand(CLASSES, d, scale=1.5),
            "miss_loc": rand(d), "miss_scale": rand(d, scale=0.1, shift=0.8).abs(),
            "coef": rand((), scale=0.1, shift=0.6),
            "coef_loc": rand((), scale=0.1, shift=0.5), "coef_scale": rand((), shift=0.2,
                                                                           scale=0.02).abs(),
            "w": rand(3, scale=0.3, shift=0.4),
            "s_scale": rand(plan.steps, scale=0.05, shift=0.5).abs(),
        }
        parts = Parts(plan, tuple(arrays), start)
        if plan.local or plan.whole:
            parts.decoder = nn.Linear(z, d).to(dtype)
        if plan.local in ("amortized", "delta_factor", "auxiliary", "flow"):
            parts.encoder = nn.Linear(d, 2 * z).to(dtype)
        if plan.discrete in ("score", "guide_enum"):
            parts.b_net = nn.Linear(d, 1).to(dtype)
        if plan.local == "flow":
            flow = (T.affine_autoregressive(z, hidden_dims=[6]) if z > 1
                    else T.spline(z, count_bins=4))
            parts.flow = flow.to(dtype)
    return parts


def _flat_model(parts: Parts) -> Callable:
    plan = parts.plan
    d, z_dim = plan.x_dim, plan.z_dim

    def model(a: dict, beta: float, *call):
        x = a["x"]
        bias = parts.param("bias")
        loc, mu, z = bias, None, None
        if parts.decoder is not None:
            pyro.module("decoder", parts.decoder)
        if plan.global_mu:
            mu = pyro.sample("mu", dist.Normal(x.new_zeros(d), 1.0).to_event(1))
            loc = loc + mu
        if plan.global_sd:
            sd = pyro.sample("sd", dist.LogNormal(x.new_zeros(()), 0.5)).unsqueeze(-1)
        else:
            sd = parts.param("sd", POSITIVE)
        if plan.model_factor == "global":
            if mu is not None:
                pyro.factor("mu_penalty", -0.5 * (mu**2).sum(-1))
            else:
                pyro.factor("bias_penalty", -0.5 * (bias**2).sum())
        if plan.deterministic and mu is not None:
            pyro.deterministic("mu_total", mu.sum(-1), event_dim=0)
        with pyro.plate("data", x.shape[0]):
            if plan.local or plan.whole:
                with poutine.scale(scale=beta):
                    z = pyro.sample("z", dist.Normal(x.new_zeros(z_dim), 1.0).to_event(1))
                loc = loc + parts.decoder(z)
                if plan.model_factor == "local":
                    pyro.factor("z_penalty", -0.1 * (z**2).sum(-1))
                if plan.deterministic:
                    pyro.deterministic("z_norm", z.norm(dim=-1), event_dim=0)
            if plan.discrete in ("score", "guide_enum"):
                b = pyro.sample("b", dist.Bernoulli(x.new_full((), 0.3)))
                loc = loc + b.unsqueeze(-1) * parts.param("shift")
            if plan.discrete == "model_enum":
                y = pyro.sample("y", dist.Categorical(logits=parts.param("pi_logits")),
                                infer={"enumerate": "parallel"})
                loc = loc + parts.param("centers")[y]
            likelihood = dist.Normal(loc, sd).to_event(1)
            if plan.keep_mask:
                likelihood = likelihood.mask(a["keep"])
            with poutine.scale(scale=plan.lik_scale or 1.0):
                if plan.obs_mask:
                    pyro.sample("x", likelihood, obs=x, obs_mask=a["observed"])
                else:
                    pyro.sample("x", likelihood, obs=x)
            if plan.semi:
                with poutine.mask(mask=a["has_label"]):
                    label_loc = (z * parts.param("label_w")).sum(-1)
                    pyro.sample("label", dist.Normal(label_loc, 0.5), obs=a["label"])

    return model


def _local_guide(parts: Parts, a: dict, beta: float) -> None:
    """The flat guide's local latent z (inside the data plate)."""
    plan = parts.plan
    x, z_dim = a["x"], plan.z_dim
    if plan.local == "nonamortized":
        idx = a["idx"]
        loc = parts.param("z_loc")[idx]
        scale = parts.param("z_scale", POSITIVE)[idx]
    else:
        pyro.module("encoder", parts.encoder)
        hidden = parts.encoder(x)
        loc, raw = hidden[..., :z_dim], hidden[..., z_dim:]
        scale = nn.functional.softplus(raw) + 0.05
    with poutine.scale(scale=beta):
        if plan.local == "delta_factor":
            # a reparameterized draw carried by a Delta, its density by the log-Jacobian
            # factor (pyro.factor's docstring): log q(z) = log N(eps) − Σ log scale
            eps = pyro.sample("z_base", dist.Normal(torch.zeros_like(loc), 1.0).to_event(1),
                              infer={"is_auxiliary": True})
            pyro.sample("z", dist.Delta(loc + scale * eps, event_dim=1))
            pyro.factor("z_log_det", -scale.log().sum(-1), has_rsample=True)
        elif plan.local == "auxiliary":
            eps = pyro.sample("z_aux", dist.Normal(torch.zeros_like(loc), 1.0).to_event(1),
                              infer={"is_auxiliary": True})
            pyro.sample("z", dist.Normal(loc + 0.5 * eps, scale).to_event(1))
        elif plan.local == "flow":
            pyro.module("flow", parts.flow)
            base = dist.Normal(loc, scale).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, [parts.flow]))
        else:
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def _flat_guide(parts: Parts) -> Callable:
    plan = parts.plan

    def guide(a: dict, beta: float, args: tuple, kwargs: dict):
        x = a["x"]
        if parts.auto is not None:
            parts.auto(*args, **kwargs)
        else:
            if plan.global_mu:
                pyro.sample("mu", dist.Normal(parts.param("mu_loc"),
                                              parts.param("mu_scale", POSITIVE)).to_event(1))
            if plan.global_sd:
                pyro.sample("sd", dist.LogNormal(parts.param("sd_loc"),
                                                 parts.param("sd_scale", POSITIVE)))
        with pyro.plate("data", x.shape[0]):
            if plan.local:
                _local_guide(parts, a, beta)
            if plan.discrete in ("score", "guide_enum"):
                pyro.module("b_net", parts.b_net)
                probs = torch.sigmoid(parts.b_net(x).squeeze(-1))
                infer = {"enumerate": "parallel"} if plan.discrete == "guide_enum" else {}
                pyro.sample("b", dist.Bernoulli(probs), infer=infer)
            if plan.obs_mask:
                missing = dist.Normal(parts.param("miss_loc"), parts.param("miss_scale", POSITIVE))
                pyro.sample("x_unobserved", missing.to_event(1).mask(~a["observed"]))

    return guide


def _nested_model(parts: Parts) -> Callable:
    plan = parts.plan

    def model(a: dict, beta: float, *call):
        x = a["x"]
        pyro.module("decoder", parts.decoder)
        sd = parts.param("sd", POSITIVE)
        mu = parts.param("bias")
        features = pyro.plate("features", plan.x_dim, dim=-1)  # entered twice
        if plan.global_mu:
            with features:
                mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
        if plan.model_factor == "global":
            name = "mu_penalty" if plan.global_mu else "bias_penalty"
            pyro.factor(name, -0.5 * (mu**2).sum(-1, keepdim=True))
        with pyro.plate("data", x.shape[0], dim=-2):
            with pyro.plate("latent", plan.z_dim, dim=-1), poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            loc = parts.decoder(z) + mu
            if plan.model_factor == "local":
                pyro.factor("z_penalty", -0.1 * (z**2).sum(-1, keepdim=True))
            if plan.deterministic:
                pyro.deterministic("z_norm", z.norm(dim=-1, keepdim=True), event_dim=0)
            with features:
                if plan.obs_mask:
                    pyro.sample("x", dist.Normal(loc, sd), obs=x, obs_mask=a["observed"])
                else:
                    pyro.sample("x", dist.Normal(loc, sd), obs=x)

    return model


def _nested_guide(parts: Parts) -> Callable:
    plan = parts.plan

    def guide(a: dict, beta: float, *call):
        x = a["x"]
        features = pyro.plate("features", plan.x_dim, dim=-1)
        if plan.global_mu:
            with features:
                pyro.sample("mu", dist.Normal(parts.param("mu_loc"),
                                              parts.param("mu_scale", POSITIVE)))
        with pyro.plate("data", x.shape[0], dim=-2):
            if plan.local == "nonamortized":
                loc = parts.param("z_loc")[a["idx"]]
                scale = parts.param("z_scale", POSITIVE)[a["idx"]]
            else:
                pyro.module("encoder", parts.encoder)
                hidden = parts.encoder(x)
                loc = hidden[..., : plan.z_dim]
                scale = nn.functional.softplus(hidden[..., plan.z_dim :]) + 0.05
            with pyro.plate("latent", plan.z_dim, dim=-1), poutine.scale(scale=beta):
                pyro.sample("z", dist.Normal(loc, scale))
            if plan.obs_mask:
                with features:
                    missing = dist.Normal(parts.param("miss_loc"),
                                          parts.param("miss_scale", POSITIVE))
                    pyro.sample("x_unobserved", missing.mask(~a["observed"]))

    return guide


def _markov_model(parts: Parts) -> Callable:
    plan = parts.plan

    def model(a: dict, beta: float, *call):
        seq, lengths = a["seq"], a["lengths"]
        longest = int(lengths.max())  # this minibatch's: the sites differ between batches
        sd = parts.param("sd", POSITIVE)
        if plan.global_mu:
            coef = pyro.sample("coef", dist.Normal(seq.new_full((), 0.5), 0.3))
        else:
            coef = parts.param("coef")
        with pyro.plate("data", seq.shape[0]):
            state = seq.new_zeros(seq.shape[0])
            for t in pyro.markov(range(longest)):
                present = t < lengths
                with poutine.scale(scale=beta):
                    state = pyro.sample(f"s_{t}", dist.Normal(coef * state, 1.0).mask(present))
                pyro.sample(f"y_{t}", dist.Normal(state, sd).mask(present), obs=seq[:, t])

    return model


def _markov_guide(parts: Parts) -> Callable:
    plan = parts.plan

    def guide(a: dict, beta: float, *call):
        seq, lengths = a["seq"], a["lengths"]
        longest = int(lengths.max())
        if plan.global_mu:
            pyro.sample("coef", dist.Normal(parts.param("coef_loc"),
                                            parts.param("coef_scale", POSITIVE)))
        w = parts.param("w")
        scale = parts.param("s_scale", POSITIVE)
        with pyro.plate("data", seq.shape[0]):
            state = seq.new_zeros(seq.shape[0])
            for t in pyro.markov(range(longest)):
                loc = w[0] * seq[:, t] + w[1] * state + w[2]
                with poutine.scale(scale=beta):
                    state = pyro.sample(f"s_{t}", dist.Normal(loc, scale[t]).mask(t < lengths))

    return guide


BUILDERS = {
    "flat": (_flat_model, _flat_guide),
    "nested": (_nested_model, _nested_guide),
    "markov": (_markov_model, _markov_guide),
}


def build(plan: Plan) -> CorpusPair:
    """The pair, data and checks of ``plan``."""
    g = torch.Generator().manual_seed(plan.seed)
    arrays = _data(plan, g)
    parts = _parts(plan, arrays)
    make_model, make_guide = BUILDERS[plan.layout]
    model = _called_by_pyro(make_model(parts), parts.names)
    if plan.whole:
        guide = AUTOGUIDES[plan.whole](model)
    else:
        if plan.global_guide != "normal":
            exposed = [s for s, on in (("mu", plan.global_mu), ("sd", plan.global_sd)) if on]
            parts.auto = AUTOGUIDES[plan.global_guide](poutine.block(model, expose=exposed))
        guide = _called_by_pyro(make_guide(parts), parts.names)
    data = _form(plan, arrays)
    model_kwargs = {"annealing_factor": plan.annealing} if plan.annealing else None
    global_latents = bool(plan.global_mu or plan.global_sd or plan.whole == "AutoDiagonalNormal")
    return CorpusPair(
        name=f"c{plan.seed:02d}",
        seed=plan.seed,
        idioms=idioms(plan),
        model=model,
        guide=guide,
        data=data,
        model_kwargs=model_kwargs,
        max_plate_nesting=2 if plan.layout == "nested" else 1,
        global_latents=global_latents,
        skips=skips(plan, global_latents),
        estimator="enum" if plan.discrete == "model_enum" else "sampled",
        factors=_factors(plan),
        deterministic=_deterministic(plan),
        fit_batch_size=plan.rows if plan.whole else min(8, plan.rows),
    )


def _factors(plan: Plan) -> tuple[str, ...]:
    if plan.model_factor == "local":
        return ("z_penalty",)
    if plan.model_factor == "global":
        return ("mu_penalty",) if plan.global_mu else ("bias_penalty",)
    return ()


def _deterministic(plan: Plan) -> tuple[str, ...]:
    if not plan.deterministic:
        return ()
    names = ["z_norm"] if (plan.local or plan.whole) else []
    if plan.layout == "flat" and plan.global_mu:
        names.append("mu_total")
    return tuple(names)


def idioms(plan: Plan) -> tuple[str, ...]:
    """The Pyro idioms a plan uses, as test ids and failure messages name them."""
    names = {"flat": "plate:data", "nested": "plate:nested",
             "markov": "markov:variable-length"}
    local = (f"autoguide:{plan.whole}(whole model)" if plan.whole
             else f"guide:{plan.local.replace('_', '+')}" if plan.local else None)
    discrete = plan.discrete.replace("_", "-") if plan.discrete else None
    flags = [
        (True, names[plan.layout]),
        (True, f"data:{plan.data_form}"),
        (plan.float64, "dtype:float64"),
        (plan.local == "nonamortized" or plan.layout == "markov", "data:int64"),
        (plan.semi or plan.keep_mask or plan.obs_mask, "data:bool"),
        (local is not None, local),
        (plan.global_mu or plan.global_sd, "global:latent"),
        (plan.global_sd, "global:positive"),
        (plan.global_guide != "normal" and not plan.whole,
         f"autoguide:{plan.global_guide}(globals)"),
        (plan.annealing, "scale:annealing(model_kwargs)"),
        (plan.lik_scale, "scale:likelihood"),
        (discrete, f"discrete:{discrete}"),
        (plan.model_factor, f"factor:model-{plan.model_factor}"),
        (plan.deterministic, "deterministic"),
        (plan.keep_mask, "mask:.mask(bool data)"),
        (plan.semi, "mask:poutine.mask(bool data)"),
        (plan.semi, "obs:two-sites"),
        (plan.obs_mask, "obs_mask"),
    ]
    out = [name for on, name in flags if on]
    return tuple(out)


def skips(plan: Plan, global_latents: bool) -> dict[str, str]:
    """Check → why it does not apply to ``plan`` (see ``tests.corpus.CHECKS``)."""
    out = {}
    if plan.discrete == "model_enum":
        out["sampled"] = ("the model sums y out; Trace_ELBO would draw it from its prior, "
                          "another objective (ppl_vae refuses it)")
    if plan.discrete:
        out["analytic"] = "a discrete site: TraceMeanField_ELBO needs reparameterized sites"
    constrained = plan.global_sd and (plan.global_guide in ("AutoNormal", "AutoDiagonalNormal"))
    if constrained:
        out["analytic"] = ("an autoguide's Delta at a constrained site carries a log-Jacobian "
                           "that TraceMeanField_ELBO drops (docs/pairs.md)")
    if plan.whole and plan.annealing:
        out["analytic"] = ("the model scales z and the autoguide does not: TraceMeanField_ELBO "
                           "scales the KL by the guide's scale, Trace_ELBO each term by its own")
    if plan.keep_mask and plan.obs_mask:
        out["analytic"] = ("the likelihood's mask reaches the latent x_unobserved in the model "
                           "only: TraceMeanField_ELBO masks the KL by both masks, Trace_ELBO "
                           "log q by the guide's")
    if plan.discrete not in ("guide_enum", "model_enum"):
        out["enum"] = "no site is marked for enumeration"
    else:
        out["weights"] = ("enumerated sites: Pyro's vectorized_importance_weights samples "
                          "them, ppl_vae sums them (another weight, the same log p(X))")
    if plan.model_factor == "global":
        out["rows"] = ("a factor outside the data plate: in the joint numbers only, and in "
                       "Pyro's ELBO of every one-row data set")
    if global_latents:
        out["rows"] = "global latents couple the rows"
    if plan.whole:
        out["rows"] = "an autoguide of the whole model has one parameter per row of the data"
        out["batch_size"] = ("an autoguide of the whole model has parameters for all N rows: "
                             "Pyro runs it on the whole data only")
    return out
