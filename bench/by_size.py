"""Reconstruction and permutation accuracy per molecule size, for a training run's best model.

    python bench/by_size.py runs/sample            # validation and training records of the run

Prints a Markdown table per split: records, median RMSD (Å), element accuracy and permutation
accuracy (share of atoms sent to the slot that a Hungarian match of the decoded structure picks).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from groupae_cli.io.checkpoint import load_model
from groupae_cli.train.dataset import StructureSet, fixed_batches
from groupae_cli.train.metrics import by_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--checkpoint", default="best.ckpt")
    args = ap.parse_args()
    model = load_model(args.run / args.checkpoint)
    data = StructureSet.load(args.run / "cache.npz")
    split = json.loads((args.run / "split.json").read_text())
    for name in ("validation", "train"):
        indices = np.array(split[name], dtype=np.int64)
        batches = [data.batch(b, model.config.elements) for b in fixed_batches(indices, 32)]
        print(f"\n{name} ({len(indices)} records)\n")
        print("| atoms | records | median RMSD (Å) | element accuracy | permutation accuracy |")
        print("| --- | --- | --- | --- | --- |")
        for row in by_size(model, batches):
            print(f"| {row['atoms']} | {row['records']} | {row['rmsd_median']:.3f} | {row['element_acc']:.3f} "
                  f"| {row['perm_acc']:.3f} |")


if __name__ == "__main__":
    main()
