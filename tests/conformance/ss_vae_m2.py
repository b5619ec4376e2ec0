"""The supervised branch of the M2 model of pyro-ppl/pyro ``examples/vae/ss_vae_M2.py``, with
the MLP of ``examples/vae/utils/custom_mlp.py``, on 8×8 binarized digits and their labels.

``model(xs, ys)`` / ``guide(xs, ys)`` as written there: p(z) = N(0, I), p(y) = uniform
OneHotCategorical (observed), p(x | y, z) = Bernoulli(decoder([z, y])); the guide is
q(z | x, y) = N(encoder_z([x, y])). ``pyro.module("ss_vae", self)`` is in the model only (the
guide's encoder is registered through it), and both use the unsized ``pyro.plate("data")``.
The MLPs are built with ``allow_broadcast=False`` (``config_enum=None``, the example's default),
so their ``ConcatModule`` does ``torch.cat([z, ys], -1)`` without expanding: with a leading
particle dimension on z and none on ys this raises. This is the pair that does NOT broadcast.

What was changed: input_size 784 → 64 (the first 300 of all 1,797 digits, binarized at 0.5 as
``ppl_vae.load_data("digits", binarize=True)`` does, with ``load_digits().target`` one-hot as
``ys``), z_dim 50 → 2, hidden_layers (500,) → [32]; the unsupervised branch (``ys=None``), the
classifier, the auxiliary loss and CUDA are not used. Data: the dict ``{"xs": ..., "ys": ...}``.
``sized_plate=True`` (not the default) replaces the unsized ``pyro.plate("data")`` by
``pyro.plate("data", xs.shape[0])`` in model and guide, so that the rest of the pair can be
tested where a library needs a sized data plate.

:func:`unsupervised_pair` is the example's unsupervised branch as its ``main`` sets it up with
``--enum-discrete parallel``: ``SSVAE(config_enum="parallel")`` (MLPs that broadcast), the guide
``config_enumerate(ss_vae.guide, "parallel", expand=True)``, ``ys=None``, so y is a latent the
guide enumerates; trained there with ``TraceEnum_ELBO(max_plate_nesting=1)``. Data: the images
alone (``model(xs)``).
"""

from __future__ import annotations

from inspect import isclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
import torch.nn.functional as F
from pyro.distributions.util import broadcast_shape
from pyro.infer import config_enumerate

from . import Pair, digits_with_labels

SOURCE = "examples/vae/ss_vae_M2.py"
ROWS = 300


# --- examples/vae/utils/custom_mlp.py, as written (comments trimmed) --------------------------


class Exp(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, val):
        return torch.exp(val)


class ConcatModule(nn.Module):
    def __init__(self, allow_broadcast=False):
        self.allow_broadcast = allow_broadcast
        super().__init__()

    def forward(self, *input_args):
        if len(input_args) == 1:
            input_args = input_args[0]
        if torch.is_tensor(input_args):
            return input_args
        else:
            if self.allow_broadcast:
                shape = broadcast_shape(*[s.shape[:-1] for s in input_args]) + (-1,)
                input_args = [s.expand(shape) for s in input_args]
            return torch.cat(input_args, dim=-1)


class ListOutModule(nn.ModuleList):
    def __init__(self, modules):
        super().__init__(modules)

    def forward(self, *args, **kwargs):
        return [mm.forward(*args, **kwargs) for mm in self]


def call_nn_op(op):
    if op in [nn.Softmax, nn.LogSoftmax]:
        return op(dim=1)
    else:
        return op()


class MLP(nn.Module):
    def __init__(
        self,
        mlp_sizes,
        activation=nn.ReLU,
        output_activation=None,
        post_layer_fct=lambda layer_ix, total_layers, layer: None,
        post_act_fct=lambda layer_ix, total_layers, layer: None,
        allow_broadcast=False,
        use_cuda=False,
    ):
        super().__init__()
        assert len(mlp_sizes) >= 2, "Must have input and output layer sizes defined"
        input_size, hidden_sizes, output_size = (
            mlp_sizes[0],
            mlp_sizes[1:-1],
            mlp_sizes[-1],
        )
        assert isinstance(input_size, (int, list, tuple)), "input_size must be int, list, tuple"
        last_layer_size = input_size if type(input_size) == int else sum(input_size)  # noqa: E721
        all_modules = [ConcatModule(allow_broadcast)]
        for layer_ix, layer_size in enumerate(hidden_sizes):
            assert type(layer_size) == int, "Hidden layer sizes must be ints"  # noqa: E721
            cur_linear_layer = nn.Linear(last_layer_size, layer_size)
            cur_linear_layer.weight.data.normal_(0, 0.001)
            cur_linear_layer.bias.data.normal_(0, 0.001)
            all_modules.append(cur_linear_layer)
            post_linear = post_layer_fct(layer_ix + 1, len(hidden_sizes), all_modules[-1])
            if post_linear is not None:
                all_modules.append(post_linear)
            all_modules.append(activation())
            post_activation = post_act_fct(layer_ix + 1, len(hidden_sizes), all_modules[-1])
            if post_activation is not None:
                all_modules.append(post_activation)
            last_layer_size = layer_size
        assert isinstance(output_size, (int, list, tuple)), "output_size must be int, list, tuple"
        if type(output_size) == int:  # noqa: E721
            all_modules.append(nn.Linear(last_layer_size, output_size))
            if output_activation is not None:
                all_modules.append(
                    call_nn_op(output_activation)
                    if isclass(output_activation)
                    else output_activation
                )
        else:
            out_layers = []
            for out_ix, out_size in enumerate(output_size):
                split_layer = []
                split_layer.append(nn.Linear(last_layer_size, out_size))
                act_out_fct = (
                    output_activation
                    if not isinstance(output_activation, (list, tuple))
                    else output_activation[out_ix]
                )
                if act_out_fct:
                    split_layer.append(
                        call_nn_op(act_out_fct) if isclass(act_out_fct) else act_out_fct
                    )
                out_layers.append(nn.Sequential(*split_layer))
            all_modules.append(ListOutModule(out_layers))
        self.sequential_mlp = nn.Sequential(*all_modules)

    def forward(self, *args, **kwargs):
        return self.sequential_mlp.forward(*args, **kwargs)


# --- examples/vae/ss_vae_M2.py: SSVAE's networks, model and guide ----------------------------


class SSVAE(nn.Module):
    def __init__(
        self,
        output_size=10,
        input_size=64,
        z_dim=2,
        hidden_layers=(32,),
        config_enum=None,
        use_cuda=False,
        aux_loss_multiplier=None,
        sized_plate=False,
    ):
        super().__init__()
        self.sized_plate = sized_plate
        self.output_size = output_size
        self.input_size = input_size
        self.z_dim = z_dim
        self.hidden_layers = hidden_layers
        self.allow_broadcast = config_enum == "parallel"
        self.use_cuda = use_cuda
        self.aux_loss_multiplier = aux_loss_multiplier
        self.setup_networks()

    def setup_networks(self):
        z_dim = self.z_dim
        hidden_sizes = self.hidden_layers

        self.encoder_y = MLP(
            [self.input_size] + hidden_sizes + [self.output_size],
            activation=nn.Softplus,
            output_activation=nn.Softmax,
            allow_broadcast=self.allow_broadcast,
            use_cuda=self.use_cuda,
        )

        self.encoder_z = MLP(
            [self.input_size + self.output_size] + hidden_sizes + [[z_dim, z_dim]],
            activation=nn.Softplus,
            output_activation=[None, Exp],
            allow_broadcast=self.allow_broadcast,
            use_cuda=self.use_cuda,
        )

        self.decoder = MLP(
            [z_dim + self.output_size] + hidden_sizes + [self.input_size],
            activation=nn.Softplus,
            output_activation=nn.Sigmoid,
            allow_broadcast=self.allow_broadcast,
            use_cuda=self.use_cuda,
        )

    def data_plate(self, xs):
        # as written: pyro.plate("data"), unsized
        return pyro.plate("data", xs.shape[0]) if self.sized_plate else pyro.plate("data")

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)

        batch_size = xs.size(0)
        options = dict(dtype=xs.dtype, device=xs.device)
        with self.data_plate(xs):
            prior_loc = torch.zeros(batch_size, self.z_dim, **options)
            prior_scale = torch.ones(batch_size, self.z_dim, **options)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))

            alpha_prior = torch.ones(batch_size, self.output_size, **options) / (
                1.0 * self.output_size
            )
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)

            loc = self.decoder([zs, ys])
            pyro.sample("x", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=xs)
            return loc

    def guide(self, xs, ys=None):
        with self.data_plate(xs):
            if ys is None:
                alpha = self.encoder_y(xs)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha))

            loc, scale = self.encoder_z([xs, ys])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def make_data(rows: int = ROWS) -> dict[str, torch.Tensor]:
    xs, labels = digits_with_labels(binarize=True)
    return {"xs": xs[:rows], "ys": F.one_hot(labels[:rows], 10).to(torch.float32)}


def pair(seed: int = 0, rows: int = ROWS, *, sized_plate: bool = False) -> Pair:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        ssvae = SSVAE(hidden_layers=[32], sized_plate=sized_plate)
    return Pair(
        name="ss_vae_m2[sized plate]" if sized_plate else "ss_vae_m2",
        source=SOURCE,
        model=ssvae.model,
        guide=ssvae.guide,
        data=make_data(rows),
        broadcasts=False,
        extras={"modules": (ssvae,)},
    )


def unsupervised_pair(seed: int = 0, rows: int = ROWS) -> Pair:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        ssvae = SSVAE(hidden_layers=[32], config_enum="parallel")
    return Pair(
        name="ss_vae_m2[unsupervised]",
        source=SOURCE,
        model=ssvae.model,
        guide=config_enumerate(ssvae.guide, "parallel", expand=True),
        data=make_data(rows)["xs"],
        extras={"modules": (ssvae,)},
    )
