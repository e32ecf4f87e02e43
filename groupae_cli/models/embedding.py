"""The invariant embedding z: how the encoder's per-atom features become one vector per structure.

Three heads, chosen by `ModelConfig.pooling`:

- "mean": an MLP of the mean over atoms of each atom's invariant features, a bag of local
  environments. Exactly invariant, but it loses the global arrangement the decoder must rebuild.
- "canonical": every atom becomes a token of quantities that are invariant because they are
  measured in the predicted canonical frame: its invariant features, its canonical coordinates
  c_i = (x_i - t) R (with Fourier features of them), its vector features' components along the
  frame axes (v_i R), and its element. A few learned queries attend to the tokens (a permutation-
  invariant set pooling, as in the Set Transformer's PMA), and z is an MLP of the pooled queries,
  the mean of the invariant features and, with `embedding_composition`, the element counts. Since
  R and t are exactly equivariant and the pooling is a symmetric function of the atoms, z is exactly
  invariant; unlike the mean it keeps where each atom sits relative to the others.
- "attention": atom tokens of the invariant features through blocks of self-attention biased by
  each pair's distance, then pooled like "canonical": the global arrangement without a frame.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from torch import nn

from groupae_cli.models.config import ModelConfig
from groupae_cli.models.decoder import slot_codes
from groupae_cli.models.graph import Layout
from groupae_cli.models.heads import mlp
from groupae_cli.models.permutation import slot_of_atoms


def mean_over_atoms(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(A, F) per-atom features -> (B, F) their mean over each structure's atoms."""
    return layout.pool(x) / layout.n_atoms[:, None].to(x.dtype)


def frame_free(inv: torch.Tensor, types: torch.Tensor, layout: Layout, n_types: int,
               with_composition: bool) -> torch.Tensor:
    """(B, F [+ K]) the mean of the atoms' invariant features and, if asked, the element counts
    log(1 + count): what the pooled heads add to their tokens, and all that z's identity block sees."""
    mean = mean_over_atoms(inv, layout)
    if not with_composition:
        return mean
    counts = layout.pool(torch.nn.functional.one_hot(types, n_types).to(inv.dtype))
    return torch.cat([mean, torch.log1p(counts)], -1)


def fourier_frequencies(count: int) -> torch.Tensor:
    """Angular frequencies of `count` Fourier features, periods from 20 Å down to 1 Å."""
    return 2 * math.pi / torch.logspace(math.log10(20.0), 0.0, count)


def fourier(coordinates: torch.Tensor, freq: torch.Tensor) -> torch.Tensor:
    """(..., 3) coordinates -> (..., 6 F): the sines, then the cosines, of each coordinate at each frequency."""
    angle = coordinates[..., None] * freq  # (..., 3, F)
    return torch.cat([angle.sin().flatten(-2), angle.cos().flatten(-2)], -1)


def padding_mask(layout: Layout, heads: int, queries: int) -> torch.Tensor:
    """(B heads, queries, N) True where the key is padding: the padding as an attention mask per
    head, not key_padding_mask (the same arithmetic, and torch's check of a key_padding_mask imports
    sympy, about half a second of start-up)."""
    return (~layout.mask)[:, None, None, :].expand(-1, heads, queries, -1).reshape(-1, queries, layout.n_max)


def pool_by_queries(pool, dense: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(B, N, d) atom tokens -> (B, K d): `pool`'s K learned queries attend to each structure's
    tokens (a permutation-invariant set pooling, the Set Transformer's PMA), layer-normed, flattened."""
    queries = pool.queries.expand(layout.n_structures, -1, -1)
    padding = padding_mask(layout, pool.attention.num_heads, queries.shape[1])
    pooled, _ = pool.attention(queries, dense, dense, attn_mask=padding, need_weights=False)
    return pool.norm(pooled).flatten(1)


class MeanEmbedding(nn.Sequential):
    """z = MLP(mean over atoms of the atoms' invariant features). (A Sequential: the parameter
    names of checkpoints written before the canonical head existed.)"""

    def __init__(self, config: ModelConfig, inv_dim: int):
        super().__init__(*mlp([inv_dim, 2 * config.embedding_dim + 32, config.embedding_dim]))

    def forward(self, inv, h, canonical, rotation, types, layout: Layout) -> torch.Tensor:
        return super().forward(mean_over_atoms(inv, layout))


class CanonicalEmbedding(nn.Module):
    """z from atom tokens in the predicted canonical frame, pooled by attention (see the module doc)."""

    FREQUENCIES = 8  # Fourier features of each canonical coordinate, periods from about 1 to 20 Å

    def __init__(self, config: ModelConfig, inv_dim: int):
        super().__init__()
        self.n_types = len(config.elements)
        self.composition = config.embedding_composition
        d = config.pool_dim
        self.vectors = o3.Linear(o3.Irreps(config.hidden_irreps), o3.Irreps(f"{config.pool_vectors}x1o"))
        self.register_buffer("freq", fourier_frequencies(self.FREQUENCIES))
        self.element = nn.Embedding(self.n_types, d)
        self.slot = nn.Linear(d, d) if config.pool_slot_codes else None
        if self.slot is not None:  # zero at the start: the codes (entries up to 4) would drown the tokens
            nn.init.zeros_(self.slot.weight)
            nn.init.zeros_(self.slot.bias)
        token_in = inv_dim + 3 + 6 * self.FREQUENCIES + 3 * config.pool_vectors
        self.token = mlp([token_in, d, d])
        self.mixer = None
        if config.token_layers:  # tokens attend to each other before pooling (padding masked as keys)
            layer = nn.TransformerEncoderLayer(d, config.pool_heads, 2 * d, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.mixer = nn.TransformerEncoder(layer, config.token_layers, enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.randn(config.pool_tokens, d) / math.sqrt(d))
        self.attention = nn.MultiheadAttention(d, config.pool_heads, batch_first=True)
        self.norm = nn.LayerNorm(d)
        free = inv_dim + (self.n_types if self.composition else 0)
        # the first `embedding_identity` entries of z see only frame-free features (what the
        # molecule is, robust to its conformation); the rest also see the canonical-frame tokens
        identity = config.embedding_identity
        geometry = config.embedding_dim - identity
        self.net = mlp([config.pool_tokens * d + free, 2 * geometry + 64, geometry])
        self.identity_net = mlp([free, 2 * identity + 32, identity]) if identity else None

    def forward(self, inv: torch.Tensor, h: torch.Tensor, canonical: torch.Tensor, rotation: torch.Tensor,
                types: torch.Tensor, layout: Layout, order: torch.Tensor | None = None) -> torch.Tensor:
        """inv (A, F) invariant features, h (A, irreps) node features, canonical (A, 3) = (x - t) R,
        rotation (B, 3, 3), types (A,), order (B, N) the canonical order (the input atom in each
        slot; needed with slot codes) -> z (B, embedding_dim)."""
        frame_vectors = self.vectors(h).reshape(len(h), -1, 3) @ rotation[layout.batch]  # components along e1..e3
        tokens = torch.cat([inv, canonical, fourier(canonical, self.freq), frame_vectors.flatten(1)], -1)
        dense = layout.to_dense(self.token(tokens) + self.element(types))
        if self.slot is not None:
            dense = dense + self.slot(self.slot_codes(types, layout, order).to(dense.dtype))
        if self.mixer is not None:
            dense = self.mixer(dense, mask=padding_mask(layout, self.attention.num_heads, layout.n_max))
        pooled = pool_by_queries(self, dense, layout)
        free = frame_free(inv, types, layout, self.n_types, self.composition)
        z = self.net(torch.cat([pooled, free], -1))
        if self.identity_net is not None:
            z = torch.cat([self.identity_net(free), z], -1)
        return z

    def slot_codes(self, types: torch.Tensor, layout: Layout, order: torch.Tensor) -> torch.Tensor:
        """(B, N, pool_dim): each atom's canonical-slot code (the decoder's), in input order."""
        slot_types = layout.to_dense(types).gather(1, order)
        codes, _, _ = slot_codes(layout.n_atoms, layout.n_max, self.slot.in_features, slot_types, self.n_types)
        return codes.gather(1, slot_of_atoms(order)[:, :, None].expand(-1, -1, codes.shape[-1]))


class Refiner(nn.Module):
    """One learned correction of z's canonical-frame part (`refine_steps`): every decoded slot
    becomes a token of the decoder's hidden state there, its target (the structure in its canonical
    pose and order, with Fourier features) and what the slot misses of it (target - decoded); learned
    queries pool the tokens and an MLP, zero at the start, gives the correction. Every input is
    invariant (the canonical form is), so z stays exactly invariant."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.pool_dim
        frequencies = CanonicalEmbedding.FREQUENCIES
        self.register_buffer("freq", fourier_frequencies(frequencies))
        self.token = mlp([config.decoder_dim + 6 + 6 * frequencies, d, d])
        self.queries = nn.Parameter(torch.randn(config.pool_tokens, d) / math.sqrt(d))
        self.attention = nn.MultiheadAttention(d, config.pool_heads, batch_first=True)
        self.norm = nn.LayerNorm(d)
        geometry = config.embedding_dim - config.embedding_identity
        self.net = mlp([config.pool_tokens * d, 2 * geometry, geometry])
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, hidden: torch.Tensor, target: torch.Tensor, decoded: torch.Tensor, layout: Layout) -> torch.Tensor:
        """hidden (B, N, decoder_dim), target and decoded (B, N, 3) in slot order -> (B, geometry part of z)."""
        tokens = torch.cat([hidden, target, target - decoded, fourier(target, self.freq)], -1)
        return self.net(pool_by_queries(self, self.token(tokens), layout))


class DistanceAttention(nn.Module):
    """One pre-norm self-attention block over a structure's atoms whose logits carry a learned bias
    of each pair's distance (per head): a function of distances only, so exactly SE(3)-invariant,
    and of all pairs, so each atom learns where the others are."""

    def __init__(self, dim: int, heads: int, basis: int, cutoff: float):
        super().__init__()
        self.heads, self.cutoff, self.basis = heads, cutoff, basis
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.bias = nn.Linear(basis, heads)
        self.out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, distances: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, N, d), distances (B, N, N), mask (B, N) -> (B, N, d)."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        rbf = soft_one_hot_linspace(distances.clamp(max=self.cutoff), 0.0, self.cutoff, self.basis,
                                    basis="gaussian", cutoff=False)
        bias = self.bias(rbf).permute(0, 3, 1, 2)  # (B, H, N, N)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        attended = (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.out(attended)
        return x + self.ff(x)


class AttentionEmbedding(nn.Module):
    """z from atom tokens that attend to each other with distance-biased attention, then pooled by
    learned queries: global arrangement without a frame, so float32 round-off in the frame never
    reaches z (invariance as tight as the mean head's)."""

    def __init__(self, config: ModelConfig, inv_dim: int):
        super().__init__()
        self.n_types = len(config.elements)
        self.composition = config.embedding_composition
        d = config.pool_dim
        self.element = nn.Embedding(self.n_types, d)
        self.token = mlp([inv_dim, d, d])
        self.blocks = nn.ModuleList(DistanceAttention(d, config.pool_heads, 16, 12.0) for _ in range(config.pool_layers))
        self.queries = nn.Parameter(torch.randn(config.pool_tokens, d) / math.sqrt(d))
        self.attention = nn.MultiheadAttention(d, config.pool_heads, batch_first=True)
        self.norm = nn.LayerNorm(d)
        pooled = config.pool_tokens * d + inv_dim + (self.n_types if self.composition else 0)
        self.net = mlp([pooled, 2 * config.embedding_dim + 64, config.embedding_dim])

    def forward(self, inv: torch.Tensor, h: torch.Tensor, canonical: torch.Tensor, rotation: torch.Tensor,
                types: torch.Tensor, layout: Layout) -> torch.Tensor:
        dense = layout.to_dense(self.token(inv) + self.element(types))  # (B, N, d)
        centred = layout.to_dense(canonical)  # distances are the same in any frame
        distances = torch.cdist(centred, centred)
        for block in self.blocks:
            dense = block(dense, distances, layout.mask)
        pooled = pool_by_queries(self, dense, layout)
        return self.net(torch.cat([pooled, frame_free(inv, types, layout, self.n_types, self.composition)], -1))


def embedding_head(config: ModelConfig, inv_dim: int) -> nn.Module:
    heads = {"mean": MeanEmbedding, "canonical": CanonicalEmbedding, "attention": AttentionEmbedding}
    return heads[config.pooling](config, inv_dim)
