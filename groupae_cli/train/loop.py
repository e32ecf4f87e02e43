"""The training loop: AdamW with warm-up and cosine decay, tau annealing, gradient clipping,
validation each epoch, checkpoints, metrics.csv and learning_curves.png; DistributedDataParallel under torchrun."""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from groupae_cli.data import to_device
from groupae_cli.device import resolve_device
from groupae_cli.errors import UsageError
from groupae_cli.io.checkpoint import check_weights, read_checkpoint, save_checkpoint
from groupae_cli.io.formats import written_atomically
from groupae_cli.models import GroupAE, ModelConfig
from groupae_cli.models.symmetry import GroupElement
from groupae_cli.train.config import TrainConfig
from groupae_cli.train.losses import objective
from groupae_cli.train.metrics import evaluate

METRICS = ("epoch", "lr", "tau", "match_weight", "train_loss", "train_recon_rmsd", "val_rmsd_mean", "val_rmsd_median",
           "val_baseline_rmsd", "val_element_acc", "val_perm_acc", "val_perm_exact", "val_order_agreement",
           "val_invariance", "seconds")


class Distributed:
    """torch.distributed set up from torchrun's environment, or a single process."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if self.world == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def shard(self, batches: Sequence) -> Sequence:
        """This process's share; every process gets the same number of batches."""
        usable = len(batches) - len(batches) % self.world if len(batches) >= self.world else len(batches)
        return batches[self.rank : usable : self.world]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def ema_update(decay: float):
    """AveragedModel's multi_avg_fn for an exponential moving average with the usual warm-up: the
    decay at update n is min(decay, (1 + n) / (10 + n)), so early averages are not stuck at the
    first weights."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged) -> None:
        n = int(n_averaged)
        weight = 1.0 - min(decay, (1 + n) / (10 + n))
        for a, c in zip(averaged, current, strict=True):
            a.lerp_(c, weight)

    return update


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


class Trainer:
    """Trains a GroupAE from a batch source.

    `train_batches(epoch)` returns that epoch's list of training batches (dicts of tensors, the
    same list on every process); `val_batches()` the fixed validation batches.
    """

    def __init__(self, model_config: ModelConfig, config: TrainConfig, run_dir: str | Path,
                 train_batches: Callable[[int], Sequence[dict]], val_batches: Callable[[], Sequence[dict]],
                 device: str = "auto", quiet: bool = False, log: Callable[[str], None] | None = None,
                 extra_state: dict | None = None, dist: Distributed | None = None,
                 init: str | Path | None = None,
                 extra_loss: Callable[[dict, dict], tuple[torch.Tensor, dict[str, float]]] | None = None):
        self.config = config
        self.extra_loss = extra_loss  # (out, batch) -> (a term added to the loss, its parts): e.g. distillation
        self.run_dir = Path(run_dir)
        self.device = resolve_device(device)
        self.dist = dist or Distributed(self.device)
        self.quiet = quiet or not self.dist.main
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.train_batches, self.val_batches = train_batches, val_batches
        self.extra_state = extra_state or {}
        torch.manual_seed(config.seed)  # before the model is built: the same weights on every process
        np.random.seed(config.seed)
        self.model = GroupAE(model_config)
        if init is not None:  # a run that starts from a trained model's weights (--init)
            self._load_weights(read_checkpoint(init))
        self.model = self.model.to(self.device)
        self.ddp = self.dist.wrap(self.model, self.device)
        self.ema = None
        if config.ema:
            from torch.optim.swa_utils import AveragedModel

            self.ema = AveragedModel(self.model, multi_avg_fn=ema_update(config.ema))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.steps_per_epoch = max(1, len(self.dist.shard(train_batches(0))))
        total = config.epochs * self.steps_per_epoch
        warmup = config.warmup_epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, warmup, total))
        self.epoch = 0
        self.best = math.inf
        self.history: list[dict] = []

    # --- checkpoints ---------------------------------------------------------------------------

    @property
    def scored(self) -> torch.nn.Module:
        """The model that validation scores and checkpoints hold: the weights' moving average, if kept."""
        return self.model if self.ema is None else self.ema.module

    def _state(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "epoch": self.epoch, "best": self.best, "torch_rng": torch.get_rng_state()}
        if self.ema is not None:  # the checkpoint's weights are the average; these are the optimizer's
            state["train_weights"] = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            state["ema_updates"] = int(self.ema.n_averaged)
        return state

    def save(self, name: str, metrics: dict) -> None:
        training = {"epoch": self.epoch, "metrics": metrics, "train_config": self.config.to_dict(), **self.extra_state}
        save_checkpoint(self.run_dir / name, self.scored, training=training, state=self._state())

    def _load_weights(self, payload: dict) -> None:
        """A read checkpoint's weights into the model, checked against it first (one line, not a
        traceback, for weights of another config, integer or NaN ones)."""
        check_weights(payload["path"], payload["state_dict"], self.model)
        self.model.load_state_dict(payload["state_dict"])

    def resume(self, path: str | Path) -> None:
        payload = read_checkpoint(path)
        if not isinstance(payload.get("state"), dict):
            raise UsageError(f"{path}: holds no training state to resume from (optimizer, scheduler)")
        state = payload["state"]
        self._load_weights(payload)
        if self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())
            self.ema.n_averaged.fill_(int(state.get("ema_updates", 0)))
            if "train_weights" in state:  # else a run without the average: it starts from these weights
                self._load_weights(payload | {"state_dict": state["train_weights"]})
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best = state["epoch"], state["best"]
        torch.set_rng_state(state["torch_rng"])
        metrics_path = self.run_dir / "metrics.csv"
        if metrics_path.exists():
            with open(metrics_path) as f:
                self.history = [row for row in csv.DictReader(f) if int(row["epoch"]) < self.epoch]

    # --- the loop ------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm import tqdm

        c = self.config
        tau, match = c.tau(epoch), c.match_weight(epoch)
        self.ddp.train()
        batches = self.dist.shard(self.train_batches(epoch))
        totals: dict[str, float] = {}
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{c.epochs}", disable=self.quiet or not sys.stderr.isatty(),
                   file=sys.stderr, leave=False, dynamic_ncols=True)
        for batch in bar:
            batch = to_device(batch, self.device)
            if c.augment:
                batch = GroupElement.random(batch).apply(batch)
            out = self.ddp(batch, tau=tau, straight_through=c.straight_through(epoch), tie_noise=c.tie_noise)
            loss, parts = objective(out, batch, c.type_weight, c.entropy_weight, match, c.distance_weight,
                                    c.distance_cutoff, c.frame_weight, c.frame_floor, c.recon_loss)
            if self.extra_loss is not None:
                extra, extra_parts = self.extra_loss(out, batch)
                loss = loss + extra
                parts = {**parts, **extra_parts, "loss": loss.item()}
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value
            bar.set_postfix(loss=f"{parts['loss']:.4f}")
        n = max(1, len(batches))
        return {"tau": tau, "match_weight": match, "train_loss": totals.get("loss", 0.0) / n,
                "train_recon_rmsd": math.sqrt(totals.get("recon_sq", 0.0) / n)}

    def fit(self) -> list[dict]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        val = [to_device(b, self.device) for b in self.val_batches()] if self.dist.main else []
        self._plotted = (time.perf_counter(), 0)  # (when, epochs drawn) of learning_curves.png
        self._told = False  # that matplotlib is missing
        try:
            while self.epoch < self.config.epochs:
                start = time.perf_counter()
                row = {"epoch": self.epoch, "lr": self.scheduler.get_last_lr()[0], **self.train_epoch(self.epoch)}
                self.epoch += 1
                if self.dist.main:
                    row.update(evaluate(self.scored, val, seed=self.config.seed))
                    row["seconds"] = time.perf_counter() - start
                    self.history.append(row)
                    self._write_metrics()
                    self._plot(final=False)
                    score = row.get("val_rmsd_mean", row["train_recon_rmsd"])
                    if score < self.best:
                        self.best = score
                        self.save("best.ckpt", row)
                    self.save("last.ckpt", row)
                    if not self.quiet:
                        self.log(_summary(row))
                self.dist.barrier()
            if self.dist.main:
                self._plot(final=True)
        finally:
            self.dist.close()
        return self.history

    def _plot(self, final: bool, every: float = 60.0) -> None:
        """learning_curves.png beside metrics.csv: when training ends, and meanwhile at most once
        every `every` seconds; without matplotlib a one-line note instead, once."""
        from groupae_cli.train.curves import (
            CURVES,
            MISSING_MATPLOTLIB,
            plot_curves,
            read_metrics,
        )

        when, drawn = self._plotted
        now = time.perf_counter()
        if not self.history or drawn == len(self.history) or (not final and now - when < every):
            return
        self._plotted = (now, len(self.history))
        if not plot_curves(read_metrics(self.run_dir / "metrics.csv"), self.run_dir / CURVES, self.run_dir.name):
            if not self.quiet and not self._told:
                self.log(MISSING_MATPLOTLIB)
            self._told = True

    def _write_metrics(self) -> None:
        with written_atomically(self.run_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.history)


def _summary(row: dict) -> str:
    def fmt(key, spec=".4f"):
        value = row.get(key)
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(float(value), spec)

    return (f"epoch {int(row['epoch']) + 1}: loss {fmt('train_loss')}  val rmsd {fmt('val_rmsd_mean', '.3f')} Å "
            f"(median {fmt('val_rmsd_median', '.3f')}, centroid baseline {fmt('val_baseline_rmsd', '.3f')})  "
            f"elements {fmt('val_element_acc', '.3f')}  perm {fmt('val_perm_acc', '.3f')}  "
            f"invariance {fmt('val_invariance', '.1e')}  tau {fmt('tau', '.3f')}  {fmt('seconds', '.0f')} s")
