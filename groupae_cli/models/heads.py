"""Heads on the encoder's node features: invariants (-> z and atom scores), rotation, translation."""

from __future__ import annotations

from itertools import pairwise

import torch
from e3nn import o3
from torch import nn

from groupae_cli.models.config import ModelConfig
from groupae_cli.models.graph import Layout


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class NodeInvariants(nn.Module):
    """Per-atom SE(3)-invariant features: the (pseudo)scalar channels and quadratic invariants.

    The quadratic part (a tensor product of the features with themselves, onto 0e and 0o) turns
    vectors into lengths and angles, and vector x pseudo-vector pairs into pseudo-scalars: these
    change sign under a mirror, so chirality reaches everything built on them.
    """

    def __init__(self, config: ModelConfig, products: int = 8):
        super().__init__()
        hidden = o3.Irreps(config.hidden_irreps)
        reduced = o3.Irreps(f"{products}x0e + {products}x0o + {products}x1o + {products}x1e")
        self.reduce = o3.Linear(hidden, reduced)
        self.square = o3.FullyConnectedTensorProduct(reduced, reduced, f"{2 * products}x0e + {2 * products}x0o",
                                                     _optimize_einsums=True)  # (kept by a quick build)
        self.scalar_dims = config.scalars + config.pseudoscalars  # 0e and 0o come first in the irreps
        self.dim = self.scalar_dims + 4 * products

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r = self.reduce(h)
        return torch.cat([h[:, : self.scalar_dims], self.square(r, r)], dim=-1)


def gram_schmidt(u1: torch.Tensor, u2: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rotation matrices (B, 3, 3) with columns e1, e2, e3 = e1 x e2; det +1.

    Safe: where u2 is (nearly) parallel to u1, e2 is taken from the coordinate axis least aligned
    with e1 (deterministic; such inputs are flagged degenerate by the caller).
    """
    e1 = u1 / u1.norm(dim=-1, keepdim=True).clamp_min(eps)
    v2 = u2 - (u2 * e1).sum(-1, keepdim=True) * e1
    axis = torch.nn.functional.one_hot(e1.abs().argmin(-1), 3).to(u1.dtype)
    fallback = axis - (axis * e1).sum(-1, keepdim=True) * e1
    small = v2.norm(dim=-1, keepdim=True) <= eps
    v2 = torch.where(small, fallback, v2)
    e2 = v2 / v2.norm(dim=-1, keepdim=True).clamp_min(eps)
    e3 = torch.linalg.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], dim=-1)


#: four generic directions: the anchor frame whose canonical form has the largest sum over atoms of
#: p(c) = a b (1 + c.w3 (1 + c.w4)), with a = c.w1, b = c.w2, wins. Canonical poses that differ by
#: a mirror or a rotation change that sum; its quadratic part, the least sensitive to noise, is
#: nonzero for centrosymmetric structures (where a cubic sums to 0), the higher parts break its ties
_FORM_KEY = ((0.8018, 0.3563, 0.4797), (-0.2789, 0.9021, 0.3291), (0.5293, -0.2407, 0.8135),
             (-0.4472, -0.5976, 0.6655))
_ANCHORS = 6


def _anchor_candidates(vectors: torch.Tensor, mask: torch.Tensor, tie: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The (up to _ANCHORS) longest vectors of each row and whether each is within `tie` of the
    longest: (B, ..., K, 3), (B, ..., K). `vectors` (B, ..., N, 3), `mask` broadcastable to (B, ..., N)."""
    length = vectors.norm(dim=-1).masked_fill(~mask, -1.0)
    top = length.topk(min(_ANCHORS, length.shape[-1]), dim=-1)
    valid = (top.values >= (1 - tie) * top.values[..., :1]) & (top.values > 0)
    picked = vectors.gather(-2, top.indices[..., None].expand(*top.indices.shape, 3))
    return picked, valid


def form_key(forms: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The polynomial key of canonical forms (..., N, 3) -> (...); see _FORM_KEY."""
    a, b, c, d = (forms @ forms.new_tensor(_FORM_KEY).T).unbind(-1)
    return (a * b * (1 + c * (1 + d)) * mask).sum(-1)


def anchor_frames(dense: torch.Tensor, mask: torch.Tensor, u1: torch.Tensor | None, tie: float) -> torch.Tensor:
    """Frames (B, 3, 3) from anchor atoms, for structures whose symmetry cancels the learned vectors.

    e1 points at an atom farthest from the centroid (or along `u1`, where that is usable), e2 at an
    atom farthest from the e1 axis. Atoms within `tie` of the farthest are all tried; of the frames
    they give, the one whose canonical form scores highest under a fixed polynomial key wins. Tied
    atoms are images of each other under the structure's symmetry; where two picks give different
    canonical poses, the key tells them apart the same way for every copy of the input.
    """
    if u1 is None:
        first, valid1 = _anchor_candidates(dense, mask, tie)  # (B, K, 3)
    else:
        first, valid1 = u1[:, None, :], torch.ones_like(u1[:, :1], dtype=torch.bool)
    e1 = first / first.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    off_axis = dense[:, None] - (dense[:, None] @ e1[..., None]) * e1[:, :, None, :]  # (B, K, N, 3)
    second, valid2 = _anchor_candidates(off_axis, mask[:, None], tie)  # (B, K, K2, 3)
    k1, k2 = second.shape[1], second.shape[2]
    frames = gram_schmidt(first[:, :, None].expand(-1, -1, k2, -1).reshape(-1, 3), second.reshape(-1, 3))
    frames = frames.reshape(len(dense), k1 * k2, 3, 3)
    forms = dense[:, None] @ frames  # (B, K1*K2, N, 3)
    key = form_key(forms, mask[:, None])
    key = key.masked_fill(~(valid1[:, :, None] & valid2).reshape(len(dense), -1), -torch.inf)
    return frames[torch.arange(len(dense), device=dense.device), key.argmax(1)]


class RotationHead(nn.Module):
    """Two pooled vector (1o) channels, then Gram–Schmidt: R(X R0^T) = R0 R(X), R in SO(3).

    The pooled vectors a1, a2 are sharpened by the structure's gyration tensor
    C = 1/n sum_i (x_i - t)(x_i - t)^T, which rotates with the input (C -> R0 C R0^T):
    u1 = C^2 a1, u2 = C a2. Like steps of power iteration, this turns e1 towards the longest
    principal axis and e2 towards the next, with signs the learned vectors choose, so canonical
    poses agree across similar molecules from the start.

    Degenerate inputs: where the input's symmetry makes a pooled vector vanish (below `frame_tol`
    of its typical size), anchor atoms define the frame instead (`anchor_frames`), and the frame
    is flagged degenerate.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.vectors = o3.Linear(o3.Irreps(config.hidden_irreps), o3.Irreps("2x1o"))
        self.tol = config.frame_tol
        self.anchor_tie = config.anchor_tie

    def forward(self, h: torch.Tensor, layout: Layout, positions: torch.Tensor,
                translation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(R (B, 3, 3), degenerate (B,) bool, conditioning (B,)).

        The conditioning, in [0, 1], says how well round-off in the atoms' vectors is kept out of R:
        the smaller of |a1| / sum_i |v1_i| (how little the pooled vector cancels) and
        sin(u1, u2) |a2| / sum_i |v2_i|. Near 0, float32 round-off in the features is amplified by
        about its inverse in R, and in everything measured in the canonical frame.
        """
        per_atom = self.vectors(h).reshape(-1, 2, 3)  # e3nn's 1o is (x, y, z)
        a = layout.pool(per_atom)  # (B, 2, 3)
        d = positions - translation[layout.batch]
        n = layout.n_atoms.to(d.dtype)[:, None, None]
        gyration = layout.pool(d[:, :, None] * d[:, None, :]) / n  # (B, 3, 3)
        u1 = (gyration @ (gyration @ a[:, 0, :, None])).squeeze(-1)
        u2 = (gyration @ a[:, 1, :, None]).squeeze(-1)
        # how large u1, u2 could be: the pooled vectors' typical size, stretched by C (its norm)
        size = torch.linalg.eigvalsh(gyration)[:, -1]
        scale = layout.pool(per_atom.norm(dim=-1))  # (B, 2)
        vanish1 = u1.norm(dim=-1) <= self.tol * scale[:, 0] * size**2
        e1 = u1 / u1.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        perp = u2 - (u2 * e1).sum(-1, keepdim=True) * e1
        vanish2 = vanish1 | (perp.norm(dim=-1) <= self.tol * scale[:, 1] * size)
        coherence = a.norm(dim=-1) / scale.clamp_min(1e-30)  # (B, 2)
        sine = perp.norm(dim=-1) / u2.norm(dim=-1).clamp_min(1e-30)
        conditioning = torch.minimum(coherence[:, 0], sine * coherence[:, 1])
        rotation = gram_schmidt(u1, u2)
        if vanish2.any():
            dense = layout.to_dense(d)
            rotation = rotation.clone()
            for rows, given in ((vanish1, None), (vanish2 & ~vanish1, u1)):  # the learned e1 may still serve
                if rows.any():
                    rotation[rows] = anchor_frames(dense[rows], layout.mask[rows],
                                                   None if given is None else given[rows], self.anchor_tie)
        return rotation, vanish2, conditioning


def centroid(positions: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The translation: each structure's centroid, exactly equivariant. (B, 3)"""
    return layout.pool(positions) / layout.n_atoms[:, None].to(positions.dtype)
