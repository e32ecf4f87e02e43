"""Distil a shipped model into a cheaper encoder (fewer layers, shorter cutoff).

    python recipes/default_model/distill.py RUN_DIR [--data runs/default_sise] [--layers 2] [--cutoff 4.0] [--identity K]

The student is the teacher's config with `--layers` message-passing layers and a `--cutoff` Å
radius graph. It starts from the teacher's weights: every head, the decoder, and the encoder
layers `--keep` (by default the first and the last, so the heads still read what the teacher's
last layer wrote). `avg_neighbors` is scaled by the ratio of the mean neighbour counts at the two
cutoffs on the training data, so each message sum starts at the teacher's scale.

`--identity K` gives the student a z whose first K entries are frame-free (`embedding_identity`),
not the teacher's share: it starts from the block of z the two share (`resized`: grown, z's first
entries start exactly as the teacher's; shrunk, its last ones). `--z-entries N` pulls only z's
first N entries onto the teacher's.

The loss is the recipe's own (reconstruction RMSD through the student's group element) plus terms
that pull the student's outputs onto the teacher's on the same batch: z (each entry over the
teacher's spread), the rotation, and the permutation scores (over their spread). The teacher runs
in float32, without gradients. `--data` holds `cache.npz` and `split.json` of the teacher's run
(`groupae train` on the recipe's three files with config.yaml writes them), so the held-out
molecules stay held out. The shipped default is such a student of `default-v1` (the three-layer,
5 Å model trained on an H100): it embeds about 1,000 drug-like records/s on 2 cores where its
teacher does about 610 (issue 12; bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from groupae_cli.data import BATCH, N_ATOMS, POSITIONS, to_device
from groupae_cli.device import resolve_device
from groupae_cli.io.checkpoint import load_model, read_checkpoint
from groupae_cli.models.config import ModelConfig
from groupae_cli.models.graph import Layout, build_edges
from groupae_cli.train import TrainConfig
from groupae_cli.train.dataset import (
    Batches,
    StructureSet,
    epoch_batches,
    fixed_batches,
)
from groupae_cli.train.loop import Trainer


def mean_neighbours(batches, cutoff: float) -> float:
    edges = atoms = 0
    for batch in batches:
        layout = Layout(batch[BATCH], batch[N_ATOMS])
        src, _ = build_edges(batch[POSITIONS], layout, "radius", cutoff, 8)
        edges, atoms = edges + len(src), atoms + len(batch[POSITIONS])
    return edges / atoms


def student_weights(teacher: dict, keep: list[int]) -> dict:
    """The teacher's state dict with encoder layer keep[k] renamed to layer k, other layers dropped."""
    out = {}
    for name, value in teacher.items():
        if name.startswith("encoder.interactions."):
            layer, rest = name[len("encoder.interactions."):].split(".", 1)
            if int(layer) not in keep:
                continue
            name = f"encoder.interactions.{keep.index(int(layer))}.{rest}"
        out[name] = value
    return out


OUTPUT_LAYER = 2  # an MLP's output layer in heads.mlp([a, b, c]): Linear, SiLU, Linear


def resized(student: dict, weights: dict) -> dict:
    """`weights` fitted to the student's shapes, for a student whose z splits differently
    (`--identity`). A tensor of another shape keeps the student's own start outside the block it
    shares with the teacher's: leading hidden units, leading outputs of the frame-free MLP (z's
    first entries) and trailing outputs of the canonical-frame MLP (z's last entries). Hidden units
    the teacher lacks feed the shared outputs nothing, so z's first entries start exactly as the
    teacher's when the frame-free part grows."""
    out = dict(weights)
    tail = (f"embedding.net.{OUTPUT_LAYER}.weight", f"embedding.net.{OUTPUT_LAYER}.bias")
    for name, value in weights.items():
        new = student[name].clone()
        if new.shape == value.shape:
            continue
        n = min(len(new), len(value))
        rows, old_rows = (slice(len(new) - n, None), slice(len(value) - n, None)) if name in tail else (slice(n),) * 2
        if new.ndim == 1:
            new[rows] = value[old_rows]
        else:
            cols = min(new.shape[1], value.shape[1])
            new[rows, :cols] = value[old_rows, :cols]
            new[rows, cols:] = 0
        out[name] = new
    return out


class Distillation:
    """(out, batch) -> (the distillation terms, their parts), for Trainer(extra_loss=...)."""

    def __init__(self, teacher, z_weight: float, rotation_weight: float, score_weight: float, calibration,
                 z_entries: int | None = None):
        self.teacher, self.z_entries = teacher, z_entries
        self.weights = z_weight, rotation_weight, score_weight
        with torch.no_grad():
            outs = [teacher.encode(b) for b in calibration]
        self.z_spread = torch.cat([o["z"] for o in outs]).std(0).clamp_min(1e-3)
        self.score_spread = torch.cat([o["scores"] for o in outs]).std().clamp_min(1e-3)

    def __call__(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            target = self.teacher.encode(batch)
        n = self.z_entries
        z = (((out["z"][:, :n] - target["z"][:, :n]) / self.z_spread[:n]) ** 2).mean()
        learned = ~(out["frame_degenerate"] | target["frame_degenerate"])
        rotation = ((out["rotation"] - target["rotation"]) ** 2).sum((1, 2))[learned]
        rotation = rotation.mean() if len(rotation) else rotation.sum()
        scores = (((out["scores"] - target["scores"]) / self.score_spread) ** 2).mean()
        wz, wr, ws = self.weights
        return wz * z + wr * rotation + ws * scores, {"distil_z": z.item(), "distil_rotation": rotation.item(),
                                                       "distil_scores": scores.item()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data", type=Path, default=Path("runs/default_sise"), help="folder with cache.npz and split.json")
    p.add_argument("--teacher", default="default-v1",
                   help="a checkpoint or shipped model's name (default-v1: the teacher of today's default)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--cutoff", type=float, default=4.0)
    p.add_argument("--identity", type=int, default=None,
                   help="the student's embedding_identity (z's frame-free entries; default: the teacher's)")
    p.add_argument("--keep", type=int, nargs="+", default=None,
                   help="the teacher's encoder layers the student starts from (default: the first and the last)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--epoch-size", type=int, default=16_000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--z-weight", type=float, default=1.0)
    p.add_argument("--z-entries", type=int, default=None,
                   help="pull only z's first N entries onto the teacher's (default: all)")
    p.add_argument("--rotation-weight", type=float, default=1.0)
    p.add_argument("--score-weight", type=float, default=0.1)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--device", default="cpu", help="where teacher and student run: cpu, cuda[:i] or auto")
    args = p.parse_args()
    device = resolve_device(args.device)

    data = StructureSet.load(args.data / "cache.npz")
    split = json.loads((args.data / "split.json").read_text())
    train_idx, val_idx = np.array(split["train"]), np.array(split["validation"])
    start = read_checkpoint(args.teacher)
    teacher_config = ModelConfig.from_dict(start["config"])
    keep = args.keep or [0, teacher_config.layers - 1][: args.layers]
    if len(keep) != args.layers:
        raise SystemExit(f"--keep names {len(keep)} layers; the student has {args.layers}")
    elements = teacher_config.elements
    sample = Batches(data, list(fixed_batches(np.sort(np.random.default_rng(5).choice(train_idx, 640, replace=False)),
                                              64)), elements)
    sample = list(sample)
    ratio = mean_neighbours(sample, args.cutoff) / mean_neighbours(sample, teacher_config.cutoff)
    identity = teacher_config.embedding_identity if args.identity is None else args.identity
    config = teacher_config.replace(layers=args.layers, cutoff=args.cutoff, embedding_identity=identity,
                                    avg_neighbors=teacher_config.avg_neighbors * ratio)
    print(f"student: {args.layers} layers from the teacher's {keep}, cutoff {args.cutoff} Å, "
          f"avg_neighbors {config.avg_neighbors:.2f} (neighbours x{ratio:.3f}), "
          f"z {identity} frame-free + {config.embedding_dim - identity}", file=sys.stderr)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, epoch_size=args.epoch_size,
                        val_size=args.val_size, seed=0, recon_loss="rmsd", warmup_epochs=0,
                        tau_start=0.02, tau_end=0.02)
    val = np.sort(np.random.default_rng([train.seed, 2]).choice(val_idx, train.val_size, replace=False))

    def train_batches(epoch):
        return Batches(data, epoch_batches(train_idx, data.sizes, train.batch_size, train.seed, epoch,
                                           epoch_size=train.epoch_size), elements)

    def val_batches():
        return Batches(data, list(fixed_batches(val, 64)), elements)

    teacher = load_model(args.teacher).float().eval().to(device)
    for weight in teacher.parameters():
        weight.requires_grad_(False)
    distil = Distillation(teacher, args.z_weight, args.rotation_weight, args.score_weight,
                          [to_device(b, device) for b in sample], args.z_entries)
    trainer = Trainer(config, train, args.run_dir, train_batches, val_batches, device=args.device, extra_loss=distil,
                      extra_state={"teacher": str(args.teacher), "keep": keep, "z_entries": args.z_entries,
                                   "recipe": "recipes/default_model/distill.py"})
    trainer.model.load_state_dict(resized(trainer.model.state_dict(), student_weights(start["state_dict"], keep)))
    if (args.run_dir / "last.ckpt").exists():
        trainer.resume(args.run_dir / "last.ckpt")
    trainer.fit()


if __name__ == "__main__":
    main()
