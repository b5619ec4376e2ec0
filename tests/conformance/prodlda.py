"""ProdLDA of the Pyro tutorial ``tutorial/source/prodlda.ipynb`` (Srivastava & Sutton 2017):
a topic model whose Dirichlet prior on the document's topic proportions is replaced by a
logistic normal, on tiny word counts.

As there: ``model(docs)`` registers the decoder (``pyro.module("decoder", ...)``) and the guide
the encoder; in ``pyro.plate("documents", docs.shape[0])`` a local ``logtheta ~ Normal(0, 1)``,
``theta = softmax(logtheta)``, word probabilities ``softmax(beta θ)``, and the counts observed
under ``Multinomial(total_count=int(docs.sum(-1).max()), ...)``: the longest document *of the
minibatch* (Multinomial.log_prob does not use ``total_count``; the tutorial says so). The
tutorial trains with ``TraceMeanField_ELBO``.

What was changed: vocabulary 12,722 → 8 words, 20 topics → 3, hidden 100 → 6; the encoder's
and decoder's BatchNorm and dropout are left out (BatchNorm1d on a leading particle dim reads
the rows as channels; dropout makes the pair random at fixed parameters) and the decoder's
softmax is over the last dim (``dim=-1`` for ``dim=1``), so that the pair broadcasts over
particles. The documents: 24 of 2 to 12 words, the longest in the last rows only, so the first
minibatch's ``total_count`` is below the longest document's.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checked, seeded, word_counts

SOURCE = "tutorial/source/prodlda.ipynb"
VOCAB, TOPICS, ROWS = 8, 3, 24


class Encoder(nn.Module):
    def __init__(self, vocab_size, num_topics, hidden):
        super().__init__()
        self.fc1 = nn.Linear(vocab_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fcmu = nn.Linear(hidden, num_topics)
        self.fclv = nn.Linear(hidden, num_topics)

    def forward(self, inputs):
        h = F.softplus(self.fc1(inputs))
        h = F.softplus(self.fc2(h))
        logtheta_loc = self.fcmu(h)
        logtheta_logvar = self.fclv(h)
        logtheta_scale = (0.5 * logtheta_logvar).exp()
        return logtheta_loc, logtheta_scale


class Decoder(nn.Module):
    def __init__(self, vocab_size, num_topics):
        super().__init__()
        self.beta = nn.Linear(num_topics, vocab_size, bias=False)

    def forward(self, inputs):
        return F.softmax(self.beta(inputs), dim=-1)


class ProdLDA(nn.Module):
    def __init__(self, vocab_size, num_topics, hidden):
        super().__init__()
        self.vocab_size = vocab_size
        self.num_topics = num_topics
        self.encoder = Encoder(vocab_size, num_topics, hidden)
        self.decoder = Decoder(vocab_size, num_topics)

    def model(self, docs):
        pyro.module("decoder", self.decoder)
        with pyro.plate("documents", docs.shape[0]):
            logtheta_loc = docs.new_zeros((docs.shape[0], self.num_topics))
            logtheta_scale = docs.new_ones((docs.shape[0], self.num_topics))
            logtheta = pyro.sample(
                "logtheta", dist.Normal(logtheta_loc, logtheta_scale).to_event(1))
            theta = F.softmax(logtheta, -1)
            count_param = self.decoder(theta)
            # the minibatch's longest document: Multinomial.log_prob does not use it
            total_count = int(docs.sum(-1).max())
            pyro.sample("obs", dist.Multinomial(total_count, count_param), obs=docs)

    def guide(self, docs):
        pyro.module("encoder", self.encoder)
        with pyro.plate("documents", docs.shape[0]):
            logtheta_loc, logtheta_scale = self.encoder(docs)
            pyro.sample("logtheta", dist.Normal(logtheta_loc, logtheta_scale).to_event(1))


def documents(rows: int = ROWS, seed: int = 0) -> torch.Tensor:
    """Word counts (float), 2 to 8 words a document but 12 in the last three."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (rows,), generator=g)
    lengths[-3:] = 12
    topics = torch.softmax(2 * torch.randn(TOPICS, VOCAB, generator=g), -1)
    mix = torch.softmax(torch.randn(rows, TOPICS, generator=g), -1) @ topics
    return word_counts(mix, lengths, g)


def pair(rows: int = ROWS):
    prodlda = seeded(lambda: ProdLDA(VOCAB, TOPICS, hidden=6))
    return checked("prodlda", SOURCE, ("logistic-normal latent",
                                       "Multinomial(total_count=minibatch max)", "data:tensor"),
                   prodlda.model, prodlda.guide, documents(rows), extras={"module": prodlda})
