"""Validation figures: reconstruction RMSD, element accuracy, permutation accuracy, invariance."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise

import numpy as np
import torch

from groupae_cli.data import POSITIONS, TYPES
from groupae_cli.models.permutation import slot_of_atoms
from groupae_cli.models.symmetry import GroupElement, symmetry_errors
from groupae_cli.train.losses import hungarian_slots, structure_rmsd

SIZE_BINS = (0, 10, 20, 30, 45, 60, 100, 10**9)


@torch.no_grad()
def per_structure(model, batch: dict, out: dict | None = None) -> dict[str, np.ndarray]:
    """RMSD (Å), element accuracy and permutation accuracy of each structure, hard permutation
    (from `out`, the model's output for `batch`, when it is at hand)."""
    out = out if out is not None else model(batch)
    layout = out["layout"]
    sq = ((out["reconstruction"] - batch[POSITIONS]) ** 2).sum(-1)
    n = layout.n_atoms.to(sq.dtype)
    rmsd = structure_rmsd(sq, layout)
    baseline = structure_rmsd(((batch[POSITIONS] - out["translation"][batch["batch"]]) ** 2).sum(-1), layout)
    predicted = out["reconstruction_logits"].argmax(-1)
    elements = layout.pool((predicted == batch[TYPES]).to(sq.dtype)) / n
    # the slot the model sends each atom to, against the Hungarian-optimal slot for its own decoding
    rank = slot_of_atoms(out["order"])
    best = hungarian_slots(out, batch)
    agree = ((rank == best) & layout.mask).sum(1).to(sq.dtype) / n
    return {"rmsd": rmsd.cpu().numpy(), "baseline_rmsd": baseline.cpu().numpy(), "element_acc": elements.cpu().numpy(),
            "perm_acc": agree.cpu().numpy(), "n_atoms": layout.n_atoms.cpu().numpy()}


def all_structures(model, batches: Iterable[dict]) -> dict[str, np.ndarray]:
    """per_structure over every batch, concatenated (empty dict for no batches)."""
    rows: dict[str, list] = {}
    for batch in batches:
        for key, value in per_structure(model, batch).items():
            rows.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in rows.items()}


def evaluate(model, batches: Sequence[dict], invariance_batches: int = 1, seed: int = 0) -> dict[str, float]:
    """Aggregate figures over validation batches, plus symmetry errors on random copies."""
    was_training = model.training
    model.eval()
    cat = all_structures(model, batches)
    generator = torch.Generator().manual_seed(seed)
    inv = [symmetry_errors(model, batch, GroupElement.random(batch, generator=generator))
           for batch in batches[:invariance_batches]]
    model.train(was_training)
    if not cat:
        return {}
    weights = cat["n_atoms"]
    result = {
        "val_rmsd_mean": float(cat["rmsd"].mean()),
        "val_rmsd_median": float(np.median(cat["rmsd"])),
        "val_baseline_rmsd": float(cat["baseline_rmsd"].mean()),
        "val_element_acc": float((cat["element_acc"] * weights).sum() / weights.sum()),
        "val_perm_acc": float((cat["perm_acc"] * weights).sum() / weights.sum()),
        "val_perm_exact": float((cat["perm_acc"] == 1.0).mean()),
        "val_invariance": max(e["z_relative"] for e in inv) if inv else float("nan"),
        "val_order_agreement": float(np.mean([e["order_agreement"] for e in inv])) if inv else float("nan"),
    }
    return result


def by_size(model, batches: Iterable[dict]) -> list[dict]:
    """Median RMSD, element and permutation accuracy per molecule-size bin."""
    model.eval()
    return size_table(all_structures(model, batches))


def size_table(cat: dict[str, np.ndarray]) -> list[dict]:
    """Median RMSD, element and permutation accuracy per size bin of `all_structures` output."""
    table = []
    for lo, hi in pairwise(SIZE_BINS):
        sel = (cat["n_atoms"] > lo) & (cat["n_atoms"] <= hi)
        if sel.any():
            table.append({"atoms": f"{lo + 1}-{hi}" if hi < 10**9 else f">{lo}", "records": int(sel.sum()),
                          "rmsd_median": float(np.median(cat["rmsd"][sel])),
                          "element_acc": float(cat["element_acc"][sel].mean()),
                          "perm_acc": float(cat["perm_acc"][sel].mean())})
    return table
