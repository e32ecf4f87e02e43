"""The decoded geometry with and without z fitted to each structure (`--fit-steps`).

model_quality.py's reconstruction figures (RMSD through the group element, matched RMSD, element
accuracy, share of bonds within 0.1 Å of their length) on the first N of its held-out QM9 and
drug-like structures, for each number of fit steps given, one model, its inference precision, one
thread. The probes and retrieval are left out: a fitted z's frame-free block is no longer frame-free.

    python bench/fit_quality.py --model default --split name --count 200 100 --steps 0 100

Prints a Markdown table, one row per set and number of steps.
"""

from __future__ import annotations

import argparse

import model_quality as mq
import torch

from groupae_cli.io.checkpoint import load_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="a checkpoint path or a shipped model's name")
    parser.add_argument("--split", choices=("random", "name"), default="name", help="as model_quality.py")
    parser.add_argument("--count", type=int, nargs=2, default=(200, 100), metavar=("QM9", "DRUG"))
    parser.add_argument("--steps", type=int, nargs="+", default=(0, 100), help="fit steps to compare")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    loaded = mq.load_data(mq.ROOT / "runs" / "model_quality")
    data = loaded["set"]
    sets = mq.subsets(data, args.split)
    model = load_model(args.model, "cpu").eval()
    print("| held-out set | structures | fit steps | RMSD median / mean (Å) | matched RMSD median (Å) "
          "| element acc. | bonds within 0.1 Å |")
    print("|---|---|---|---|---|---|---|")
    for key, name, count in (("held_qm9", "QM9", args.count[0]), ("held_drug", "drug-like", args.count[1])):
        for steps in args.steps:
            model.fit_steps = steps
            r = mq.reconstruction(model, data, loaded["bonds"], loaded["bond_offsets"], sets[key][:count], "cpu")
            print(f"| {name} | {r['structures']} | {steps} | {r['rmsd_median']:.3f} / {r['rmsd_mean']:.3f} "
                  f"| {r['matched_median']:.3f} | {r['element_acc']:.4f} | {r['bonds_within_0.1']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
