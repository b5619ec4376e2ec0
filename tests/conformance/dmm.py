"""The deep Markov model of pyro-ppl/pyro ``examples/dmm.py`` (Krishnan, Shalit & Sontag 2017),
on tiny binary sequences.

As there: ``pyro.module("dmm", self)`` in model and guide; a ``pyro.plate("z_minibatch")`` over
the sequences; a ``pyro.markov`` loop over t = 1 .. T_max, T_max the longest sequence of the
minibatch, so the sites ``z_t``/``obs_x_t`` differ between minibatches; shorter sequences
masked with ``.mask(mini_batch_mask[:, t - 1 : t])`` (a 0/1 float mask, as the example's);
KL annealing by ``poutine.scale(scale=annealing_factor)`` around ``z_t`` in model and guide;
the guide's RNN reads the reversed, packed sequences; with ``num_iafs=1`` q(z_t | ...) is a
``TransformedDistribution`` through an affine autoregressive flow.

What was changed: the example's loader builds each minibatch (``get_mini_batch``: sorted by
length, cut to T_max, reversed, packed, masked); ppl_vae minibatches per-row arrays itself, so
the data is ``(sequences, lengths)`` (``sequences`` padded to the longest of all, ``lengths``
int64) and model and guide do that work on their minibatch (``enforce_sorted=False`` in place of
the sorting); the three helpers it takes from ``pyro.contrib.examples.polyphonic_data_loader``
(which imports torchvision) are written here. Sizes: 88 notes → 4, z_dim 100 → 2,
emission/transition/RNN widths 100/200/600 → 6, iaf_dim 50 → 4; ``annealing_factor`` is a
keyword constant (``model_kwargs``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn as nn
from pyro.distributions import TransformedDistribution
from pyro.distributions.transforms import affine_autoregressive

from . import checked, seeded

SOURCE = "examples/dmm.py"
INPUT_DIM, Z_DIM, T, ROWS = 4, 2, 5, 16


def reverse_sequences(mini_batch, seq_lengths):
    """Each sequence's first ``seq_lengths[b]`` steps in reverse order, the padding kept."""
    reversed_mini_batch = torch.zeros_like(mini_batch)
    for b in range(mini_batch.size(0)):
        steps = torch.arange(seq_lengths[b] - 1, -1, -1, device=mini_batch.device)
        reversed_mini_batch[b, : seq_lengths[b]] = mini_batch[b].index_select(0, steps)
    return reversed_mini_batch


def pad_and_reverse(rnn_output, seq_lengths):
    """The RNN's packed output padded (batch first) and reversed in time per sequence."""
    padded, _ = nn.utils.rnn.pad_packed_sequence(rnn_output, batch_first=True)
    return reverse_sequences(padded, seq_lengths)


def get_mini_batch_mask(mini_batch, seq_lengths):
    """A 0/1 float mask (batch, time) of the steps each sequence has."""
    mask = torch.zeros(mini_batch.shape[0:2])
    for b in range(mini_batch.shape[0]):
        mask[b, : seq_lengths[b]] = 1.0
    return mask


class Emitter(nn.Module):
    """p(x_t | z_t): Bernoulli probabilities from z_t."""

    def __init__(self, input_dim, z_dim, emission_dim):
        super().__init__()
        self.lin_z_to_hidden = nn.Linear(z_dim, emission_dim)
        self.lin_hidden_to_hidden = nn.Linear(emission_dim, emission_dim)
        self.lin_hidden_to_input = nn.Linear(emission_dim, input_dim)
        self.relu = nn.ReLU()

    def forward(self, z_t):
        h1 = self.relu(self.lin_z_to_hidden(z_t))
        h2 = self.relu(self.lin_hidden_to_hidden(h1))
        return torch.sigmoid(self.lin_hidden_to_input(h2))


class GatedTransition(nn.Module):
    """p(z_t | z_{t-1}): a gated mix of a linear and a nonlinear proposal."""

    def __init__(self, z_dim, transition_dim):
        super().__init__()
        self.lin_gate_z_to_hidden = nn.Linear(z_dim, transition_dim)
        self.lin_gate_hidden_to_z = nn.Linear(transition_dim, z_dim)
        self.lin_proposed_mean_z_to_hidden = nn.Linear(z_dim, transition_dim)
        self.lin_proposed_mean_hidden_to_z = nn.Linear(transition_dim, z_dim)
        self.lin_sig = nn.Linear(z_dim, z_dim)
        self.lin_z_to_loc = nn.Linear(z_dim, z_dim)
        self.lin_z_to_loc.weight.data = torch.eye(z_dim)
        self.lin_z_to_loc.bias.data = torch.zeros(z_dim)
        self.relu = nn.ReLU()
        self.softplus = nn.Softplus()

    def forward(self, z_t_1):
        _gate = self.relu(self.lin_gate_z_to_hidden(z_t_1))
        gate = torch.sigmoid(self.lin_gate_hidden_to_z(_gate))
        _proposed_mean = self.relu(self.lin_proposed_mean_z_to_hidden(z_t_1))
        proposed_mean = self.lin_proposed_mean_hidden_to_z(_proposed_mean)
        loc = (1 - gate) * self.lin_z_to_loc(z_t_1) + gate * proposed_mean
        scale = self.softplus(self.lin_sig(self.relu(proposed_mean)))
        return loc, scale


class Combiner(nn.Module):
    """q(z_t | z_{t-1}, x_{t:T}) from z_{t-1} and the RNN's hidden state."""

    def __init__(self, z_dim, rnn_dim):
        super().__init__()
        self.lin_z_to_hidden = nn.Linear(z_dim, rnn_dim)
        self.lin_hidden_to_loc = nn.Linear(rnn_dim, z_dim)
        self.lin_hidden_to_scale = nn.Linear(rnn_dim, z_dim)
        self.tanh = nn.Tanh()
        self.softplus = nn.Softplus()

    def forward(self, z_t_1, h_rnn):
        h_combined = 0.5 * (self.tanh(self.lin_z_to_hidden(z_t_1)) + h_rnn)
        loc = self.lin_hidden_to_loc(h_combined)
        scale = self.softplus(self.lin_hidden_to_scale(h_combined))
        return loc, scale


class DMM(nn.Module):
    def __init__(self, input_dim=INPUT_DIM, z_dim=Z_DIM, emission_dim=6, transition_dim=6,
                 rnn_dim=6, num_iafs=0, iaf_dim=4):
        super().__init__()
        self.emitter = Emitter(input_dim, z_dim, emission_dim)
        self.trans = GatedTransition(z_dim, transition_dim)
        self.combiner = Combiner(z_dim, rnn_dim)
        self.rnn = nn.RNN(input_size=input_dim, hidden_size=rnn_dim, nonlinearity="relu",
                          batch_first=True, bidirectional=False, num_layers=1)
        self.iafs = [affine_autoregressive(z_dim, hidden_dims=[iaf_dim])
                     for _ in range(num_iafs)]
        self.iafs_modules = nn.ModuleList(self.iafs)
        self.z_0 = nn.Parameter(torch.zeros(z_dim))
        self.z_q_0 = nn.Parameter(torch.zeros(z_dim))
        self.h_0 = nn.Parameter(torch.zeros(1, 1, rnn_dim))

    @staticmethod
    def mini_batch(sequences, lengths):
        """The example's ``get_mini_batch`` on one of ppl_vae's minibatches (unsorted)."""
        T_max = int(lengths.max())
        mini_batch = sequences[:, :T_max, :]
        mini_batch_mask = get_mini_batch_mask(mini_batch, lengths)
        return mini_batch, mini_batch_mask

    def model(self, sequences, lengths, annealing_factor=1.0):
        mini_batch, mini_batch_mask = self.mini_batch(sequences, lengths)
        T_max = mini_batch.size(1)
        pyro.module("dmm", self)
        z_prev = self.z_0.expand(mini_batch.size(0), self.z_0.size(0))
        with pyro.plate("z_minibatch", len(mini_batch)):
            for t in pyro.markov(range(1, T_max + 1)):
                z_loc, z_scale = self.trans(z_prev)
                with poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample(
                        f"z_{t}",
                        dist.Normal(z_loc, z_scale)
                        .mask(mini_batch_mask[:, t - 1 : t])
                        .to_event(1),
                    )
                emission_probs_t = self.emitter(z_t)
                pyro.sample(
                    f"obs_x_{t}",
                    dist.Bernoulli(emission_probs_t)
                    .mask(mini_batch_mask[:, t - 1 : t])
                    .to_event(1),
                    obs=mini_batch[:, t - 1, :],
                )
                z_prev = z_t

    def guide(self, sequences, lengths, annealing_factor=1.0):
        mini_batch, mini_batch_mask = self.mini_batch(sequences, lengths)
        T_max = mini_batch.size(1)
        pyro.module("dmm", self)
        h_0_contig = self.h_0.expand(1, mini_batch.size(0), self.rnn.hidden_size).contiguous()
        mini_batch_reversed = nn.utils.rnn.pack_padded_sequence(
            reverse_sequences(mini_batch, lengths), lengths, batch_first=True,
            enforce_sorted=False,
        )
        rnn_output, _ = self.rnn(mini_batch_reversed, h_0_contig)
        rnn_output = pad_and_reverse(rnn_output, lengths)
        z_prev = self.z_q_0.expand(mini_batch.size(0), self.z_q_0.size(0))
        with pyro.plate("z_minibatch", len(mini_batch)):
            for t in pyro.markov(range(1, T_max + 1)):
                z_loc, z_scale = self.combiner(z_prev, rnn_output[:, t - 1, :])
                if len(self.iafs) > 0:
                    z_dist = TransformedDistribution(dist.Normal(z_loc, z_scale), self.iafs)
                else:
                    z_dist = dist.Normal(z_loc, z_scale)
                with pyro.poutine.scale(scale=annealing_factor):
                    if len(self.iafs) > 0:
                        z_t = pyro.sample(f"z_{t}", z_dist.mask(mini_batch_mask[:, t - 1]))
                    else:
                        z_t = pyro.sample(
                            f"z_{t}",
                            z_dist.mask(mini_batch_mask[:, t - 1 : t]).to_event(1),
                        )
                z_prev = z_t


def sequences(rows: int = ROWS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary sequences padded to ``T`` steps and their int64 lengths (2 .. T); the longest is
    the last row only, so no minibatch before the last has every step."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, T, (rows,), generator=g)
    lengths[-1] = T
    notes = (torch.rand(rows, T, INPUT_DIM, generator=g) < 0.3).float()
    steps = torch.arange(T)[None, :, None]
    return notes * (steps < lengths[:, None, None]), lengths


def make(num_iafs: int = 0, seed: int = 0) -> DMM:
    return seeded(lambda: DMM(num_iafs=num_iafs), seed)


def pair(num_iafs: int = 0, rows: int = ROWS):
    """The DMM on ``rows`` sequences, annealing factor 0.5, as a checked pair."""
    dmm = make(num_iafs)
    flow = ("guide:flow(affine autoregressive)",) if num_iafs else ()
    return checked("dmm[iaf]" if num_iafs else "dmm", SOURCE,
                   ("markov:variable-length", "mask:.mask(float)",
                    "scale:annealing(model_kwargs)", "data:int64", "data:tuple", "rnn:packed")
                   + flow,
                   dmm.model, dmm.guide, sequences(rows), model_kwargs={"annealing_factor": 0.5},
                   fit_batch_size=4, extras={"module": dmm})
