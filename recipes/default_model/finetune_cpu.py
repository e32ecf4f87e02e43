"""Fine-tune the shipped default model on the RMSD loss, on CPU, from a run directory's parsed data.

    python recipes/default_model/finetune_cpu.py RUN_DIR [--data runs/default] [--epochs 3] [--init CKPT]

`--data` holds `cache.npz` and `split.json` as `groupae train` writes them for the recipe's files
(qm9.sdf.gz, then druglike.sdf.gz, split 0.1 with seed 0: the split the shipped model was trained
on, so its held-out molecules stay held out). The same as `groupae train <the recipe's files> -o
RUN_DIR --init default` with the settings below, without parsing the 140,960 records again.
The first candidate (bench/RESULTS.md, "Where the error sits") ran with the defaults, one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from groupae_cli.io.checkpoint import read_checkpoint
from groupae_cli.models.config import ModelConfig
from groupae_cli.train import TrainConfig
from groupae_cli.train.dataset import (
    Batches,
    StructureSet,
    epoch_batches,
    fixed_batches,
)
from groupae_cli.train.loop import Trainer


def mixed(data: StructureSet, indices: np.ndarray, weights: dict[str, str], seed: int = 0) -> np.ndarray:
    """`indices` with each set's records taken `weight` times (whole times, then a seeded share)."""
    from evaluate import SETS, sources

    unknown = set(weights) - set(SETS)
    if unknown:
        raise SystemExit(f"--mix: unknown set {sorted(unknown)}; the sets are {', '.join(SETS)}")
    sets = sources(data, indices)
    rng = np.random.default_rng([seed, 3])
    parts = []
    for name in SETS:
        mine = indices[sets == name]
        whole, share = divmod(float(weights.get(name, 1)), 1.0)
        parts += [mine] * int(whole) + [rng.choice(mine, round(share * len(mine)), replace=False)]
        print(f"{name}: {len(mine):,} training records, weight {float(weights.get(name, 1)):g}", file=sys.stderr)
    return np.sort(np.concatenate(parts))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data", type=Path, default=Path("runs/default"), help="folder with cache.npz and split.json")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--epoch-size", type=int, default=64_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-epochs", type=int, default=1, help="0: start at --lr and anneal (a run's continuation)")
    p.add_argument("--tau", type=float, default=None, help="hold the relaxed permutation's tau here (default: "
                   "anneal 0.1 to 0.02; a run's continuation keeps its final 0.02)")
    p.add_argument("--init", default="default", help="the checkpoint to start from (default: the shipped model)")
    p.add_argument("--refine-steps", type=int, default=None,
                   help="add this many learned refinements of z (ModelConfig.refine_steps) to the model; "
                        "they start at zero, so training starts from the checkpoint's own reconstructions")
    p.add_argument("--device", default="cpu", help="cpu, or cuda: the same fine-tune on a GPU lease, from the "
                   "same cache and split (no parsing, no timing probe)")
    p.add_argument("--mix", nargs="+", default=[], metavar="SET=WEIGHT",
                   help="weigh the training records of a set (QM9, drug-like, Si/Se, as evaluate.py sorts them): "
                        "each pass over the training records holds every record of the set WEIGHT times "
                        "(a fraction: that share of them, drawn with the seed), e.g. QM9=0.5 drug-like=4")
    args = p.parse_args()
    data = StructureSet.load(args.data / "cache.npz")
    split = json.loads((args.data / "split.json").read_text())
    train_idx, val_idx = np.array(split["train"]), np.array(split["validation"])
    if args.mix:
        train_idx = mixed(data, train_idx, dict(m.split("=", 1) for m in args.mix))
    start = read_checkpoint(args.init)
    model_config = ModelConfig.from_dict(start["config"])
    if args.refine_steps is not None:
        model_config = model_config.replace(refine_steps=args.refine_steps)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, epoch_size=args.epoch_size,
                         val_size=1000, seed=0, recon_loss="rmsd", warmup_epochs=args.warmup_epochs,
                         **({"tau_start": args.tau, "tau_end": args.tau} if args.tau else {}))
    val = np.sort(np.random.default_rng([config.seed, 2]).choice(val_idx, config.val_size, replace=False))

    def train_batches(epoch):
        return Batches(data, epoch_batches(train_idx, data.sizes, config.batch_size, config.seed, epoch,
                                           epoch_size=config.epoch_size), model_config.elements)

    def val_batches():
        return Batches(data, list(fixed_batches(val, 64)), model_config.elements)

    grown = args.refine_steps is not None
    trainer = Trainer(model_config, config, args.run_dir, train_batches, val_batches, device=args.device,
                      extra_state={"init": str(args.init), "recipe": "recipes/default_model/finetune_cpu.py"},
                      init=None if grown else args.init)
    if grown:  # the checkpoint's weights; only the new refiners (zero at the start) are not in it
        missing, unexpected = trainer.model.load_state_dict(start["state_dict"], strict=False)
        if unexpected or any(not name.startswith("refiners.") for name in missing):
            raise SystemExit(f"{args.init}: not the model grown by --refine-steps ({unexpected or missing})")
    if (args.run_dir / "last.ckpt").exists():
        trainer.resume(args.run_dir / "last.ckpt")
    trainer.fit()


if __name__ == "__main__":
    main()
