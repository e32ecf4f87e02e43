"""PDB and MOL2 through RDKit: proteins and ligands, hydrogens kept as written.

PDB: one record per MODEL (a file without MODEL lines is one record); lines before the first
MODEL and after the last ENDMDL (HEADER, CONECT, ...) go with every model. RDKit gives the bonds:
CONECT records where the file has them, bonding by distance elsewhere (standard residues get their
bond orders from RDKit's residue templates). MOL2: one record per `@<TRIPOS>MOLECULE`, its name
from the line after it; bonds and bond orders as written.

Each record is parsed without sanitisation (a valence RDKit dislikes is no reason to drop a
structure); one RDKit cannot parse is a failure naming the file, the record and the line it
starts at, with RDKit's own reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from groupae_cli.errors import Failure
from groupae_cli.io.records import SKIPPED, Structure, checked
from groupae_cli.io.sdf import _structure, rdkit_messages

#: Lines of RDKit's error reports that say nothing about the cause (a stack trace's frame).
_NOISE = ("****", "Post-condition Violation", "Pre-condition Violation", "Invariant Violation", "Violation occurred",
          "Failed Expression", "Stacktrace", "----------")


def rdkit_reason(messages: list[str], default: str = "RDKit could not parse it") -> str:
    """The line of RDKit's captured messages that gives the cause, without stack-trace noise."""
    lines = [line.strip() for message in messages for line in message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(_NOISE) and not line[0].isdigit()]
    return useful[0] if useful else default


def _lines(stream: BinaryIO) -> list[str] | None:
    """The stream's lines, or None for binary data."""
    lines = []
    for raw in stream:
        line = raw.decode("utf-8", errors="replace")
        if "\x00" in line or "\ufffd" in line:
            return None
        lines.append(line)
    return lines


def _stem(source: str) -> str:
    return Path(source).name.split(".")[0] if source != "-" else "stdin"


def _record(mol, source: str, index: int, name: str, lineno: int, messages: list[str],
            geometry_only: bool = False) -> Structure | Failure:
    if mol is None:
        return Failure(source, index, f"record starting at line {lineno}: {rdkit_reason(messages)}", name)
    if not geometry_only:
        mol.UpdatePropertyCache(strict=False)
    result = _structure(mol, source, index, name, geometry_only=geometry_only)
    return Failure(source, index, result, name) if isinstance(result, str) else checked(result)


def pdb_models(lines: list[str]) -> list[tuple[int, str]]:
    """(first line number, PDB text) of each model: the lines of one MODEL ... ENDMDL with the
    lines outside every model (header before, CONECT after); the whole file without MODEL lines."""
    starts = [k for k, line in enumerate(lines) if line.startswith("MODEL")]
    if not starts:
        return [(1, "".join(lines))]
    ends = [k for k, line in enumerate(lines) if line.startswith("ENDMDL")]
    last = ends[-1] if ends and ends[-1] > starts[-1] else len(lines) - 1
    head, tail = lines[: starts[0]], lines[last + 1 :]
    models = []
    for k, start in enumerate(starts):
        stop = starts[k + 1] if k + 1 < len(starts) else last + 1
        models.append((start + 1, "".join(head + lines[start:stop] + tail)))
    return models


def read_pdb(stream: BinaryIO, source: str, wanted: Callable[[int], bool] | None = None,
             geometry_only: bool = False) -> Iterator[Structure | Failure]:
    """Yield every model of a PDB stream as a Structure or a Failure (`geometry_only`: see read_sdf)."""
    from rdkit import Chem

    lines = _lines(stream)
    if lines is None:
        yield Failure(source, 0, "binary data, not a PDB file")
        return
    stem = _stem(source)
    for index, (lineno, block) in enumerate(pdb_models(lines)):
        if wanted is not None and not wanted(index):
            yield SKIPPED
            continue
        name = f"{stem}:{index}"
        with rdkit_messages() as messages:
            try:
                mol = Chem.MolFromPDBBlock(block, sanitize=False, removeHs=False)
            except (RuntimeError, ValueError) as exc:
                messages.append(str(exc))
                mol = None
        if mol is not None and mol.GetNumAtoms() == 0:
            mol, messages = None, ["no ATOM or HETATM records"]
        yield _record(mol, source, index, name, lineno, messages, geometry_only)


def read_mol2(stream: BinaryIO, source: str, wanted: Callable[[int], bool] | None = None,
              geometry_only: bool = False) -> Iterator[Structure | Failure]:
    """Yield every molecule of a MOL2 stream as a Structure or a Failure (`geometry_only`: see read_sdf)."""
    from rdkit import Chem

    lines = _lines(stream)
    if lines is None:
        yield Failure(source, 0, "binary data, not a MOL2 file")
        return
    starts = [k for k, line in enumerate(lines) if line.startswith("@<TRIPOS>MOLECULE")]
    if not starts:
        yield Failure(source, 0, "no @<TRIPOS>MOLECULE record")
        return
    stem = _stem(source)
    for index, start in enumerate(starts):
        if wanted is not None and not wanted(index):
            yield SKIPPED
            continue
        block = lines[start : starts[index + 1] if index + 1 < len(starts) else len(lines)]
        title = block[1].strip() if len(block) > 1 else ""
        name = title if title and title.isprintable() else f"{stem}:{index}"
        with rdkit_messages() as messages:
            try:
                mol = Chem.MolFromMol2Block("".join(block), sanitize=False, removeHs=False)
            except (RuntimeError, ValueError) as exc:
                messages.append(str(exc))
                mol = None
        yield _record(mol, source, index, name, start + 1, messages, geometry_only)
