"""The decoder: z and the number of atoms (and the composition) -> canonical coordinates and
element logits per slot.

It works in the canonical frame and order, so it need not be equivariant. Slot k of a structure of
n atoms gets a sinusoidal code of k and of n, plus a projection of z; a small transformer lets the
slots agree on a geometry. With the composition (`decoder_composition`), the canonical order being
element-major, each slot also knows its element, its rank among the atoms of that element and their
count, and decodes that element. The same slot codes can be given to the canonical embedding's atom
tokens (`pool_slot_codes`), so that what the encoder writes about slot k the decoder's slot k reads.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from groupae_cli.models.config import ModelConfig

#: the logit of an element a slot is known not to hold: exp() of it is 0 in float32 and float64
_MASKED = -1e4


def sinusoid(x: torch.Tensor, dim: int, period: float = 1000.0) -> torch.Tensor:
    """Sinusoidal code (..., dim) of positions x (...)."""
    half = dim // 2
    freq = torch.exp(-math.log(period) * torch.arange(half, device=x.device, dtype=torch.float64) / half)
    angle = x.to(torch.float64)[..., None] * freq
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


def slot_codes(n_atoms: torch.Tensor, n_max: int, dim: int, slot_types: torch.Tensor | None = None,
               n_types: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(codes (B, N, dim) float64, mask (B, N), slot elements with padding as 0 (B, N) or None).

    Slot k of a structure of n atoms: a sinusoidal code of k and of n; with the composition
    (`slot_types` (B, N), element indices below `n_types`, element-major), also of k's rank among
    the atoms of its element and of their count.
    """
    slots = torch.arange(n_max, device=n_atoms.device)
    mask = slots[None, :] < n_atoms[:, None]
    codes = sinusoid(slots, dim)[None] + sinusoid(n_atoms, dim)[:, None]
    if slot_types is None:
        return codes, mask, None
    t = slot_types.masked_fill(~mask, 0)
    new_block = torch.ones_like(mask)
    new_block[:, 1:] = t[:, 1:] != t[:, :-1]
    block_start = torch.cummax(torch.where(new_block, slots[None, :], 0), dim=1).values
    one_hot = torch.nn.functional.one_hot(t, n_types) * mask[:, :, None]
    count = one_hot.sum(1).gather(1, t)  # atoms of the slot's element
    codes = codes + sinusoid(slots[None, :] - block_start, dim) + sinusoid(count, dim, period=100.0)
    return codes, mask, t


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
        y, logits, _ = self.slots(z, n_atoms, n_max, slot_types)
        return y, logits

    def slots(self, z: torch.Tensor, n_atoms: torch.Tensor, n_max: int,
              slot_types: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward's (Y, type logits) and the slots' last hidden states (B, N, decoder_dim)."""
        if self.element is not None and slot_types is None:
            raise ValueError("this decoder needs the composition (slot_types)")
        composition = slot_types if self.element is not None else None
        codes, mask, t = slot_codes(n_atoms, n_max, self.dim, composition, self.types.out_features)
        x = self.from_z(z)[:, None, :] + codes.to(z.dtype)
        if self.element is not None:
            x = x + self.element(t)
        if self.memory_tokens:
            memory = self.memory(z).reshape(len(z), self.memory_tokens, self.dim) + self.memory_code
            x = self.transformer(x, memory, tgt_key_padding_mask=~mask)
        else:
            x = self.transformer(x, src_key_padding_mask=~mask)
        x = self.norm(x)
        logits = self.types(x)
        if self.element is not None:
            # told each slot's element, the decoder decodes that element: the other logits are
            # masked (finite, so the type head stays in the graph, as DistributedDataParallel needs)
            given = torch.nn.functional.one_hot(t, self.types.out_features).bool()
            logits = logits.masked_fill(~given, _MASKED)
        return self.coordinates(x), logits, x
