"""`groupae reconstruct INPUT -o OUT`: decode structures back, with the error of each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from groupae_cli.cli.common import (
    Device,
    FitHold,
    FitSteps,
    Format,
    Json,
    Model,
    Quiet,
    Strict,
    check_fit_options,
    handle_errors,
    print_json,
    progress,
    read_progress,
)


@handle_errors
def reconstruct(
    source: Annotated[str, typer.Argument(help="A structure file (XYZ, SDF/MOL, PLY; .gz; '-' for stdin), "
                                               "or an HDF5 file written by groupae embed.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Where the decoded structures go: .xyz or .sdf "
                                                         "(bonds from the input, else perceived from the geometry); "
                                                         "'-' for XYZ on stdout (the table then goes to stderr).")],
    model: Model = None,
    batch_size: Annotated[int, typer.Option(help="Structures per batch.", min=1)] = 64,
    device: Device = "auto",
    fit_steps: FitSteps = 0,
    fit_hold_identity: FitHold = False,
    json: Json = False,
    fmt: Format = None,
    strict: Strict = False,
    quiet: Quiet = False,
) -> None:
    """Encode and decode every record; print each one's RMSD (Å) and element accuracy, then a summary.

    With `-o -` the structures go to stdout and the table to stderr (--quiet: none); --json needs
    `-o FILE`. From an embed HDF5 file the structures are decoded from the stored embeddings and group
    elements (with the model that wrote them); there is no input to compare with, so no error.
    --fit-steps fits each z to its record first (not for an embed file: fit when embedding).
    """
    import itertools

    from groupae_cli.cli.embed import load_for_command
    from groupae_cli.embed import set_fit
    from groupae_cli.errors import EXIT_FAILURES, Failure, FailureReport, UsageError
    from groupae_cli.io import write_structures
    from groupae_cli.io.formats import check_output, format_from_name, resolve
    from groupae_cli.reconstruct import decode_embeddings, reconstruct_stream, summarise

    out_fmt = "xyz" if out == "-" else format_from_name(out)
    if out_fmt not in ("xyz", "sdf"):
        raise UsageError(f"{out}: write reconstructions as .xyz or .sdf")
    if json and out == "-":
        raise UsageError("--json and -o - would both write to stdout; write the structures to a file (-o FILE)")
    from_h5 = source != "-" and Path(source).suffix.lower() in (".h5", ".hdf5")
    if from_h5 and not Path(source).is_file():
        raise UsageError(f"{source}: no such file")
    check_fit_options(fit_steps, fit_hold_identity)
    if from_h5 and fit_steps:
        raise UsageError(f"{source}: --fit-steps needs the structures; an embed file's z is decoded as stored "
                         "(fit it when embedding: groupae embed --fit-steps)")
    if from_h5:  # before the model loads: a broken file fails fast
        from groupae_cli.io.hdf5 import open_embed_file

        open_embed_file(source).close()
    if not from_h5:
        resolve(source, fmt)
    if out != "-":
        check_output(out, [source])
    net, torch_device, model_path = load_for_command(model, device)
    set_fit(net, fit_steps, fit_hold_identity, str(model_path))
    report = FailureReport(strict=strict)
    if from_h5:
        results = progress(decode_embeddings(net, source, torch_device, batch_size), quiet, desc="decoding",
                           unit=" rec", total=_records_in(source))
    else:
        records = (item for _, item in read_progress([source], fmt, quiet, desc="reconstructing"))
        results = reconstruct_stream(net, records, torch_device, batch_size)
    rows: list[dict] = []

    def decoded():  # the structures, written as they come (memory flat in the number of records)
        for item in results:
            if isinstance(item, Failure):
                report.add(item)
                continue
            rows.append(item.row())
            yield item.structure

    structures = decoded()
    first = next(structures, None)
    if first is None:
        if not quiet:
            report.summarise()
        typer.echo(f"groupae: error: {out}: not written: none of the {len(report)} records could be decoded", err=True)
        raise typer.Exit(EXIT_FAILURES)
    write_structures(itertools.chain([first], structures), out, out_fmt)
    if json:
        print_json({"records": rows, "summary": summarise(rows), "failed": [str(f) for f in report.failures]})
    elif out != "-" or not quiet:  # with -o - the structures own stdout: the table goes to stderr
        to_stderr = out == "-"
        typer.echo("name\tindex\tn_atoms\trmsd\telement_accuracy", err=to_stderr)
        for r in rows:
            rmsd = "" if r["rmsd"] is None else f"{r['rmsd']:.4f}"
            acc = "" if r["element_accuracy"] is None else f"{r['element_accuracy']:.4f}"
            typer.echo(f"{r['name']}\t{r['index']}\t{r['n_atoms']}\t{rmsd}\t{acc}", err=to_stderr)
        typer.echo(_summary_line(summarise(rows)), err=to_stderr)
    if not quiet:
        report.summarise()
    raise typer.Exit(report.exit_code())


def _records_in(path: str) -> int | None:
    """How many records an embed file holds (for the progress bar's total)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return len(f["offsets"]) - 1
    except Exception:  # noqa: BLE001 - decode_embeddings says what is wrong with it
        return None


def _summary_line(summary: dict) -> str:
    """e.g. `summary: 310 records, RMSD median 1.83 Å (mean 1.96), element accuracy 99.99%`."""
    n = summary["n_records"]
    line = f"summary: {n} record{'s' if n != 1 else ''}"
    if "rmsd_median" in summary:
        line += (f", RMSD median {summary['rmsd_median']:.2f} Å (mean {summary['rmsd_mean']:.2f}), "
                 f"element accuracy {100 * summary['element_accuracy']:.2f}%")
    return line
