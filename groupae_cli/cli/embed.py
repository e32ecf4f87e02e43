"""`groupae embed INPUT... -o OUT.h5`: invariant embeddings and group elements of every record."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from groupae_cli.cli.common import (
    Device,
    FitHold,
    FitSteps,
    Format,
    Model,
    Quiet,
    Strict,
    allow_quick_exit,
    check_fit_options,
    handle_errors,
    stream_progress,
)

DEFAULT_MODEL = "default"
CPU_BATCH, GPU_BATCH = 64, 1024


def model_path_for(model: str | None):
    """The checkpoint a command's --model names (without importing torch)."""
    from groupae_cli.errors import UsageError
    from groupae_cli.io.checkpoint import resolve_model_path

    try:
        return resolve_model_path(model or DEFAULT_MODEL)
    except UsageError:
        if model is not None:
            raise
        raise UsageError("no default model is shipped with this version yet; pass --model CHECKPOINT "
                         "(one written by groupae train)") from None


def load_for_command(model: str | None, device: str):
    """(model, torch device, checkpoint path) for a command's --model and --device."""
    from groupae_cli._api import load_model

    model_path = model_path_for(model)
    net = load_model(model_path, device)
    return net, next(net.parameters()).device, model_path


@handle_errors
def embed(
    inputs: Annotated[list[str], typer.Argument(help="Structure files (XYZ, SDF/MOL, PLY; .gz; '-' for stdin).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HDF5 file to write.")],
    model: Model = None,
    batch_size: Annotated[int | None, typer.Option(help="Structures per batch (default: 64 on CPU, 1024 on a GPU, "
                                                        "where large batches keep it busy).", min=1)] = None,
    shard: Annotated[str | None, typer.Option(help="i/N: embed only every N-th record, from the i-th (0-based); "
                                              "the others are not parsed. `groupae merge` joins the parts.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes. On CPU each parses and encodes its share "
                                                     "with one torch thread; on a GPU they parse for the model. "
                                                     "0: all in the main process. Default: one per core on CPU, "
                                                     "all cores but one on a GPU (at most 8), 0 for stdin.",
                                                min=0)] = None,
    device: Device = "auto",
    encode_in_workers: Annotated[bool, typer.Option(
        "--encode-in-workers", help="On a GPU, have the worker processes run the model too, each with a "
                                    "CUDA context of its own, instead of the main process (as on CPU).")] = False,
    fit_steps: FitSteps = 0,
    fit_hold_identity: FitHold = False,
    fmt: Format = None,
    strict: Strict = False,
    quiet: Quiet = False,
) -> None:
    """Embed every record: z, rotation, translation and canonical atom order, into one HDF5 file.

    Records that cannot be read or that the model cannot take are skipped, listed in the file's
    `failed` table and summarised on stderr (--strict: exit 1 if any). When no record can be
    embedded nothing is written and the exit code is 1.
    """
    from groupae_cli.early_worker import completing_torch, import_torch_lean
    from groupae_cli.errors import EXIT_FAILURES, FailureReport, UsageError
    from groupae_cli.io import resolve_inputs
    from groupae_cli.io.embeddings import provenance, write_embeddings
    from groupae_cli.io.formats import check_output
    from groupae_cli.io.parallel import (
        RecordStream,
        default_workers,
        gpu_wanted,
        parse_shard,
        usable_cpus,
    )

    check_fit_options(fit_steps, fit_hold_identity)
    try:
        part = parse_shard(shard) if shard else (0, 1)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    paths = resolve_inputs(inputs, fmt)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise UsageError(f"{out}: the output is HDF5; name it .h5 or .hdf5")
    check_output(out)
    if workers is None:
        workers = default_workers(paths, device)
    report = FailureReport(strict=strict)
    gpu = gpu_wanted(device)
    if batch_size is None:
        batch_size = GPU_BATCH if gpu else CPU_BATCH
    model_path = model_path_for(model)
    attrs = provenance(model_path, Path(model_path).stem if model is None else str(model), paths, part, "embed",
                       fit_steps, fit_hold_identity)
    if workers and (gpu and encode_in_workers or device in ("cpu", "auto") and not gpu):
        # the workers parse and encode (on CPU one torch thread each); this process only writes
        encoder = {"model": str(model_path), "batch_size": batch_size, "threads": max(1, usable_cpus() // workers),
                   "fit_steps": fit_steps, "fit_hold_identity": fit_hold_identity,
                   "device": device if gpu else "cpu"}
        with RecordStream(paths, fmt, workers, part, encoder=encoder) as stream:
            items = stream_progress(stream, quiet, desc="embedding")
            count = write_embeddings(items, out, lambda: (stream.model_info["embedding_dim"],
                                                          stream.model_info["embedding_identity"], attrs),
                                     on_failure=report.add, keep_empty=part[1] > 1)
    else:
        # the parsers start before torch is imported and the model built: the first records are ready when it is
        with RecordStream(paths, fmt, workers, part, geometry_only=True) as stream:
            lean = not gpu and not fit_steps
            if lean:  # as the CPU workers do: torch's meta kernels once the first batch is encoded
                import_torch_lean()
            from groupae_cli.embed import embed_files, set_fit

            net, torch_device, _ = load_for_command(model, device)
            set_fit(net, fit_steps, fit_hold_identity, str(model_path))
            items = stream_progress(stream, quiet, desc="embedding")
            count = embed_files(completing_torch(items, batch_size) if lean else items, net, out, attrs, torch_device,
                                batch_size, on_failure=report.add, keep_empty=part[1] > 1)
    allow_quick_exit()  # the output is closed, the parser processes are stopped
    if not quiet:
        report.summarise()
    if count == 0 and part[1] == 1:
        typer.echo(f"groupae: error: {out}: not written: none of the {len(report)} records could be embedded", err=True)
        raise typer.Exit(EXIT_FAILURES)
    if not quiet:
        where = f" (shard {part[0]}/{part[1]})" if part[1] > 1 else ""
        typer.echo(f"groupae: {count} record{'s' if count != 1 else ''} embedded into {out}{where}", err=True)
    raise typer.Exit(report.exit_code())
