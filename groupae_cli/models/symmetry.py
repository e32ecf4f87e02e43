"""Random group elements of SE(3) x S_n, acting on batches, and the model's symmetry errors.

Used by the tests (the proof obligations of DESIGN §1), by validation during training
(invariance error on randomly transformed copies) and by benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from groupae_cli.data import BATCH, N_ATOMS, POSITIONS, TYPES


def random_rotations(n: int, dtype=torch.float64, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 3, 3) uniformly random proper rotations (QR of Gaussian matrices, det fixed to +1)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, dtype=torch.float64, generator=generator, device="cpu"))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q[:, :, 0] *= torch.linalg.det(q)[:, None]
    return q.to(dtype)


@dataclass
class GroupElement:
    """g = (R0, t0, sigma) for every structure of a batch: X -> sigma . (X R0^T + t0).

    `sigma` (A,) is global: atom j of the transformed batch is atom sigma[j] of the original,
    and it never crosses structures.
    """

    rotation: torch.Tensor  # (B, 3, 3)
    translation: torch.Tensor  # (B, 3)
    sigma: torch.Tensor  # (A,)

    @classmethod
    def random(cls, batch: dict[str, torch.Tensor], shift: float = 10.0, permute: bool = True,
               generator: torch.Generator | None = None) -> GroupElement:
        n_atoms = batch[N_ATOMS]
        dtype, device = batch[POSITIONS].dtype, batch[POSITIONS].device
        offsets = torch.cumsum(n_atoms, 0) - n_atoms
        # drawn on the CPU (a seeded CPU generator gives the same draw whatever the batch's device)
        pieces = [off + (torch.randperm(int(n), generator=generator, device="cpu") if permute
                         else torch.arange(int(n), device="cpu"))
                  for off, n in zip(offsets.tolist(), n_atoms.tolist())]
        shifts = shift * torch.randn(len(n_atoms), 3, dtype=torch.float64, generator=generator, device="cpu")
        return cls(random_rotations(len(n_atoms), dtype, generator).to(device), shifts.to(dtype).to(device),
                   torch.cat(pieces).to(device))

    def apply_points(self, x: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """sigma . (X R0^T + t0) for per-atom points x (A, 3) in the original numbering."""
        moved = torch.einsum("aij,aj->ai", self.rotation[batch_index], x) + self.translation[batch_index]
        return moved[self.sigma]

    def apply(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(batch)
        out[POSITIONS] = self.apply_points(batch[POSITIONS], batch[BATCH])
        out[TYPES] = batch[TYPES][self.sigma]
        return out


@torch.no_grad()
def symmetry_errors(model, batch: dict[str, torch.Tensor], g: GroupElement | None = None) -> dict[str, float]:
    """How far the model is from the contract on one random copy of each structure of `batch`.

    z: max |z(gX) - z(X)|; rotation: max |R(gX) - R0 R(X)| over frames not flagged degenerate;
    translation: max |t(gX) - (R0 t(X) + t0)|; canonical: max |C(gX) - C(X)| over non-degenerate
    structures; order_agreement: share of slots holding the same atom in both copies;
    reconstruction: max |X_hat(gX) - g X_hat(X)|. All in the batch's units (Å for molecules).
    """
    g = g or GroupElement.random(batch)
    moved = g.apply(batch)
    a, b = model(batch), model(moved)
    layout = a["layout"]
    ok = ~(a["frame_degenerate"] | b["frame_degenerate"])
    r_err = (b["rotation"] - g.rotation @ a["rotation"]).abs().amax(dim=(1, 2))
    t_err = (b["translation"] - (torch.einsum("bij,bj->bi", g.rotation, a["translation"]) + g.translation)).abs()
    c_err = (model.canonical_form(moved, b) - model.canonical_form(batch, a)).abs().amax(dim=(1, 2))
    # slot k of the copy holds copy atom order_b[k] = original atom sigma[order_b[k]]
    offsets = layout.offsets[:, None]
    same = (g.sigma[b["order"] * layout.mask + offsets] - offsets == a["order"]) & layout.mask
    x_err = (b["reconstruction"] - g.apply_points(a["reconstruction"], batch[BATCH])).abs()
    z_scale = a["z"].abs().max().clamp_min(1e-12)
    return {
        "z": float((b["z"] - a["z"]).abs().max()),
        "z_relative": float((b["z"] - a["z"]).abs().max() / z_scale),
        "rotation": float(r_err[ok].max()) if ok.any() else 0.0,
        "translation": float(t_err.max()),
        "canonical": float(c_err[ok].max()) if ok.any() else 0.0,
        "order_agreement": float(same.sum() / layout.mask.sum()),
        "reconstruction": float(x_err.max()),
        "degenerate_frames": int((~ok).sum()),
    }
