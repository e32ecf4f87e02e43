"""`groupae train FILES... -o RUN_DIR`: train a model on molecules or point clouds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from groupae_cli.cli.common import Device, Format, Quiet, Strict, handle_errors


@handle_errors
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory: config.yaml, metrics.csv, learning_curves.png, best.ckpt, last.ckpt.")],
    files: Annotated[list[str] | None, typer.Argument(help="Structure files (XYZ, SDF/MOL, PLY; .gz); "
                                                     "none with --resume.")] = None,
    preset: Annotated[str, typer.Option(help="Model size: tiny, small, medium, large, tetris.")] = "small",
    config: Annotated[Path | None, typer.Option("--config", help="YAML with 'model:' and 'train:' sections; options given here win.")] = None,
    embedding_dim: Annotated[int | None, typer.Option(help="Size of the invariant embedding z.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default 50).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Structures per batch (default 32).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 2e-3).")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Share of molecules held out (default 0.1).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the split, the weights and the batches.")] = None,
    graph: Annotated[str | None, typer.Option(help="radius (molecules) or knn (sparse point clouds).")] = None,
    cutoff: Annotated[float | None, typer.Option(help="Radius-graph cutoff (Å for molecules).")] = None,
    curriculum: Annotated[float | None, typer.Option(help="Fraction of epochs over which the largest size allowed grows.")] = None,
    augment: Annotated[bool, typer.Option("--augment", help="Random pose and order per batch (invariance is exact without).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from last.ckpt.")] = False,
    init: Annotated[str | None, typer.Option("--init", help="Start a new run from this checkpoint's weights and "
                                             "model (a path, or 'default'): fine-tuning, or more steps after a "
                                             "finished run; a fresh optimizer and schedule.")] = None,
    device: Device = "auto",
    fmt: Format = None,
    strict: Strict = False,
    quiet: Quiet = False,
) -> None:
    """Train a group autoencoder; validates each epoch and keeps best.ckpt and last.ckpt."""
    from groupae_cli.errors import UsageError
    from groupae_cli.models.config import preset as get_preset
    from groupae_cli.train import TrainConfig, read_run_config, train_from_files

    if not files and not resume:
        raise UsageError("no input files (give structure files, or --resume a run)")
    model_dict, train_dict = {}, {}
    if config is not None:
        if not config.is_file():
            raise UsageError(f"{config}: no such file")
        model_dict, train_dict, _ = read_run_config(config)
    model_dict.update({k: v for k, v in {"embedding_dim": embedding_dim, "graph": graph, "cutoff": cutoff}.items()
                       if v is not None})
    train_dict.update({k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                                          "val_fraction": val_fraction, "seed": seed,
                                          "curriculum_fraction": curriculum}.items() if v is not None})
    if augment:
        train_dict["augment"] = True
    try:
        model_config = get_preset(preset, **{k: tuple(v) if k == "elements" else v for k, v in model_dict.items()})
        train_config = TrainConfig.from_dict(train_dict)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    if init is not None and (model_dict or preset != "small"):
        raise UsageError("--init takes the model from its checkpoint; drop the model options "
                         f"({', '.join(sorted(model_dict)) or '--preset'})")
    train_from_files(files or [], out, model_config, train_config, resume=resume, device=device, fmt=fmt,
                     strict=strict, quiet=quiet, resume_epochs=epochs, init=init)
