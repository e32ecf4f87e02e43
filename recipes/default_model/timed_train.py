"""Train one design on the default recipe's data within a wall-clock deadline (a GPU lease).

A timing probe (real training steps of this design at this batch size, on 4,000 random records)
sizes epoch_size so that `--epochs` epochs end before the deadline; then `train_from_files` runs
exactly as `groupae train` would, with config.yaml's train settings overridden by the design's and
by --batch-size / --lr / --epochs. The run directory gets `timed.json` (the probe's figures, the
card, the settings) beside what `groupae train` writes.

    python recipes/default_model/timed_train.py DESIGN.yaml RUN_DIR --deadline UNIX_TIME \
        --batch-size 256 --lr 0.003 [--epochs 8] [--device cuda] [--init default] [--split name]
        [--warmup-epochs 0] [--tau 0.025]

The inputs are the recipe's files as XYZ (`to_xyz.py`): the machine it ran on had no RDKit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

INPUTS = ["data/default_model/qm9.xyz.gz", "data/default_model/druglike.xyz.gz"]  # to_xyz.py
RECIPE = Path(__file__).resolve().parent / "config.yaml"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("design", type=Path)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--deadline", type=float, required=True)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--device", default="cuda")
    p.add_argument("--inputs", nargs="+", default=INPUTS, help="structure files (default: the recipe's, as XYZ)")
    p.add_argument("--split", choices=("random", "name"), default=None, help="how molecules are held out (TrainConfig."
                   "split; default: the recipe's). 'name' keeps a molecule's side when files are added")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights and model (groupae train "
                   "--init): e.g. 'default', to add a lease's steps to the shipped model")
    p.add_argument("--warmup-epochs", type=int, default=None, help="TrainConfig.warmup_epochs (default: the "
                   "recipe's, 1); 0 starts at --lr, as a run's continuation should")
    p.add_argument("--tau", type=float, default=None, help="hold the relaxed permutation's tau here (default: "
                   "anneal 0.1 to 0.02; a continuation keeps the 0.02 its run ended at)")
    p.add_argument("--pace", type=float, default=1.0, help="the real loop's step time over the probe's, where runs "
                   "share the GPU (e.g. 1.2)")
    args = p.parse_args()
    t0 = time.time()

    import torch

    from groupae_cli.io import read_structures
    from groupae_cli.models import preset
    from groupae_cli.models.config import ORGANIC
    from groupae_cli.train import TrainConfig, Trainer, model_elements, train_from_files
    from groupae_cli.train.dataset import (
        Batches,
        StructureSet,
        epoch_batches,
        fixed_batches,
    )
    from groupae_cli.train.metrics import evaluate

    design = yaml.safe_load(args.design.read_text()) or {}
    recipe = yaml.safe_load(RECIPE.read_text())
    model_dict = {**recipe["model"], **(design.get("model") or {})}
    train_dict = {**recipe["train"], **(design.get("train") or {}), "batch_size": args.batch_size, "lr": args.lr,
                  "epochs": args.epochs} | ({"split": args.split} if args.split else {}) \
        | ({"warmup_epochs": args.warmup_epochs} if args.warmup_epochs is not None else {}) \
        | ({"tau_start": args.tau, "tau_end": args.tau} if args.tau else {})
    model_config = preset(design.get("preset", "small"), **{"elements": ORGANIC, **model_dict})
    if args.init:
        from groupae_cli.io.checkpoint import read_checkpoint
        from groupae_cli.models import ModelConfig

        model_config = ModelConfig.from_dict(read_checkpoint(args.init)["config"])
        model_dict = model_config.to_dict()

    # --- probe: real steps of this design at this batch size -------------------------------------
    start = time.perf_counter()
    full = StructureSet.from_structures([s for path in args.inputs for s in read_structures(path)])
    parse_s = time.perf_counter() - start
    if not args.init:  # the elements the inputs hold, as train_from_files will set them (Si, Se: sise.xyz.gz)
        model_config = model_config.replace(elements=model_elements(full))
    # enough records for the probe's steps: with fewer, an epoch of them holds fewer batches than asked
    # (epoch_batches uses each record once), and the time per step came out 2.5x too short at batch
    # 256 (the third lease), 10x at 1024
    pool = min(len(full), max(4000, 60 * args.batch_size))
    data, idx = full, np.sort(np.random.default_rng(0).choice(len(full), pool, replace=False))
    probe_dir = Path(f"/tmp/probe_{args.run_dir.name}")

    def run(steps: int) -> float:
        """Seconds per step over `steps` training steps (fewer where the data hold fewer batches)."""
        cfg = TrainConfig(**{**train_dict, "epochs": 1, "epoch_size": steps * args.batch_size, "val_size": 0})
        batches = epoch_batches(idx, data.sizes, args.batch_size, 0, 0, epoch_size=steps * args.batch_size)
        trainer = Trainer(model_config, cfg, probe_dir, lambda e: Batches(data, batches, model_config.elements),
                          list, device=args.device, quiet=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_epoch(0)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / len(batches)

    run(10)  # warm-up: kernels, allocator
    step_s = run(15 if args.device != "cuda" else 40)
    val = Batches(data, list(fixed_batches(idx[:512], args.batch_size)), model_config.elements)
    probe_model = Trainer(model_config, TrainConfig(**{**train_dict, "epochs": 1}), probe_dir, lambda e: [],
                          list, device=args.device, quiet=True).model
    start = time.perf_counter()
    evaluate(probe_model, [{k: v.to(args.device) for k, v in b.items()} for b in val], seed=0)
    val_s = (time.perf_counter() - start) * recipe["train"]["val_size"] / 512
    left = args.deadline - time.time() - 1.2 * parse_s - args.epochs * val_s - 20
    steps = max(args.epochs, int(left / (1.05 * args.pace * step_s)))
    epoch_size = steps // args.epochs * args.batch_size
    timings = {"probe_started": t0, "parse_seconds": parse_s, "step_seconds": step_s, "pace": args.pace, "validation_seconds": val_s, "steps": steps,
               "epoch_size": epoch_size, "samples": epoch_size * args.epochs, "device": args.device,
               "card": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
               "design": str(args.design), "train": {**train_dict, "epoch_size": epoch_size}, "model": model_dict}
    print(json.dumps(timings), file=sys.stderr, flush=True)

    # --- the run ---------------------------------------------------------------------------------
    args.run_dir.mkdir(parents=True, exist_ok=True)
    (args.run_dir / "timed.json").write_text(json.dumps(timings, indent=1))
    config = TrainConfig.from_dict({**train_dict, "epoch_size": epoch_size})
    start = time.time()
    train_from_files(args.inputs, args.run_dir, model_config, config, device=args.device, quiet=False, init=args.init)
    timings["train_seconds"] = time.time() - start
    (args.run_dir / "timed.json").write_text(json.dumps(timings, indent=1))


if __name__ == "__main__":
    main()
