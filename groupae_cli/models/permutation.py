"""The permutation head: invariant per-atom scores -> a canonical atom order.

Conventions (DESIGN §1): `order[b, k]` is the input atom in canonical slot k; as a matrix,
P[b, k, i] = 1 when order[b, k] == i. Input atom i goes to slot rank(i); the reconstruction takes
slot rank(i) back to atom i (X_hat = P^T Y). Renumbering the input by sigma gives
P(sigma X) = P(X) sigma^-1, so P(X) X is the same sequence for every numbering.

Training relaxes P: P_soft[k, i] = softmax_i(-|s_i - s_(k)| / tau), s_(k) the k-th smallest score,
optionally straight-through (hard forward, soft gradient). Inference sorts: exactly equivariant,
deterministic, padded atoms last.
"""

from __future__ import annotations

import torch
from torch import nn

from groupae_cli.models.heads import mlp

#: a fixed, generic direction: projecting canonical coordinates on it breaks ties between atoms of
#: equal score and element in a way that is itself equivariant (it lives in the canonical frame)
_TIE_DIRECTION = (0.7236068, 0.5257311, 0.4472136)


class ScoreHead(nn.Module):
    """s_i = MLP(invariant features of atom i): invariant under SE(3), equivariant under S_n."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.net = mlp([in_dim, hidden, hidden, 1])

    def forward(self, invariants: torch.Tensor) -> torch.Tensor:
        return self.net(invariants).squeeze(-1)


def _stable_argsort(key: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Re-sort `order` (B, N) stably by key[order]."""
    return order.gather(1, torch.sort(key.gather(1, order), dim=1, stable=True).indices)


def canonical_order(scores: torch.Tensor, types: torch.Tensor, canonical: torch.Tensor, mask: torch.Tensor,
                    tie_tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard canonical order (B, N) and the number of tied score pairs per structure (B,).

    Sorted by score; atoms whose scores lie within `tie_tol` form a tie group, ordered by element
    and then by their position along a fixed direction in the canonical frame (`canonical`,
    (B, N, 3): (X - t) R). Padded atoms (mask False) come last.
    """
    big = torch.finfo(scores.dtype).max
    s = scores.masked_fill(~mask, big)
    by_score = torch.sort(s, dim=1, stable=True)
    gaps = by_score.values.diff(dim=1) > tie_tol
    group_sorted = torch.cat([torch.zeros_like(gaps[:, :1], dtype=torch.long), gaps.long().cumsum(1)], dim=1)
    group = torch.empty_like(group_sorted).scatter_(1, by_score.indices, group_sorted)
    group = group.masked_fill(~mask, torch.iinfo(torch.long).max)
    direction = canonical.new_tensor(_TIE_DIRECTION)
    order = torch.sort(canonical @ direction, dim=1, stable=True).indices
    order = _stable_argsort(types, order)
    order = _stable_argsort(group, order)
    ties = ((~gaps) & mask[:, 1:]).sum(1)
    return order, ties


def soft_permutation(scores: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """P_soft (B, N, N): row k is a softmax over the atoms i near the k-th smallest score."""
    big = torch.finfo(scores.dtype).max / 4
    s = scores.masked_fill(~mask, big)
    sorted_s = torch.sort(s, dim=1).values
    logits = -(sorted_s[:, :, None] - s[:, None, :]).abs() / tau
    logits = logits.masked_fill(~mask[:, None, :], float("-inf")).masked_fill(~mask[:, :, None], 0.0)
    p = torch.softmax(logits, dim=-1)
    return p * mask[:, :, None]


def hard_permutation(order: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 0/1 matrix of a canonical order: P[b, k, order[b, k]] = 1 for real slots."""
    p = torch.nn.functional.one_hot(order, order.shape[1]).to(dtype)
    return p * mask[:, :, None]


def entropy_penalty(p_soft: torch.Tensor, mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean entropy of the rows and of the (normalised) columns of P_soft: 0 for a permutation."""
    rows = -(p_soft * (p_soft + eps).log()).sum(-1)
    cols_p = p_soft / p_soft.sum(1, keepdim=True).clamp_min(eps)
    cols = -(cols_p * (cols_p + eps).log()).sum(1)
    m = mask.to(p_soft.dtype)
    return ((rows * m).sum() + (cols * m).sum()) / (2 * m.sum())
