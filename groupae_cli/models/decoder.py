"""The decoder: z and the number of atoms -> canonical coordinates and element logits per slot.

It works in the canonical frame and order, so it need not be equivariant. Slot k of a structure of
n atoms gets a sinusoidal code of k and of n, plus a projection of z; a small transformer lets the
slots agree on a geometry. Slot codes live only here: the encoder never sees an index.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from groupae_cli.models.config import ModelConfig


def sinusoid(x: torch.Tensor, dim: int, period: float = 1000.0) -> torch.Tensor:
    """Sinusoidal code (..., dim) of positions x (...)."""
    half = dim // 2
    freq = torch.exp(-math.log(period) * torch.arange(half, device=x.device, dtype=torch.float64) / half)
    angle = x.to(torch.float64)[..., None] * freq
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.decoder_dim
        self.dim = d
        self.from_z = nn.Sequential(nn.Linear(config.embedding_dim, d), nn.SiLU(), nn.Linear(d, d))
        layer = nn.TransformerEncoderLayer(d, config.decoder_heads, 2 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, config.decoder_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.coordinates = nn.Linear(d, 3)
        self.types = nn.Linear(d, len(config.elements))

    def forward(self, z: torch.Tensor, n_atoms: torch.Tensor, n_max: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Y (B, N, 3), type logits (B, N, K)) for N = n_max slots; slots >= n_atoms are padding."""
        slots = torch.arange(n_max, device=z.device)
        mask = slots[None, :] < n_atoms[:, None]
        codes = sinusoid(slots, self.dim)[None] + sinusoid(n_atoms, self.dim)[:, None]
        x = self.from_z(z)[:, None, :] + codes.to(z.dtype)
        x = self.norm(self.transformer(x, src_key_padding_mask=~mask))
        return self.coordinates(x), self.types(x)
