"""Validation figures of a trained default model on its held-out molecules, QM9, drug-like and Si/Se apart.

Reads the run directory that `groupae train` wrote (cache.npz, split.json) and a checkpoint, and
evaluates every held-out structure (molecules the model never saw: the split is by molecule) in
the model's inference precision (float32, or float64 where its config says so), as users get it:

- reconstruction RMSD (Å) after encode + decode, next to the trivial baseline (every atom at the
  predicted centroid);
- element accuracy of the decoded element logits;
- canonical-order agreement: the share of slots that hold the same atom for a structure and a
  randomly rotated, translated and renumbered copy of it (1 = the learned order is a function of
  the structure alone; below 1 only where scores nearly tie);
- invariance error: max |z(gX) - z(X)| / max |z(X)| over the same copies;
- the share of frames flagged degenerate, and median RMSD per molecule size.

With `--fit-steps K` every figure is taken with z fitted to each structure by K steps through the
decoder (`groupae reconstruct --fit-steps K`).

    python recipes/default_model/evaluate.py --run runs/default --model runs/default/best.ckpt \
        --json recipes/default_model/validation.json

Prints a Markdown table (the one in recipes/default_model/README.md and bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from groupae_cli.io.checkpoint import load_model, resolve_model_path, sha256
from groupae_cli.models.symmetry import GroupElement, symmetry_errors
from groupae_cli.train.dataset import StructureSet, fixed_batches
from groupae_cli.train.metrics import all_structures, size_table

SETS = ("QM9", "drug-like", "Si/Se")


def source_of(name: str, numbers: np.ndarray) -> str:
    """QM9, drug-like, or Si/Se (a record with silicon or selenium: sise.sdf.gz)."""
    if np.isin(numbers, (14, 34)).any():
        return "Si/Se"
    return "QM9" if name.startswith("qm9_") else "drug-like"


def sources(data: StructureSet, indices: np.ndarray) -> np.ndarray:
    """The set (`source_of`) of each record of `data` at `indices`."""
    return np.array([source_of(str(data.names[i]), data.numbers[data.offsets[i] : data.offsets[i + 1]])
                     for i in indices])


def evaluate_set(model, data: StructureSet, indices: np.ndarray, batch_size: int, seed: int,
                 invariance_batches: int = 0) -> dict:
    """The figures of one held-out set; the order and invariance on random copies of the first
    `invariance_batches` batches (0: of all)."""
    elements = model.config.elements
    batches = [data.batch(chunk, elements, model.dtype) for chunk in fixed_batches(indices, batch_size)]
    cat = all_structures(model, batches)
    generator = torch.Generator().manual_seed(seed)
    sym = []
    checked = batches[:invariance_batches] if invariance_batches else batches
    with torch.no_grad():
        for batch in checked:
            sym.append(symmetry_errors(model, batch, GroupElement.random(batch, generator=generator)))
    atoms = cat["n_atoms"]
    rmsd = cat["rmsd"]
    return {
        "structures": len(rmsd),
        "atoms_median": float(np.median(atoms)),
        "atoms_max": int(atoms.max()),
        "rmsd_mean": float(rmsd.mean()),
        "rmsd_median": float(np.median(rmsd)),
        "rmsd_p90": float(np.percentile(rmsd, 90)),
        "baseline_rmsd_mean": float(cat["baseline_rmsd"].mean()),
        "element_acc": float((cat["element_acc"] * atoms).sum() / atoms.sum()),
        "order_agreement": float(np.average([s["order_agreement"] for s in sym],
                                            weights=[len(b["n_atoms"]) for b in checked])),
        "invariance_structures": sum(len(b["n_atoms"]) for b in checked),
        "invariance_max": float(max(s["z_relative"] for s in sym)),
        "degenerate_frames": int(sum(s["degenerate_frames"] for s in sym)),
        "by_size": size_table(cat),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/default"), help="run directory of groupae train")
    parser.add_argument("--model", default=None, help="checkpoint (default: RUN/best.ckpt)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=0, help="at most this many held-out structures per set (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--write-heldout", type=Path, default=None,
                        help="also write --heldout-count held-out structures per set here (XYZ), for the tests")
    parser.add_argument("--heldout-count", type=int, default=16)
    parser.add_argument("--fit-steps", type=int, default=0, help="fit z to each structure by this many steps")
    parser.add_argument("--invariance-batches", type=int, default=0,
                        help="check order and invariance on the first N batches of each set (0: all)")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=SETS, help="the held-out sets to evaluate")
    args = parser.parse_args(argv)

    model_path = resolve_model_path(args.model or args.run / "best.ckpt")  # a file, or a shipped name: default
    model = load_model(model_path, "cpu").eval()
    model.fit_steps = args.fit_steps
    data = StructureSet.load(args.run / "cache.npz")
    held_out = np.array(json.loads((args.run / "split.json").read_text())["validation"], dtype=np.int64)
    held_out_sets = sources(data, held_out)
    started = time.perf_counter()
    result = {"model": str(model_path), "model_sha256": sha256(model_path), "fit_steps": args.fit_steps, "sets": {}}
    for name in args.sets:
        chosen = held_out[held_out_sets == name]
        if args.limit:
            chosen = np.sort(np.random.default_rng(args.seed).permutation(chosen)[: args.limit])
        if len(chosen):
            result["sets"][name] = evaluate_set(model, data, chosen, args.batch_size, args.seed,
                                                args.invariance_batches)
            print(f"{name}: {len(chosen)} structures evaluated", file=sys.stderr)
    result["seconds"] = time.perf_counter() - started
    if args.write_heldout:
        from groupae_cli.io import Structure, write_structures

        args.write_heldout.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(args.seed + 1)
        picked = [i for name in SETS for i in
                  np.sort(rng.permutation(held_out[held_out_sets == name])[: args.heldout_count])]
        write_structures([Structure(data.numbers[data.offsets[i]:data.offsets[i + 1]].astype(np.int64),
                                    data.positions[data.offsets[i]:data.offsets[i + 1]], str(data.names[i]), "", k)
                          for k, i in enumerate(picked)], str(args.write_heldout))
        result["heldout_file"] = {"path": str(args.write_heldout), "per_set": args.heldout_count, "seed": args.seed + 1}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")

    print("| held-out set | structures | atoms (median / max) | RMSD mean / median / p90 (Å) | centroid baseline (Å) "
          "| element acc. | order agreement | invariance (max rel.) | degenerate frames |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, s in result["sets"].items():
        print(f"| {name} | {s['structures']:,} | {s['atoms_median']:.0f} / {s['atoms_max']} | {s['rmsd_mean']:.3f} / "
              f"{s['rmsd_median']:.3f} / {s['rmsd_p90']:.3f} | {s['baseline_rmsd_mean']:.3f} | {s['element_acc']:.4f} "
              f"| {s['order_agreement']:.4f} | {s['invariance_max']:.1e} | {s['degenerate_frames']} |")
    print()
    print("| held-out set | atoms | structures | RMSD median (Å) | element acc. |")
    print("|---|---|---|---|---|")
    for name, s in result["sets"].items():
        for row in s["by_size"]:
            print(f"| {name} | {row['atoms']} | {row['records']:,} | {row['rmsd_median']:.3f} | {row['element_acc']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
