"""`groupae align A B`: rotation, translation, atom correspondence and RMSD, without atom order."""

from __future__ import annotations

from typing import Annotated

import typer

from groupae_cli.cli.common import (
    Device,
    Format,
    Json,
    Quiet,
    handle_errors,
    print_json,
)


def _one(path: str, fmt: str | None):
    from groupae_cli.errors import Failure, UsageError
    from groupae_cli.io import read_structures

    for item in read_structures(path, fmt):
        if isinstance(item, Failure):
            raise UsageError(str(item))
        return item
    raise UsageError(f"{path}: no structure")


@handle_errors
def align(
    a: Annotated[str, typer.Argument(help="The structure to move (A).")],
    b: Annotated[str, typer.Argument(help="The reference (B); with several records, A is aligned to each.")],
    match: Annotated[str | None, typer.Option(help="elements (no bonds needed) or graph (bond-graph "
                                                       "isomorphisms); default: graph when both have bonds.")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Write A moved onto B (.xyz/.sdf).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="A checkpoint or shipped model whose learned "
                                                 "guess is tried first (the answer with --no-refine); default: the "
                                                 "shipped default model, when it knows A's elements.")] = None,
    no_model: Annotated[bool, typer.Option("--no-model", help="No learned guess: the exact search alone.")] = False,
    no_refine: Annotated[bool, typer.Option("--no-refine", help="The learned guess alone.")] = False,
    prove: Annotated[bool, typer.Option("--prove", help="Graph mode: complete every skeleton exactly up to 10^6 "
                                        "terminal-group permutations (slower), so more answers are proven optimal.")] = False,
    device: Device = "auto",
    json: Json = False,
    fmt: Format = None,
    quiet: Quiet = False,
) -> None:
    """Align A onto B: minimum RMSD over proper rotations, translations and atom correspondences."""
    from groupae_cli._api import align as align_pair
    from groupae_cli.errors import Failure, FailureReport, UsageError
    from groupae_cli.io import Structure, read_structures, write_structures

    first = _one(a, fmt)
    if no_model and (model or no_refine):
        raise UsageError("--no-model leaves no learned guess: drop --model / --no-refine")
    net, model_path = None, None
    if not no_model:
        from groupae_cli.cli.embed import load_for_command
        from groupae_cli.embed import usable

        explicit = model is not None or no_refine
        try:
            net, _, model_path = load_for_command(model, device)
        except UsageError:
            if explicit:
                raise  # otherwise no default model is shipped: the exact search alone
        why = usable(first, net) if net is not None else None
        if why is not None:
            if explicit:
                raise UsageError(f"{a}: the model cannot take it ({why})")
            net = None  # the default model cannot take A (a point cloud, an unknown element)
    report = FailureReport()
    results, moved = [], []
    for ref in read_structures(b, fmt):
        if isinstance(ref, Failure):
            report.add(ref)
            continue
        try:
            result = align_pair(first, ref, match, net, refine=not no_refine, prove=prove)
        except ValueError as exc:
            report.add(Failure(ref.source, ref.index, str(exc), ref.name))
            continue
        results.append({"reference": ref.name, "index": ref.index, **result.as_dict(),
                        "model": str(model_path) if net is not None else None})
        moved.append(Structure(first.numbers, result.transform(first.positions), f"{first.name} on {ref.name}", first.source, first.index,
                               bonds=first.bonds, bond_orders=first.bond_orders, charges=first.charges))
    if not results:
        raise UsageError(f"nothing aligned: {report.failures[0] if report.failures else 'no reference structure'}")
    if out:
        from groupae_cli.io.formats import format_from_name

        if out != "-" and format_from_name(out) not in ("xyz", "sdf"):
            raise UsageError(f"{out}: write the aligned structure as .xyz or .sdf")
        write_structures(moved, out)
    if json:
        print_json(results[0] if len(results) == 1 else results)
    elif out != "-":
        for r in results:
            typer.echo(f"{first.name} -> {r['reference']}: RMSD {r['rmsd']:.4f} Å ({r['mode']})")
            shapes = {r.get("principal_axes_a"), r.get("principal_axes_b")} - {"asymmetric", None}
            if shapes:
                typer.echo(f"  degenerate principal axes ({', '.join(sorted(shapes))}): extra starts searched")
            if r.get("proven_optimal") is False:
                typer.echo("  not proven optimal (rerun with --prove for an exhaustive completion)")
            if len(results) == 1:
                typer.echo("rotation:\n" + "\n".join("  " + " ".join(f"{v:9.5f}" for v in row) for row in r["rotation"]))
                typer.echo("translation: " + " ".join(f"{v:.5f}" for v in r["translation"]))
                typer.echo("mapping (A atom -> B atom): " + " ".join(f"{i}:{j}" for i, j in enumerate(r["mapping"])))
    if not quiet:
        report.summarise()
    raise typer.Exit(0)
