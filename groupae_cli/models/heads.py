"""Heads on the encoder's node features: invariants (-> z and atom scores), rotation, translation."""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from groupae_cli.models.config import ModelConfig
from groupae_cli.models.graph import Layout


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
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
        self.square = o3.FullyConnectedTensorProduct(reduced, reduced, f"{2 * products}x0e + {2 * products}x0o")
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


def _farthest(vectors: torch.Tensor, handedness: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 3): for each structure, the vector (B, N, 3) of greatest length among real atoms.

    Atoms tied in length (to 1e-6 of it) are told apart by `handedness` (B, N), a pseudo-scalar
    feature: two atoms that are mirror images of each other have opposite handedness, so the pick
    does not depend on the numbering even where a mirror relates the candidates.
    """
    length = vectors.norm(dim=-1)
    unit = handedness.abs().amax(1, keepdim=True).clamp_min(1e-30)
    key = length + 1e-6 * length.amax(1, keepdim=True) * handedness / unit
    key = key.masked_fill(~mask, -torch.inf)
    return vectors.gather(1, key.argmax(1)[:, None, None].expand(-1, 1, 3)).squeeze(1)


class RotationHead(nn.Module):
    """Two pooled vector (1o) channels, then Gram–Schmidt: R(X R0^T) = R0 R(X), R in SO(3).

    The pooled vectors a1, a2 are sharpened by the structure's gyration tensor
    C = 1/n sum_i (x_i - t)(x_i - t)^T, which rotates with the input (C -> R0 C R0^T):
    u1 = C^2 a1, u2 = C a2. Like steps of power iteration, this turns e1 towards the longest
    principal axis and e2 towards the next, with signs the learned vectors choose, so canonical
    poses agree across similar molecules from the start.

    Degenerate inputs: where the input's symmetry makes a pooled vector vanish (below `frame_tol`
    of its typical size), an anchor atom stands in: the atom farthest from the centroid for e1,
    the atom farthest from the e1 axis for e2. Atoms tied for farthest are images of each other
    under the structure's symmetry; a pseudo-scalar feature picks among mirror images, and among
    rotation images any pick gives the same canonical form. Such frames are flagged.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.vectors = o3.Linear(o3.Irreps(config.hidden_irreps), o3.Irreps("2x1o"))
        # a fixed random projection onto one pseudo-scalar: only its sign at tied anchors matters,
        # and an argmax passes no gradient, so it is not trained
        self.handedness = o3.Linear(o3.Irreps(config.hidden_irreps), o3.Irreps("0o")).requires_grad_(False)
        self.tol = config.frame_tol

    def forward(self, h: torch.Tensor, layout: Layout, positions: torch.Tensor,
                translation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R (B, 3, 3), degenerate (B,) bool)."""
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
        dense = layout.to_dense(d)
        handedness = layout.to_dense(self.handedness(h).squeeze(-1))
        u1 = torch.where(vanish1[:, None], _farthest(dense, handedness, layout.mask), u1)
        e1 = u1 / u1.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        perp = u2 - (u2 * e1).sum(-1, keepdim=True) * e1
        vanish2 = vanish1 | (perp.norm(dim=-1) <= self.tol * scale[:, 1] * size)
        off_axis = dense - (dense @ e1[:, :, None]) * e1[:, None, :]
        u2 = torch.where(vanish2[:, None], _farthest(off_axis, handedness, layout.mask), u2)
        return gram_schmidt(u1, u2), vanish2


def centroid(positions: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The translation: each structure's centroid, exactly equivariant. (B, 3)"""
    return layout.pool(positions) / layout.n_atoms[:, None].to(positions.dtype)
