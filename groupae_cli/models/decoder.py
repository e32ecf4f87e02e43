"""The decoder: z and the number of atoms (and the composition) -> canonical coordinates and
element logits per slot.

It works in the canonical frame and order, so it need not be equivariant. Slot k of a structure of
n atoms gets a sinusoidal code of k and of n, plus a projection of z; a small transformer lets the
slots agree on a geometry. With the composition (`decoder_composition`), the canonical order being
element-major, each slot also knows its element, its rank among the atoms of that element and their
count. Slot codes live only here: the encoder never sees an index.
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
        self.memory_tokens = config.decoder_memory
        if self.memory_tokens:
            self.memory = nn.Sequential(nn.Linear(config.embedding_dim, 2 * d), nn.SiLU(),
                                        nn.Linear(2 * d, self.memory_tokens * d))
            self.memory_code = nn.Parameter(torch.randn(self.memory_tokens, d) / math.sqrt(d))
            layer = nn.TransformerDecoderLayer(d, config.decoder_heads, 2 * d, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.transformer = nn.TransformerDecoder(layer, config.decoder_layers)
        else:
            layer = nn.TransformerEncoderLayer(d, config.decoder_heads, 2 * d, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.transformer = nn.TransformerEncoder(layer, config.decoder_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.coordinates = nn.Linear(d, 3)
        self.types = nn.Linear(d, len(config.elements))
        self.element = nn.Embedding(len(config.elements), d) if config.decoder_composition else None

    def forward(self, z: torch.Tensor, n_atoms: torch.Tensor, n_max: int,
                slot_types: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(Y (B, N, 3), type logits (B, N, K)) for N = n_max slots; slots >= n_atoms are padding.

        `slot_types` (B, N): the element index of each canonical slot (needed with composition).
        """
        slots = torch.arange(n_max, device=z.device)
        mask = slots[None, :] < n_atoms[:, None]
        codes = sinusoid(slots, self.dim)[None] + sinusoid(n_atoms, self.dim)[:, None]
        if self.element is not None:
            if slot_types is None:
                raise ValueError("this decoder needs the composition (slot_types)")
            t = slot_types.masked_fill(~mask, 0)
            new_block = torch.ones_like(mask)
            new_block[:, 1:] = t[:, 1:] != t[:, :-1]
            block_start = torch.cummax(torch.where(new_block, slots[None, :], 0), dim=1).values
            one_hot = torch.nn.functional.one_hot(t, self.element.num_embeddings) * mask[:, :, None]
            count = one_hot.sum(1).gather(1, t)  # atoms of the slot's element
            codes = codes + sinusoid(slots[None, :] - block_start, self.dim) + sinusoid(count, self.dim, period=100.0)
        x = self.from_z(z)[:, None, :] + codes.to(z.dtype)
        if self.element is not None:
            x = x + self.element(t)
        if self.memory_tokens:
            memory = self.memory(z).reshape(len(z), self.memory_tokens, self.dim) + self.memory_code
            x = self.transformer(x, memory, tgt_key_padding_mask=~mask)
        else:
            x = self.transformer(x, src_key_padding_mask=~mask)
        x = self.norm(x)
        return self.coordinates(x), self.types(x)
