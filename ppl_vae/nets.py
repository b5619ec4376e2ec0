"""Small networks that VAE pairs are built from (the zoo uses them; so may users)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """One hidden layer with softplus: ``Linear → Softplus → Linear``."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Softplus(), nn.Linear(hidden, out_dim))


class NormalEncoder(nn.Module):
    """x ↦ (loc, scale) of a diagonal Normal q(z|x); scale = softplus(·) + ``min_scale``."""

    def __init__(self, x_dim: int, z_dim: int, hidden: int, min_scale: float = 1e-4):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(x_dim, hidden), nn.Softplus())
        self.loc = nn.Linear(hidden, z_dim)
        self.scale = nn.Linear(hidden, z_dim)
        self.min_scale = min_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.loc(h), nn.functional.softplus(self.scale(h)) + self.min_scale
