"""What every command shares: option types, error handling, progress bars, output."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Annotated

import typer

from groupae_cli.errors import EXIT_USAGE, GroupaeError, os_error_text

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries on stderr.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Strict = Annotated[bool, typer.Option("--strict", help="Exit 1 if any record fails (default: skip and report).")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu, or cuda[:i].")]
Model = Annotated[str | None, typer.Option("--model", "-m", help="A checkpoint path, or the name of a model shipped "
                                              "with groupae: default (used when not given), or default-v1 "
                                              "(the previous default: three encoder layers, 0.6x the speed "
                                              "on CPU; for files embedded with it, whose model_sha256 "
                                              "names it).")]
FitSteps = Annotated[int, typer.Option(
    "--fit-steps", min=0,
    help="Fit each record's z to it through the decoder by this many Adam steps (records of at most "
         "29 atoms: a tenth as many Levenberg-Marquardt steps), laying the record onto the decoder's "
         "drawing again as it goes (the group element follows): sharper reconstructions "
         "(200 steps: 0.5-3 s per molecule on one core; at 200 steps z stayed invariant to 1e-5 on "
         "every held-out molecule, all 14,181 for each shipped model; "
         "other lengths are not checked). "
         "0: the encoder's z.")]
FitHold = Annotated[bool, typer.Option(
    "--fit-hold-identity/--fit-whole-z",
    help="With --fit-steps: leave z's frame-free part (its first embedding_identity entries, the "
         "part that describes the molecule best; the shipped models have one) as the encoder made it "
         "and fit only the rest, or "
         "fit the whole of z (the default: the sharpest reconstructions, but a z that describes the "
         "molecule worse than the Coulomb-matrix eigenspectrum). Held, on every held-out drug-like "
         "molecule: 0.61 A median at 200 steps, 0.57 at 400 (whole: 0.53 at 200); z invariant to "
         "1e-6 (bench/RESULTS.md).")]
Format = Annotated[
    str | None,
    typer.Option("--format", "-f", help="Input format (xyz, sdf, ply, pdb, mol2) when the extension does not tell, e.g. for '-'."),
]


def check_fit_options(fit_steps: int, fit_hold_identity: bool) -> None:
    """UsageError for --fit-hold-identity without --fit-steps (it would do nothing)."""
    from groupae_cli.errors import UsageError

    if fit_hold_identity and not fit_steps:
        raise UsageError("--fit-hold-identity holds part of z during the fit: give --fit-steps too")


def handle_errors(command):
    """Turn library errors into one line on stderr and an exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GroupaeError as exc:
            typer.echo(f"groupae: error: {exc}", err=True)
            if getattr(exc, "fatal", False):  # HDF5 failed mid-flush: its finalisers could crash
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(exc.exit_code)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("groupae: interrupted", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:  # e.g. `groupae info x.sdf --json | head -1`
            sys.stderr.close()
            raise typer.Exit(0) from None
        except OSError as exc:  # what the library did not put in words: still one line, exit 2
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(f"groupae: error: {where}{os_error_text(exc)}", err=True)
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper


_QUICK_EXIT = [False]


def allow_quick_exit() -> None:
    """Said by a command whose outputs are all written and closed: the process may end without
    the interpreter's teardown, which takes about half a second once torch is loaded (see
    `quick_exit`)."""
    _QUICK_EXIT[0] = True


def quick_exit(code) -> None:
    """End the process now with `code` (an exit status, None or a message) if the command allowed
    it, flushing stdout and stderr first; otherwise return, and Python exits as usual."""
    if not _QUICK_EXIT[0]:
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        sys.stderr.write(f"{code}\n")
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(status)


def progress(iterable, quiet: bool, **kwargs):
    """A tqdm bar on stderr, shown only on a terminal and without --quiet."""
    from tqdm import tqdm

    return tqdm(iterable, disable=quiet or not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True, **kwargs)


def read_progress(paths, fmt: str | None, quiet: bool, desc: str):
    """(file number, record) over the inputs, read in this process, with a progress bar (see
    `stream_progress`)."""
    from groupae_cli.io.parallel import RecordStream

    yield from stream_progress(RecordStream(paths, fmt), quiet, desc)


def stream_progress(stream, quiet: bool, desc: str):
    """The items of a RecordStream, with a bar on stderr whose total is the inputs' size in bytes
    (compressed size for .gz), so it shows a percentage and an ETA; the records read so far are its
    postfix. With stdin among the inputs the total is unknown: a plain record count."""
    import os

    paths = stream.paths
    if "-" in paths:
        yield from progress(stream, quiet, desc=desc, unit=" rec")
        return
    sizes = [os.path.getsize(p) for p in paths]
    done = [0] * len(paths)
    bar = progress(None, quiet, total=sum(sizes), desc=desc, unit="B", unit_scale=True, unit_divisor=1024)

    def on_bytes(number: int, n: int) -> None:
        done[number] = max(done[number], min(n, sizes[number]))  # workers report positions out of step
        for earlier in range(number):  # a worker's position is reported now and then: the files before are read
            done[earlier] = sizes[earlier]
        bar.update(sum(done) - bar.n)

    stream.on_bytes = on_bytes
    records = 0
    try:
        for number, item in stream:
            records += 1
            bar.set_postfix_str(f"{records} records", refresh=False)
            yield number, item
        bar.update(bar.total - bar.n)
    finally:
        bar.close()


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


__all__ = ["EXIT_USAGE", "Device", "Format", "Json", "Model", "Quiet", "Strict", "handle_errors", "print_json", "progress",
           "read_progress", "stream_progress"]
