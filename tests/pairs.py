"""Small model/guide pairs that several test modules share."""

import pyro
import pyro.distributions as dist
import torch


def delta_pair(x_dim: int, log: list | None = None):
    """Linear decoder, point-mass (Delta) guide: an ELBO without sampling noise. With ``log``,
    the model appends whether Pyro's validation is on each time it runs."""
    encoder, decoder = torch.nn.Linear(x_dim, 2), torch.nn.Linear(2, x_dim)

    def model(x):
        if log is not None:
            log.append(pyro.infer.util.is_validation_enabled())
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(encoder(x), event_dim=1))

    return model, guide


def drifting_scale_pair():
    """A scale parameter without a positivity constraint (a bug) that Adam at lr 0.5 pushes
    through 0 on data of scale 0.01, making log p(x|z) non-finite."""

    def model(x):
        scale = pyro.param("scale", torch.tensor(1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(0 * z, scale).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1))

    return model, guide


def ppca_rows(seed: int, rows: int = 160) -> torch.Tensor:
    """Rows of a 2-factor linear model in 5 dims with noise sd 0.5, for fitting pPCA."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 2, generator=generator)
    noise = 0.5 * torch.randn(rows, 5, generator=generator)
    return torch.randn(rows, 2, generator=generator) @ w.T + noise
