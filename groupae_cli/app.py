"""The `groupae` command line: a thin Typer root; each command lives in groupae_cli/cli/.

Heavy imports (torch, rdkit, h5py, ...) happen inside the commands, so `groupae --help` is instant.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from groupae_cli import __version__
from groupae_cli.cli import align, embed, info, merge, reconstruct, train

app = typer.Typer(
    name="groupae",
    help="Learn what a 3D structure is apart from its pose and atom order (SE(3) x S_n group autoencoder).",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"groupae {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """Learn what a 3D structure is apart from its pose and atom order (SE(3) x S_n group autoencoder)."""


app.command("train")(train.train)
app.command("embed")(embed.embed)
app.command("merge")(merge.merge)
app.command("reconstruct")(reconstruct.reconstruct)
app.command("align")(align.align)
app.command("info")(info.info)


def main() -> None:
    from groupae_cli.cli.common import quick_exit
    from groupae_cli.early_worker import start_for_command_line

    start_for_command_line(sys.argv)  # embed's first worker imports torch while typer parses
    try:
        app()
    except SystemExit as exc:
        quick_exit(exc.code)
        raise
