"""Training a GroupAE on structure files: `groupae train` calls `train_from_files`."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from groupae_cli.device import resolve_device
from groupae_cli.errors import Failure, FailureReport, UsageError
from groupae_cli.io.formats import written_atomically
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
    """Write config.yaml atomically: a kill mid-write leaves the old file, never an empty one."""
    import yaml

    data = {"model": model.to_dict(), "train": train.to_dict(), "inputs": list(inputs)}
    _write_text(path, yaml.safe_dump(data, sort_keys=False))


def _write_text(path: Path, text: str) -> None:
    with written_atomically(path) as tmp:
        tmp.write_text(text)


def read_run_config(path: str | Path) -> tuple[dict, dict, list]:
    """(model dict, train dict, inputs) of a config.yaml; unknown top-level keys are an error, and so
    is a file that is empty or not YAML (a default configuration would silently replace the run's)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not a YAML configuration ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: empty or not a configuration (expected sections model, train, inputs)")
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


def _resumed_config(run_dir: Path, epochs: int | None, main: bool) -> tuple[TrainConfig, list, dict | None]:
    """The training configuration, inputs and --init provenance of a run to resume, from its last.ckpt (written
    atomically, so it survives a kill; config.yaml is rewritten from it when that was lost or
    changed), with `epochs` as the new total if given. config.yaml is rewritten only when it
    changes."""
    from groupae_cli.io.checkpoint import read_checkpoint

    if not (run_dir / "last.ckpt").is_file():
        raise UsageError(f"{run_dir}: nothing to resume (no last.ckpt)")
    payload = read_checkpoint(run_dir / "last.ckpt")
    training = payload.get("training") or {}
    if not isinstance(training.get("train_config"), dict):
        raise UsageError(f"{run_dir / 'last.ckpt'}: holds no training configuration to resume from")
    model_config = ModelConfig.from_dict(payload["config"])
    config = TrainConfig.from_dict(training["train_config"] | ({"epochs": epochs} if epochs else {}))
    inputs = list(training.get("inputs", []))
    init = training.get("init")
    done = int(training.get("epoch", 0))
    if config.epochs <= done:
        raise UsageError(f"{run_dir}: {done} epochs done already; --epochs gives the total, so pass more than {done}")
    try:
        on_disk = read_run_config(run_dir / CONFIG)
    except (UsageError, OSError):
        on_disk = None
    if main and on_disk != (model_config.to_dict(), config.to_dict(), inputs):
        write_run_config(run_dir / CONFIG, model_config, config, inputs)
    return config, inputs, init


def _initial_model(init: str | Path, data: StructureSet) -> tuple[ModelConfig, dict]:
    """(model config, provenance) of the checkpoint a run starts from (`--init`; the Trainer loads
    its weights); its elements must cover the inputs'."""
    from groupae_cli.io.checkpoint import read_checkpoint, sha256

    payload = read_checkpoint(init)
    model_config = ModelConfig.from_dict(payload["config"])
    missing = sorted(set(data.elements()) - set(model_config.elements))
    if missing:
        from ase.data import chemical_symbols

        raise UsageError(f"{init}: its model does not know {', '.join(chemical_symbols[z] for z in missing)}, "
                         "found in the inputs; --init cannot add elements")
    return model_config, {"path": str(payload["path"]), "sha256": sha256(payload["path"])}


def train_from_files(inputs: Sequence[str], run_dir: str | Path, model_config: ModelConfig, config: TrainConfig,
                     resume: bool = False, device: str = "auto", fmt: str | None = None, strict: bool = False,
                     quiet: bool = False, resume_epochs: int | None = None,
                     init: str | Path | None = None) -> list[dict]:
    """Parse inputs once (cache.npz), split by molecule (split.json), write config.yaml, train.

    With `resume`, everything comes from the run directory (`model_config` and `config` are not
    used) and training continues from last.ckpt, up to `resume_epochs` epochs in all if given.
    With `init` (a checkpoint path or a shipped model's name), a new run starts from its weights
    and its model config (`model_config` is not used) with a fresh optimizer and schedule:
    fine-tuning, or more steps after a finished run.
    """
    run_dir = Path(run_dir)
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    dist = Distributed(resolve_device(device))
    init_note = None
    if resume:
        if init is not None:
            raise UsageError("--init starts a new run; --resume continues one from its last.ckpt")
        config, inputs, init_note = _resumed_config(run_dir, resume_epochs, dist.main)
    elif (run_dir / "last.ckpt").exists():
        raise UsageError(f"{run_dir}: holds a run already; pass --resume to continue it, or another -o")
    elif run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir}: is a file; -o names the run directory")
    if dist.main and not resume:
        report = FailureReport(strict=strict)
        data = _parse_inputs(inputs, fmt, report, quiet)
        if not quiet:
            report.summarise()
        if strict and len(report):
            raise UsageError(f"{len(report)} input records failed (--strict)")
        run_dir.mkdir(parents=True, exist_ok=True)
        data.save(run_dir / CACHE)
        if init is not None:
            model_config, init_note = _initial_model(init, data)
        else:
            model_config, init_note = model_config.replace(elements=model_elements(data)), None
        train_idx, val_idx = data.split(config.val_fraction, config.seed, config.split)
        _write_text(run_dir / SPLIT, json.dumps({"train": train_idx.tolist(), "validation": val_idx.tolist()}))
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

    extra = {"inputs": list(inputs), "n_train": len(train_idx), "n_validation": len(val_idx)}
    trainer = Trainer(model_config, config, run_dir, train_batches, val_batches, device=device, quiet=quiet, log=log,
                      extra_state=extra | ({"init": init_note} if init_note else {}), dist=dist, init=init)
    if resume:
        trainer.resume(run_dir / "last.ckpt")
        log(f"resuming {run_dir} at epoch {trainer.epoch + 1} of {config.epochs}")
    return trainer.fit()
