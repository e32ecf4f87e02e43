"""`groupae info PATH`: what a structure file or a groupae HDF5 file holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from groupae_cli.cli.common import (
    Format,
    Json,
    Quiet,
    Strict,
    handle_errors,
    print_json,
    read_progress,
)

_HDF5 = (".h5", ".hdf5")
_CHECKPOINT = (".ckpt", ".pt")
_SHOWN_FAILURES = 10


def _print_structures(path: str, fmt: str, s: dict) -> None:
    typer.echo(f"{path}  ({'format sniffed' if fmt == 'auto' else fmt})")
    typer.echo(f"  records:       {s['records']} ({s['failed']} failed)")
    a = s["atoms_per_record"]
    if a:
        typer.echo(f"  atoms/record:  min {a['min']}, median {a['median']:g}, max {a['max']} ({a['total']} in all)")
    if s["elements"]:
        typer.echo("  elements:      " + ", ".join(f"{sym} {n}" for sym, n in s["elements"].items()))
    typer.echo(f"  bonds:         {'yes' if s['records_with_bonds'] else 'no'} ({s['records_with_bonds']} of {s['records']} records)")
    if s["point_features"]:
        typer.echo("  point features: " + ", ".join(s["point_features"]))
    for f in s["failures"][:_SHOWN_FAILURES]:
        where = "file" if f["index"] is None else f"record {f['index']}"
        typer.echo(f"  failed {where}{' (' + f['name'] + ')' if f['name'] else ''}: {f['reason']}")
    if s["failed"] > _SHOWN_FAILURES:
        typer.echo(f"  ... and {s['failed'] - _SHOWN_FAILURES} more failures (--json lists all)")


def _print_hdf5(d: dict) -> None:
    typer.echo(f"{d['path']}  (HDF5)")
    for key, value in d["attrs"].items():
        typer.echo(f"  @{key}: {value}")
    width = max((len(n) for n in d["datasets"]), default=0)
    for name, ds in d["datasets"].items():
        typer.echo(f"  /{name:<{width}}  {tuple(ds['shape'])}  {ds['dtype']}")
    for f in d["failed"][:_SHOWN_FAILURES]:
        typer.echo(f"  failed: file {f['source_file']} record {f['source_index']} ({f['name']}): {f['reason']}")
    if len(d["failed"]) > _SHOWN_FAILURES:
        typer.echo(f"  ... and {len(d['failed']) - _SHOWN_FAILURES} more failures (--json lists all)")


def _describe_checkpoint(path: str) -> dict:
    from groupae_cli.io.checkpoint import read_checkpoint, sha256

    payload = read_checkpoint(path)
    n_params = sum(int(t.numel()) for t in payload["state_dict"].values())
    return {"path": payload["path"], "sha256": sha256(payload["path"]), "format_version": payload["format_version"],
            "versions": payload["versions"], "parameters": n_params, "config": payload["config"],
            "training": payload.get("training", {})}


def _print_checkpoint(d: dict) -> None:
    typer.echo(f"{d['path']}  (groupae checkpoint, format {d['format_version']})")
    typer.echo("  written by:  " + ", ".join(f"{k} {v}" for k, v in d["versions"].items()))
    typer.echo(f"  parameters:  {d['parameters']:,}")
    typer.echo(f"  sha256:      {d['sha256']}")
    config = dict(d["config"])
    if "elements" in config:
        typer.echo("  elements:    " + " ".join(_symbol(z) for z in config.pop("elements")))
    typer.echo("  model:       " + ", ".join(f"{k}={v}" for k, v in config.items()))
    training = d["training"]
    if training:
        done, planned = training.get("epoch"), (training.get("train_config") or {}).get("epochs")
        trained = f"{done if done is not None else '?'}{f' of {planned}' if planned else ''} epochs"
        metrics = dict(training.get("metrics") or {})
        metrics.pop("epoch", None)  # 0-based in metrics.csv; the count above says which epoch
        typer.echo(f"  trained:     {trained}" + (f"; validation figures after epoch {done}:" if metrics else ""))
        for key, value in metrics.items():
            typer.echo(f"    {key}: {value:.5g}" if isinstance(value, float) else f"    {key}: {value}")


def _print_run(d: dict) -> None:
    typer.echo(f"{d['path']}  (training run)")
    split = f" ({d['n_train']} train, {d['n_validation']} validation structures)" if d["n_train"] else ""
    typer.echo("  inputs:      " + (", ".join(d["inputs"]) or "-") + split)
    model = dict(d["model"])
    if "elements" in model:
        typer.echo("  elements:    " + " ".join(_symbol(z) for z in model.pop("elements")))
    keys = ("embedding_dim", "layers", "scalars", "vectors", "graph", "cutoff", "decoder_layers", "max_atoms")
    typer.echo("  model:       " + ", ".join(f"{k}={model[k]}" for k in keys if k in model))
    planned = f" of {d['epochs_planned']}" if d["epochs_planned"] else ""
    pace = f", {d['seconds_per_epoch']:.0f} s each (median)" if d["seconds_per_epoch"] is not None else ""
    typer.echo(f"  epochs:      {d['epochs_done']}{planned} done{pace}")
    for label, row in (("best", d["best"]), ("last", d["last"])):
        if row is None:
            continue
        parts = []
        if "val_rmsd_mean" in row:
            parts.append(f"RMSD {row['val_rmsd_mean']:.3f} Å (median {row.get('val_rmsd_median', float('nan')):.3f}) "
                         f"against the centroid baseline {row.get('val_baseline_rmsd', float('nan')):.3f} Å")
        if "val_element_acc" in row:
            parts.append(f"elements {100 * row['val_element_acc']:.2f}%")
        if "val_perm_acc" in row:
            parts.append(f"permutation {100 * row['val_perm_acc']:.1f}%")
        if not parts and "train_recon_rmsd" in row:
            parts.append(f"training RMSD {row['train_recon_rmsd']:.3f} Å")
        typer.echo(f"  {label + ':':<12} epoch {row['epoch']}: " + ", ".join(parts))
    typer.echo("  files:       " + ", ".join(d["files"]))


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z)


@handle_errors
def info(
    path: Annotated[str, typer.Argument(help="A structure file (XYZ, SDF/MOL, PLY; .gz; '-' for stdin), "
                                             "a groupae HDF5 file, a checkpoint (.ckpt), a shipped model's "
                                             "name (default) or a training run directory.")],
    fmt: Format = None,
    json: Json = False,
    strict: Strict = False,
    quiet: Quiet = False,
) -> None:
    """Show what a file holds: records, atoms, elements, bonds and failures; an HDF5 file's datasets;
    a checkpoint's versions, config and training figures; or a training run directory's inputs,
    epochs and best and last validation figures."""
    from groupae_cli import shipped_model_path
    from groupae_cli.errors import FailureReport, UsageError

    if path != "-" and Path(path).is_dir():
        from groupae_cli.train.curves import is_run, summarise_run

        if not is_run(path):
            raise UsageError(f"{path}: is a directory, not a structure file or a training run "
                             "(no config.yaml, metrics.csv or last.ckpt)")
        described = summarise_run(path)
        print_json(described) if json else _print_run(described)
        return

    shipped = shipped_model_path(path)  # a shipped model by name ("default")
    if path != "-" and (Path(path).suffix.lower() in _CHECKPOINT or (not Path(path).exists() and shipped.is_file())):
        described = _describe_checkpoint(path)
        print_json(described) if json else _print_checkpoint(described)
        return

    if path != "-" and Path(path).suffix.lower() in _HDF5:
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such file")
        from groupae_cli.io.hdf5 import describe

        try:
            described = describe(path)
        except OSError as exc:
            raise UsageError(f"{path}: not a readable HDF5 file ({exc})") from None
        print_json(described) if json else _print_hdf5(described)
        return

    from groupae_cli.io.formats import resolve
    from groupae_cli.io.summary import summarise

    resolved = resolve(path, fmt)
    # the failures are part of this command's result (stdout), so no second summary on stderr
    report = FailureReport(strict=strict)
    records = (item for _, item in read_progress([path], fmt, quiet, desc="reading"))
    summary = summarise(records, on_failure=report.add)
    print_json({"path": path, "format": resolved, **summary}) if json else _print_structures(path, resolved, summary)
    raise typer.Exit(report.exit_code())
