"""`groupae align A B`: rotation, translation, atom correspondence and RMSD, without atom order.

A is the moving structure, B the reference. Records pair up like numpy broadcasting: a file with
one record goes against every record of the other (a conformer ensemble onto one reference, one
structure onto several references); two files with several records pair record by record (equal
counts); `--all-pairs` aligns every record of A onto every record of B. `--pairs FILE` lists
(A, B) file pairs, one per line, all aligned in this one process.

Start-up matters (a pair should take well under a second end to end): options and paths are
checked before any structure is read, and torch is imported only for `--model`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from groupae_cli.cli.common import (
    Device,
    Format,
    Quiet,
    handle_errors,
    progress,
)

#: The keys of every JSON Lines row, in order; a key that does not apply to a pair is null.
ROW_KEYS = ("a_file", "a_index", "a_name", "b_file", "b_index", "b_name", "atoms", "match", "bonds_a", "bonds_b",
            "refined", "rmsd", "rotation", "translation", "mapping", "proven_optimal", "isomorphisms", "skeleton_isomorphisms",
            "skeleton_complete", "completed_skeletons", "rmsd_lower_bound", "time_limit_reached", "starts", "converged",
            "principal_axes_a",
            "principal_axes_b", "model", "learned_rmsd", "learned_was_optimal", "learned_frame_degenerate")


def read_pairs(path: str) -> list[tuple[str, str]]:
    """(A path, B path) per line of a pairs file ('-': stdin): two paths per line, shell-quoted
    where they hold spaces; blank lines and # comments skipped. Relative paths are relative to
    the pairs file's folder (to the working directory for stdin)."""
    import shlex

    from groupae_cli.errors import UsageError

    if path == "-":
        text, base = sys.stdin.read(), Path(".")
    else:
        try:
            text, base = Path(path).read_text(), Path(path).parent
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the pairs file ({exc.strerror or exc})") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise UsageError(f"{path} line {number}: {exc}") from None
        if not words:
            continue
        if len(words) != 2:
            raise UsageError(f"{path} line {number}: two paths per line (A B), found {len(words)}")
        pairs.append(tuple("-" if w == "-" else str(base / w) for w in words))
    if not pairs:
        raise UsageError(f"{path}: no pairs (two paths per line: A B)")
    return pairs


def plan(a_count: int, b_count: int, all_pairs: bool, a: str, b: str) -> list[tuple[int, int]]:
    """Which (A record, B record) pairs to align: broadcasting (one record against every record of
    the other file), record by record for equal counts, or every pair with `all_pairs`."""
    from groupae_cli.errors import UsageError

    if all_pairs or a_count == 1 or b_count == 1:
        return [(i, j) for i in range(a_count) for j in range(b_count)]
    if a_count != b_count:
        raise UsageError(f"{a} has {a_count} records and {b} has {b_count}: records pair one by one only for "
                         "equal counts; --all-pairs aligns every record of A onto every record of B")
    return [(i, i) for i in range(a_count)]


def _records(path: str, fmt: str | None) -> list:
    """Every record of a file, a Failure in place of each unusable one; UsageError for a file
    with no usable record at all when the whole file failed (empty, unreadable)."""
    from groupae_cli.errors import Failure, UsageError
    from groupae_cli.io import read_structures

    items = list(read_structures(path, fmt))
    records = [r for r in items if not (isinstance(r, Failure) and r.index is None)]
    if not records:
        raise UsageError(str(items[0]) if items else f"{path}: no records")
    return records


def _label(item, path: str) -> str:
    name = f" ({item.name})" if item.name else ""
    return f"{path} record {item.index}{name}"


def row(a, b, result, model_path) -> dict:
    """One pair's JSON Lines object: always the keys of ROW_KEYS, in that order."""
    values = result.as_dict()
    values.update(a_file=a.source, a_index=a.index, a_name=a.name, b_file=b.source, b_index=b.index,
                  b_name=b.name, atoms=len(a), match=result.mode.split()[0],
                  refined="not refined" not in result.mode, model=None if model_path is None else str(model_path))
    return {key: values.get(key) for key in ROW_KEYS}


def _note(r: dict) -> str:
    notes = []
    perceived = [side for side in ("A", "B") if r[f"bonds_{side.lower()}"] == "perceived"]
    if perceived:
        notes.append(f"bonds perceived ({', '.join(perceived)})")
    if r["time_limit_reached"]:
        notes.append("time limit reached")
    if r["proven_optimal"] is False:
        notes.append("not proven optimal (--prove)" if r["match"] == "graph"
                     else f"not proven optimal (bound {r['rmsd_lower_bound']:.3f})")
    shapes = sorted({r["principal_axes_a"], r["principal_axes_b"]} - {"asymmetric", None})
    if shapes:
        notes.append(f"degenerate axes: {', '.join(shapes)}")
    if r["learned_rmsd"] is not None and r["refined"]:
        notes.append(f"learned guess {r['learned_rmsd']:.3f}")
    return "; ".join(notes)


@handle_errors
def align(
    a: Annotated[str | None, typer.Argument(help="The structure(s) to move (A): every record is aligned.")] = None,
    b: Annotated[str | None, typer.Argument(help="The reference(s) (B).")] = None,
    pairs: Annotated[str | None, typer.Option("--pairs", help="A file of pairs to align in one process: two paths "
                                                 "per line (A B), relative to the file's folder.")] = None,
    all_pairs: Annotated[bool, typer.Option("--all-pairs", help="Every record of A onto every record of B "
                                             "(default: one record against every record of the other "
                                             "file, or record by record).")] = False,
    match: Annotated[str | None, typer.Option(help="elements (no bonds needed) or graph (bond-graph "
                                                       "isomorphisms; bonds perceived by RDKit where a file has "
                                                       "none); default: graph when both have bonds.")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Write every moved A record (.xyz/.sdf; SDF "
                                             "records carry groupae_rmsd and groupae_reference).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Try this model's learned guess first (a "
                                                 "checkpoint or a shipped model name, e.g. default); off by "
                                                 "default (bench/RESULTS.md: rarely optimal, and the search "
                                                 "reaches the optimum without it).")] = None,
    no_model: Annotated[bool, typer.Option("--no-model", help="No learned guess: the default; kept so existing "
                                           "scripts run.")] = False,
    no_refine: Annotated[bool, typer.Option("--no-refine", help="The learned guess alone (needs --model).")] = False,
    prove: Annotated[bool, typer.Option("--prove", help="Graph mode: complete every skeleton exactly up to 10^6 "
                                        "terminal-group permutations (slower), so more answers are proven optimal.")] = False,
    time_limit: Annotated[float | None, typer.Option("--time-limit", metavar="SECONDS", help="Element mode: "
                                                     "return the best answer found within this time per pair "
                                                     "(then not proven optimal).")] = None,
    device: Device = "auto",
    json: Annotated[bool, typer.Option("--json", help="JSON Lines on stdout: one object per pair, always the "
                                       "same keys.")] = False,
    fmt: Format = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 if any pair is skipped (default: skip and "
                                         "report).")] = False,
    quiet: Quiet = False,
) -> None:
    """Align A onto B: minimum RMSD over proper rotations, translations and atom correspondences.

    Every record of A is aligned: onto B's one record (an ensemble onto a reference), onto each of
    B's records when A has one, record by record when both have several, or onto every record of
    B with --all-pairs. --pairs FILE aligns a list of file pairs in one process.
    """
    from groupae_cli.errors import UsageError

    # --- options first: nothing is read and nothing heavy imported before they are all valid
    if match not in (None, "elements", "graph"):
        raise UsageError(f"--match must be elements or graph, not {match!r}")
    if no_model and (model is not None or no_refine):
        raise UsageError("--no-model leaves no learned guess: drop --model / --no-refine")
    if no_refine and model is None:
        raise UsageError("--no-refine returns the learned guess alone: it needs --model NAME|PATH (e.g. --model default)")
    if time_limit is not None and not time_limit > 0:
        raise UsageError(f"--time-limit must be a positive number of seconds, not {time_limit}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UsageError(f"--device must be auto, cpu or cuda[:i], not {device!r}")
    if model is not None:
        from groupae_cli import shipped_model_path, shipped_models

        if not Path(model).is_file() and not shipped_model_path(model).is_file():
            known = [p.stem for p in shipped_models()]
            raise UsageError(f"--model {model}: no such checkpoint file or shipped model "
                             f"(shipped: {', '.join(known) or 'none'})")
    if pairs is not None and (a is not None or b is not None):
        raise UsageError("give two structure files A B, or --pairs FILE, not both")
    if pairs is None and (a is None or b is None):
        raise UsageError("give two structure files: A (moved) and B (reference), or --pairs FILE")
    if out is not None:
        from groupae_cli.io.formats import format_from_name

        if out != "-" and format_from_name(out) not in ("xyz", "sdf"):
            raise UsageError(f"{out}: write the aligned structures as .xyz or .sdf")
        if out == "-" and json:
            raise UsageError("-o - and --json would both write to standard output: write one to a file")
    file_pairs = read_pairs(pairs) if pairs is not None else [(a, b)]
    from groupae_cli.io import resolve_inputs

    paths = list(dict.fromkeys(p for pair in file_pairs for p in pair))
    if pairs == "-" and "-" in paths:
        raise UsageError("standard input ('-') can be read only once")
    resolve_inputs(paths, fmt)  # each exists, in a format groupae reads; stdin at most once
    if out not in (None, "-"):
        from groupae_cli.io.formats import check_output

        check_output(out, paths)  # a directory, a missing one, or an input (it would be overwritten)

    # --- the structures, then the pairs to align
    records = {path: _records(path, fmt) for path in paths}
    jobs = [(records[pa][i], records[pb][j], pa, pb)
            for pa, pb in file_pairs for i, j in plan(len(records[pa]), len(records[pb]), all_pairs, pa, pb)]

    net, model_path = None, None
    if model is not None:  # torch only now
        from groupae_cli.cli.embed import load_for_command

        net, _, model_path = load_for_command(model, device)
    _run(jobs, match, net, model_path, not no_refine, prove, json, out, strict, quiet, time_limit)


def _starts_bar(quiet: bool):
    """A progress callback over one large pair's starts (a bar on a terminal), and the bar."""
    bar = progress(None, quiet, total=1, desc="refining starts", unit=" start")

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return update, bar


def _run(jobs, match, net, model_path, refine, prove, json_lines, out, strict, quiet, time_limit=None) -> None:
    import dataclasses
    import json

    from groupae_cli._api import align as align_pair
    from groupae_cli.errors import Failure, FailureReport, UsageError

    report = FailureReport(strict, noun="pair")
    rows, moved = [], []
    quiet_output = out == "-"
    width_a = max(len(f"{x.source}:{x.index} {x.name}") for x, _, _, _ in jobs)
    width_b = max(len(f"{y.source}:{y.index} {y.name}") for _, y, _, _ in jobs)
    header = f"{'A':<{width_a}}  {'B':<{width_b}}  {'atoms':>5}  {'RMSD/Å':>8}  {'match':<8}  note"

    def emit(line: str) -> None:
        if len(jobs) > 1:  # between redraws of the progress bar
            from tqdm import tqdm

            tqdm.write(line, file=sys.stdout)
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    for x, y, pa, pb in (progress(jobs, quiet, desc="aligning", unit=" pair") if len(jobs) > 1 else jobs):
        if isinstance(x, Failure) or isinstance(y, Failure):
            bad = x if isinstance(x, Failure) else y
            where, reason = _label(bad, bad.source), bad.reason
        else:
            from groupae_cli.align import LARGE

            update, bar = _starts_bar(quiet) if len(jobs) == 1 and len(x) >= LARGE else (None, None)
            try:
                result = align_pair(x, y, match, net, refine=refine, prove=prove, time_limit=time_limit,
                                    progress=update)
                where = reason = None
            except ValueError as exc:
                where, reason = f"{_label(x, pa)} onto {_label(y, pb)}", str(exc)
            finally:
                if bar is not None:
                    bar.close()
        if reason is not None:
            report.add(Failure(where, None, reason))
            continue
        r = row(x, y, result, model_path)
        rows.append(r)
        if out is not None:
            moved.append(dataclasses.replace(
                x, positions=result.transform(x.positions), name=f"{x.name} on {y.name}",
                properties={**x.properties, "groupae_rmsd": f"{result.rmsd:.6f}", "groupae_reference": y.name}))
        if json_lines:
            emit(json.dumps(r))
        elif not quiet_output:
            if len(rows) == 1:
                emit(header)
            emit(f"{x.source + ':' + str(x.index) + ' ' + x.name:<{width_a}}  "
                 f"{y.source + ':' + str(y.index) + ' ' + y.name:<{width_b}}  {r['atoms']:>5}  {r['rmsd']:8.4f}  "
                 f"{r['match']:<8}  {_note(r)}".rstrip())
    if not rows:
        first = str(report.failures[0])
        raise UsageError(first if len(jobs) == 1 else f"no pair aligned ({len(jobs)} failed); the first: {first}")
    if len(jobs) == 1 and not json_lines and not quiet_output:
        r = rows[0]
        typer.echo("rotation:\n" + "\n".join("  " + " ".join(f"{v:9.5f}" for v in line) for line in r["rotation"]))
        typer.echo("translation: " + " ".join(f"{v:.5f}" for v in r["translation"]))
        typer.echo("mapping (A atom -> B atom): " + " ".join(f"{i}:{j}" for i, j in enumerate(r["mapping"])))
    if out is not None:
        from groupae_cli.io import write_structures

        write_structures(moved, out)
    if not quiet:
        report.summarise()
    raise typer.Exit(report.exit_code())
