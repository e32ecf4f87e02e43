"""The permutation head: invariant per-atom scores -> a canonical atom order.

Conventions (DESIGN §1): `order[b, k]` is the input atom in canonical slot k; as a matrix,
P[b, k, i] = 1 when order[b, k] == i. Input atom i goes to slot rank(i); the reconstruction takes
slot rank(i) back to atom i (X_hat = P^T Y). Renumbering the input by sigma gives
P(sigma X) = P(X) sigma^-1, so P(X) X is the same sequence for every numbering.

The canonical order is element-major: atoms sorted by element, then by score (an invariant function of
the atom's environment), so slots of one element are contiguous and only atoms of the same element
compete for a slot. Training relaxes P: P_soft[k, i] = softmax over atoms i of slot k's element of
-|s_i - s_(k)| / tau, optionally straight-through (hard forward, soft gradient). Inference sorts:
exactly equivariant, deterministic, padded atoms last.
"""

from __future__ import annotations

import torch
from torch import nn

from groupae_cli.models.heads import mlp

#: a fixed, generic direction: projecting canonical coordinates on it breaks ties between atoms of
#: equal score and element in a way that is itself equivariant (it lives in the canonical frame)
_TIE_DIRECTION = (0.7236068, 0.5257311, 0.4472136)


class ScoreHead(nn.Module):
    """s_i = a . c_i + MLP(invariants_i, c_i), with c_i = (x_i - t) R the atom's canonical coordinates.

    Both inputs are SE(3)-invariant (R is equivariant), so the score is too, and it is computed
    per atom, so renumbering only renumbers scores. The linear term starts the order as a sweep
    along a direction of the canonical frame: slots that are neighbours in space from the first
    step, which the decoder can learn; the MLP (zero at the start) refines it.
    """

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.net = mlp([in_dim + 3, hidden, hidden, 1])
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.direction = nn.Parameter(torch.tensor([1.0, 0.1, 0.01]))

    def forward(self, invariants: torch.Tensor, canonical: torch.Tensor) -> torch.Tensor:
        return canonical @ self.direction + self.net(torch.cat([invariants, canonical], dim=-1)).squeeze(-1)


def slot_of_atoms(order: torch.Tensor) -> torch.Tensor:
    """The inverse of a canonical order (B, N): the slot each input atom holds."""
    slots = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, slots)


def hydrogens_follow_parents(scores: torch.Tensor, types: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                             hydrogen: int, tie_tol: float) -> torch.Tensor:
    """Scores (B, N) under which each hydrogen sorts by its parent's canonical slot, then by its own score.

    A hydrogen's parent is its nearest atom that is not a hydrogen, of equally near ones the one in
    the earlier slot (an invariant choice, equivariant under renumbering). Its new score is the
    parent's slot plus 0.4 tanh(own score): the hydrogens of one parent stay together, in their
    parents' canonical order, and compete among themselves as before. Other atoms, and hydrogens of
    structures with no other atom, keep their scores.
    """
    is_h = (types == hydrogen) & mask
    heavy = (types != hydrogen) & mask
    if not (is_h.any() and heavy.any()):
        return scores
    order, _ = canonical_order(scores, types, positions, mask, tie_tol)  # heavy slots do not depend on H
    slot_of = slot_of_atoms(order)
    dist = torch.cdist(positions, positions).masked_fill(~heavy[:, None, :], float("inf"))
    # parents tied in distance (a bridging hydrogen): the one in the earlier slot, whatever the numbering
    nearest = dist <= dist.amin(-1, keepdim=True) * (1 + 1e-6) + 1e-9
    parent_slot = slot_of[:, None, :].expand_as(dist).masked_fill(~nearest, order.shape[1]).amin(-1)  # (B, N)
    has_parent = heavy.any(1, keepdim=True) & is_h
    key = parent_slot.to(scores.dtype) + 0.4 * torch.tanh(scores)
    return torch.where(has_parent, key, scores)


def _stable_argsort(key: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Re-sort `order` (B, N) stably by key[order]."""
    return order.gather(1, torch.sort(key.gather(1, order), dim=1, stable=True).indices)


def _by_type_then_score(scores: torch.Tensor, types: torch.Tensor, mask: torch.Tensor):
    """(order, sorted scores, sorted types) of atoms sorted by element, then score; padding last."""
    big = torch.finfo(scores.dtype).max / 4
    order = torch.sort(scores.masked_fill(~mask, big), dim=1, stable=True).indices
    order = _stable_argsort(types.masked_fill(~mask, torch.iinfo(types.dtype).max), order)
    return order, scores.gather(1, order), types.gather(1, order)


def canonical_order(scores: torch.Tensor, types: torch.Tensor, canonical: torch.Tensor, mask: torch.Tensor,
                    tie_tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard canonical order (B, N) and the number of tied score pairs per structure (B,).

    Atoms are sorted by element, then by score. Atoms of one element whose scores lie within
    `tie_tol` form a tie group, ordered by their position along a fixed direction in the canonical
    frame (`canonical`, (B, N, 3): (X - t) R, in input order). Padded atoms (mask False) come last.
    """
    order, s, t = _by_type_then_score(scores, types, mask)
    valid = mask.gather(1, order)
    tied = (s.diff(dim=1).abs() <= tie_tol) & (t.diff(dim=1) == 0) & valid[:, 1:]
    group_sorted = torch.cat([torch.zeros_like(tied[:, :1], dtype=torch.long), (~tied).long().cumsum(1)], dim=1)
    group = torch.empty_like(group_sorted).scatter_(1, order, group_sorted)
    direction = canonical.new_tensor(_TIE_DIRECTION)
    final = torch.sort(canonical @ direction, dim=1, stable=True).indices
    final = _stable_argsort(group, final)
    return final, tied.sum(1)


def soft_permutation(scores: torch.Tensor, types: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """P_soft (B, N, N): row k is a softmax, over the atoms i of slot k's element, of
    -|s_i - s_(k)| / tau, where slot k holds the k-th atom in (element, score) order."""
    _, sorted_s, sorted_t = _by_type_then_score(scores, types, mask)
    allowed = (sorted_t[:, :, None] == types[:, None, :]) & mask[:, None, :] & mask[:, :, None]
    logits = -(sorted_s[:, :, None] - scores[:, None, :]).abs() / tau
    logits = logits.masked_fill(~allowed, float("-inf")).masked_fill(~mask[:, :, None], 0.0)
    return torch.softmax(logits, dim=-1) * mask[:, :, None]


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
