"""Training a GroupAE on structure files: `groupae train` calls `train_from_files`."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from groupae_cli.device import resolve_device
from groupae_cli.errors import Failure, FailureReport, UsageError
from groupae_cli.models.config import ORGANIC, POINTS, ModelConfig
from groupae_cli.train.config import TrainConfig
from groupae_cli.train.dataset import (
    Batches,
    StructureSet,
    epoch_batches,
    fixed_batches,
)
from groupae_cli.train.loop import Distributed, Trainer

__all__ = ["TrainConfig", "Trainer", "read_run_config", "train_from_files", "write_run_config"]

CACHE, SPLIT, CONFIG = "cache.npz", "split.json", "config.yaml"


def write_run_config(path: Path, model: ModelConfig, train: TrainConfig, inputs: Sequence[str]) -> None:
    import yaml

    data = {"model": model.to_dict(), "train": train.to_dict(), "inputs": list(inputs)}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def read_run_config(path: str | Path) -> tuple[dict, dict, list]:
    """(model dict, train dict, inputs) of a config.yaml; unknown top-level keys are an error."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    unknown = sorted(set(data) - {"model", "train", "inputs"})
    if unknown:
        raise UsageError(f"{path}: unknown config sections: {', '.join(unknown)} (known: model, train, inputs)")
    return data.get("model") or {}, data.get("train") or {}, data.get("inputs") or []


def _parse_inputs(inputs: Sequence[str], fmt: str | None, report: FailureReport, quiet: bool) -> StructureSet:
    from groupae_cli.cli.common import read_progress

    structures = []
    for _, item in read_progress(inputs, fmt, quiet, desc="parsing"):
        if isinstance(item, Failure):
            report.add(item)
        else:
            structures.append(item)
    if not structures:
        raise UsageError("no usable structures in the inputs")
    return StructureSet.from_structures(structures)


def model_elements(data: StructureSet) -> tuple[int, ...]:
    """Point clouds: the one point type; molecules: the common organic elements plus any others seen."""
    seen = data.elements()
    return POINTS if seen == [0] else tuple(sorted(set(ORGANIC) | set(seen)))


def train_from_files(inputs: Sequence[str], run_dir: str | Path, model_config: ModelConfig, config: TrainConfig,
                     resume: bool = False, device: str = "auto", fmt: str | None = None, strict: bool = False,
                     quiet: bool = False, resume_epochs: int | None = None) -> list[dict]:
    """Parse inputs once (cache.npz), split by molecule (split.json), write config.yaml, train.

    With `resume`, everything comes from the run directory (`model_config` and `config` are not
    used) and training continues from last.ckpt, up to `resume_epochs` epochs in all if given.
    """
    run_dir = Path(run_dir)
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    dist = Distributed(resolve_device(device))
    if resume:
        if not (run_dir / "last.ckpt").is_file():
            raise UsageError(f"{run_dir}: nothing to resume (no last.ckpt)")
        model_dict, train_dict, inputs = read_run_config(run_dir / CONFIG)
        config = TrainConfig.from_dict(train_dict | ({"epochs": resume_epochs} if resume_epochs else {}))
        if dist.main:
            write_run_config(run_dir / CONFIG, ModelConfig.from_dict(model_dict), config, inputs)
    elif (run_dir / "last.ckpt").exists():
        raise UsageError(f"{run_dir}: holds a run already; pass --resume to continue it, or another -o")
    if dist.main and not resume:
        report = FailureReport(strict=strict)
        data = _parse_inputs(inputs, fmt, report, quiet)
        if not quiet:
            report.summarise()
        if strict and len(report):
            raise UsageError(f"{len(report)} input records failed (--strict)")
        run_dir.mkdir(parents=True, exist_ok=True)
        data.save(run_dir / CACHE)
        model_config = model_config.replace(elements=model_elements(data))
        train_idx, val_idx = data.split(config.val_fraction, config.seed)
        (run_dir / SPLIT).write_text(json.dumps({"train": train_idx.tolist(), "validation": val_idx.tolist()}))
        write_run_config(run_dir / CONFIG, model_config, config, inputs)
        log(f"{len(data)} structures ({len(train_idx)} train, {len(val_idx)} validation), "
            f"{len(model_config.elements)} element types, cache in {run_dir / CACHE}")
    dist.barrier()
    data = StructureSet.load(run_dir / CACHE)
    split = json.loads((run_dir / SPLIT).read_text())
    model_config = ModelConfig.from_dict(read_run_config(run_dir / CONFIG)[0])
    train_idx, val_idx = np.array(split["train"], dtype=np.int64), np.array(split["validation"], dtype=np.int64)
    sizes = data.sizes
    too_big = int((sizes > model_config.max_atoms).sum())
    if too_big:
        raise UsageError(f"{too_big} structures exceed max_atoms={model_config.max_atoms}; raise it in the config")

    def curriculum_limit(epoch: int) -> int | None:
        span = config.curriculum_fraction * config.epochs
        if span <= 0 or epoch >= span:
            return None
        start = np.percentile(sizes[train_idx], 30)
        return int(start + (sizes.max() - start) * epoch / span)

    def train_batches(epoch: int) -> Batches:
        limit = curriculum_limit(epoch)
        return Batches(data, epoch_batches(train_idx, sizes, config.batch_size, config.seed, epoch, limit,
                                           config.epoch_size), model_config.elements)

    def val_batches() -> Batches:
        chosen = val_idx
        if 0 < config.val_size < len(val_idx):
            chosen = np.sort(np.random.default_rng([config.seed, 2]).choice(val_idx, config.val_size, replace=False))
        return Batches(data, list(fixed_batches(chosen, config.batch_size)), model_config.elements)

    trainer = Trainer(model_config, config, run_dir, train_batches, val_batches, device=device, quiet=quiet, log=log,
                      extra_state={"inputs": list(inputs), "n_train": len(train_idx), "n_validation": len(val_idx)},
                      dist=dist)
    if resume:
        trainer.resume(run_dir / "last.ckpt")
        log(f"resuming {run_dir} at epoch {trainer.epoch + 1} of {config.epochs}")
    return trainer.fit()
