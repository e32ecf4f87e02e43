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


class RotationHead(nn.Module):
    """Two pooled vector (1o) channels, then Gram–Schmidt: R(X R0^T) = R0 R(X), R in SO(3).

    The pooled vectors a1, a2 are sharpened by the structure's gyration tensor
    C = 1/n sum_i (x_i - t)(x_i - t)^T, which rotates with the input (C -> R0 C R0^T):
    u1 = C^2 a1, u2 = C a2. Like steps of power iteration, this turns e1 towards the longest
    principal axis and e2 towards the next, with signs the learned vectors choose, so canonical
    poses agree across similar molecules from the start. Exactly equivariant; nothing is fitted.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.vectors = o3.Linear(o3.Irreps(config.hidden_irreps), o3.Irreps("2x1o"))
        self.tol = config.degenerate_tol

    def forward(self, h: torch.Tensor, layout: Layout, positions: torch.Tensor,
                translation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R (B, 3, 3), degenerate (B,) bool)."""
        per_atom = self.vectors(h).reshape(-1, 2, 3)  # e3nn's 1o is (x, y, z)
        a = layout.pool(per_atom)  # (B, 2, 3)
        d = positions - translation[layout.batch]
        n = layout.n_atoms.to(d.dtype)[:, None, None]
        gyration = layout.pool(d[:, :, None] * d[:, None, :]) / n  # (B, 3, 3)
        u1 = gyration @ (gyration @ a[:, 0, :, None])
        u2 = gyration @ a[:, 1, :, None]
        u1, u2 = u1.squeeze(-1), u2.squeeze(-1)
        # degenerate: a pooled vector (nearly) cancels, or u2 is (nearly) parallel to u1
        size = gyration.diagonal(dim1=1, dim2=2).sum(-1)  # trace: the scale C can stretch by
        scale = layout.pool(per_atom.norm(dim=-1))  # (B, 2): how large the pooled vectors could be
        e1 = u1 / u1.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        perp = (u2 - (u2 * e1).sum(-1, keepdim=True) * e1).norm(dim=-1)
        degenerate = (u1.norm(dim=-1) <= self.tol * scale[:, 0] * size**2) | (perp <= self.tol * scale[:, 1] * size)
        return gram_schmidt(u1, u2), degenerate


def centroid(positions: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The translation: each structure's centroid, exactly equivariant. (B, 3)"""
    return layout.pool(positions) / layout.n_atoms[:, None].to(positions.dtype)
