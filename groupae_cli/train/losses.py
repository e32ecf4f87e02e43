"""The training objective: reconstruction through the predicted group element, element
cross-entropy, the entropy penalty on P_soft, and (early on) a Hungarian-matched reconstruction
that teaches the score head the order the decoder uses."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from groupae_cli.data import POSITIONS, TYPES
from groupae_cli.models.permutation import entropy_penalty

_EPS = 1e-9


def decoded_in_input_frame(out: dict) -> torch.Tensor:
    """The decoded slots moved into the input's frame: Y R^T + t, (B, N, 3), still in slot order."""
    return out["y"] @ out["rotation"].transpose(1, 2) + out["translation"][:, None]


@torch.no_grad()
def hungarian_slots(out: dict, batch: dict) -> torch.Tensor:
    """For every structure, the slot each input atom is best matched to (B, N local indices; -1 pad).

    The cost of atom i in slot k is the squared distance between the atom and the decoded slot
    (in the input's frame) plus the slot's negative log-probability of the atom's element.
    """
    layout = out["layout"]
    world = decoded_in_input_frame(out).double().cpu().numpy()
    logp = torch.log_softmax(out["type_logits"].double(), -1).cpu().numpy()
    x = layout.to_dense(batch[POSITIONS]).double().cpu().numpy()
    types = layout.to_dense(batch[TYPES]).cpu().numpy()
    slots = np.full(x.shape[:2], -1, dtype=np.int64)
    for b, n in enumerate(layout.n_atoms.tolist()):
        cost = ((world[b, :n, None, :] - x[b, None, :n, :]) ** 2).sum(-1) - logp[b, :n][:, types[b, :n]]
        k, i = linear_sum_assignment(cost)
        slots[b, i] = k
    return torch.as_tensor(slots, device=layout.mask.device)


def structure_rmsd(per_atom_sq: torch.Tensor, layout, eps: float = 0.0) -> torch.Tensor:
    """Each structure's RMSD (B,) from the atoms' squared errors (A,); `eps` under the root keeps
    its gradient finite at zero."""
    return (layout.pool(per_atom_sq) / layout.n_atoms.to(per_atom_sq.dtype) + eps).sqrt()


def distance_error(out: dict, batch: dict, cutoff: float) -> torch.Tensor:
    """Mean squared error (Å^2) of the decoded distances between atoms closer than `cutoff` in the
    input; both in the input's atom order, so frame and order play no part."""
    layout = out["layout"]
    x, x_hat = layout.to_dense(batch[POSITIONS]), layout.to_dense(out["reconstruction"])
    true = torch.cdist(x, x)
    pairs = (true < cutoff) & layout.mask[:, :, None] & layout.mask[:, None, :]
    pairs &= ~torch.eye(layout.n_max, dtype=torch.bool, device=x.device)
    b, i, j = pairs.nonzero(as_tuple=True)
    got = (((x_hat[b, i] - x_hat[b, j]) ** 2).sum(-1) + 1e-12).sqrt()  # safe where decoded atoms coincide
    return ((got - true[b, i, j]) ** 2).mean() if len(b) else got.sum()


def objective(out: dict, batch: dict, type_weight: float, entropy_weight: float,
              match_weight: float = 0.0, distance_weight: float = 0.0, distance_cutoff: float = 3.0,
              frame_weight: float = 0.0, frame_floor: float = 0.1,
              recon_loss: str = "mse") -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, parts) for one batch. Squared errors are per atom, in Å^2; with `recon_loss` "rmsd" the
    reconstruction term is the mean of the structures' RMSDs (Å), with "distance" the mean of the
    atoms' distances from their places (Å), instead of the mean squared error."""
    layout = out["layout"]
    mask = layout.mask
    x, types = batch[POSITIONS], batch[TYPES]
    per_atom = ((out["reconstruction"] - x) ** 2).sum(-1)
    sq = per_atom.mean()
    recon = sq
    if recon_loss == "rmsd":
        recon = structure_rmsd(per_atom, layout, _EPS).mean()
    elif recon_loss == "distance":
        recon = (per_atom + _EPS).sqrt().mean()
    probs = torch.einsum("bki,bkc->bic", out["p"], torch.softmax(out["type_logits"], -1))  # per input atom
    type_nll = -(layout.to_flat(probs).gather(1, types[:, None]) + _EPS).log().mean()
    loss = recon + type_weight * type_nll
    parts = {"recon_sq": sq.item(), "type_nll": type_nll.item()}
    if distance_weight:
        dist = distance_error(out, batch, distance_cutoff)
        loss = loss + distance_weight * dist
        parts["distance_sq"] = dist.item()
    if frame_weight:
        learned = ~out["frame_degenerate"]  # anchor frames do not depend on the learned vectors
        shortfall = (torch.relu(frame_floor - out["frame_conditioning"]) / frame_floor)[learned]
        frame = shortfall.mean() if len(shortfall) else shortfall.sum()
        loss = loss + frame_weight * frame
        parts["frame"] = frame.item()
    if "p_soft" in out and entropy_weight:
        ent = entropy_penalty(out["p_soft"], mask)
        loss = loss + entropy_weight * ent
        parts["entropy"] = ent.item()
    if match_weight > 0:
        slots = hungarian_slots(out, batch)  # (B, N): slot of each input atom
        safe = slots.clamp_min(0)
        world = decoded_in_input_frame(out)
        matched = world.gather(1, safe[:, :, None].expand(-1, -1, 3))  # the slot each atom is matched to
        dense_x = layout.to_dense(x)
        m_sq = (((matched - dense_x) ** 2).sum(-1) * mask).sum() / mask.sum()
        logits = out["type_logits"].gather(1, safe[:, :, None].expand(-1, -1, out["type_logits"].shape[-1]))
        m_type = torch.nn.functional.cross_entropy(logits[mask], layout.to_dense(types)[mask])
        # the score head learns to send each atom to its matched slot: P_soft[slot(i), i] -> 1
        rank = m_sq.new_zeros(())
        if "p_soft" in out:
            p_at = out["p_soft"].gather(1, safe[:, None, :]).squeeze(1)  # P_soft[b, slot(i), i]
            rank = -((p_at + _EPS).log() * mask).sum() / mask.sum()
        loss = (1 - match_weight) * loss + match_weight * (m_sq + type_weight * m_type + rank)
        parts.update(match_sq=m_sq.item(), rank_nll=rank.item())
    parts["loss"] = loss.item()
    return loss, parts
