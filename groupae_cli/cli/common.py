"""What every command shares: option types, error handling, progress bars, output."""

from __future__ import annotations

import functools
import json
import sys
from typing import Annotated

import typer

from groupae_cli.errors import EXIT_USAGE, GroupaeError

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries on stderr.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Strict = Annotated[bool, typer.Option("--strict", help="Exit 1 if any record fails (default: skip and report).")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu, or cuda[:i].")]
Model = Annotated[str | None, typer.Option("--model", "-m", help="A checkpoint path, or the name of a model shipped "
                                              "with groupae (default: the shipped default model).")]
Format = Annotated[
    str | None,
    typer.Option("--format", "-f", help="Input format (xyz, sdf, ply) when the extension does not tell, e.g. for '-'."),
]


def handle_errors(command):
    """Turn library errors into one line on stderr and an exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GroupaeError as exc:
            typer.echo(f"groupae: error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("groupae: interrupted", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:  # e.g. `groupae info x.sdf --json | head -1`
            sys.stderr.close()
            raise typer.Exit(0) from None

    return wrapper


def progress(iterable, quiet: bool, **kwargs):
    """A tqdm bar on stderr, shown only on a terminal and without --quiet."""
    from tqdm import tqdm

    return tqdm(iterable, disable=quiet or not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True, **kwargs)


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


__all__ = ["EXIT_USAGE", "Device", "Format", "Json", "Model", "Quiet", "Strict", "handle_errors", "print_json", "progress"]
