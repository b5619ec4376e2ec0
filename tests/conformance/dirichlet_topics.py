"""A topic model with Dirichlet latents in the idiom of pyro-ppl/pyro ``examples/lda.py``:
global ``topic_words ~ Dirichlet`` in a ``pyro.plate("topics")``, local ``doc_topics ~
Dirichlet`` per document, and a guide that is conjugate for the globals (a ``pyro.param`` with
``constraint=constraints.greater_than(0.5)`` as the Dirichlet's concentration) and amortized
for the locals (a network of the document's counts, registered with ``pyro.module``).

What was changed: the example observes word ids per document with a ``word_topics`` site
summed out of the model, its data laid out (words, documents); here each row is a document's
word counts, observed under ``Multinomial(total_count=int(counts.sum(-1).max()))`` as in the
ProdLDA tutorial (its log-density does not use ``total_count``), and q(doc_topics) is a
Dirichlet rather than the example's point mass. The example's ``topic_weights`` (a Gamma prior
on the documents' concentration) is a constant 0.8. Sizes: 3 topics, 6 words, 20 documents of
3 to 9 words, the longest in the last row.
"""

from __future__ import annotations

import functools

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from torch.distributions import constraints

from . import checked, seeded, word_counts

SOURCE = "examples/lda.py"
TOPICS, WORDS, ROWS = 3, 6, 20


def make_predictor() -> nn.Module:
    return nn.Sequential(nn.Linear(WORDS, 8), nn.Sigmoid(), nn.Linear(8, TOPICS),
                         nn.Softplus())


def model(counts):
    with pyro.plate("topics", TOPICS):
        topic_words = pyro.sample("topic_words",
                                  dist.Dirichlet(counts.new_ones(WORDS) / WORDS))
    with pyro.plate("documents", counts.shape[0]):
        doc_topics = pyro.sample("doc_topics", dist.Dirichlet(counts.new_full((TOPICS,), 0.8)))
        probs = doc_topics @ topic_words
        total_count = int(counts.sum(-1).max())
        pyro.sample("doc_words", dist.Multinomial(total_count, probs), obs=counts)


def parametrized_guide(predictor, counts):
    topic_words_posterior = pyro.param(
        "topic_words_posterior",
        lambda: torch.ones(TOPICS, WORDS) + torch.rand(TOPICS, WORDS),
        constraint=constraints.greater_than(0.5),
    )
    with pyro.plate("topics", TOPICS):
        pyro.sample("topic_words", dist.Dirichlet(topic_words_posterior))
    pyro.module("predictor", predictor)
    with pyro.plate("documents", counts.shape[0]):
        pyro.sample("doc_topics", dist.Dirichlet(predictor(counts) + 0.5))


def documents(rows: int = ROWS, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 8, (rows,), generator=g)
    lengths[-1] = 9
    return word_counts(torch.softmax(torch.randn(rows, WORDS, generator=g), -1), lengths, g)


def pair(rows: int = ROWS):
    predictor = seeded(make_predictor)
    return checked("dirichlet_topics", SOURCE,
                   ("Dirichlet latents (global and local)", "param:constraint(greater_than)",
                    "global:latent", "Multinomial(total_count=minibatch max)", "data:tensor"),
                   model, functools.partial(parametrized_guide, predictor), documents(rows),
                   global_latents=True)
