"""`groupae merge PART.h5... -o ALL.h5`: the files of a sharded `groupae embed` as one file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from groupae_cli.cli.common import Quiet, handle_errors, progress


@handle_errors
def merge(
    parts: Annotated[list[Path], typer.Argument(help="The files of `groupae embed --shard i/N`, one for each i, "
                                                     "in any order.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HDF5 file to write.")],
    quiet: Quiet = False,
) -> None:
    """Merge the files of a sharded `groupae embed` into the file one unsharded run would write.

    The parts must be the complete files of one run (same model, same inputs), every shard i/N
    exactly once. Records and failures come out in input order: every dataset equals that of one
    `groupae embed` over the same inputs; the attribute `merged_from` names the parts.
    """
    from groupae_cli.errors import UsageError
    from groupae_cli.io.formats import check_output
    from groupae_cli.io.merge import merge_parts

    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise UsageError(f"{out}: the output is HDF5; name it .h5 or .hdf5")
    check_output(out, parts)
    bar = None

    def on_records(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress(None, quiet, total=total, desc="merging", unit=" rec")
        bar.update(done - bar.n)

    try:
        records, failed = merge_parts(parts, out, on_records)
    finally:
        if bar is not None:
            bar.close()
    if not quiet:
        typer.echo(f"groupae: {records} record{'s' if records != 1 else ''} ({failed} failed) from "
                   f"{len(parts)} part{'s' if len(parts) != 1 else ''} merged into {out}", err=True)
