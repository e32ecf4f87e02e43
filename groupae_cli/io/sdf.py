"""SDF / MOL through RDKit: hydrogens kept as written, bonds and formal charges kept.

Records are cut at `$$$$` here (so a broken record is known by its index and title) and each is
parsed by RDKit without sanitisation: the geometry, elements and bonds as written are what groupae
needs, and a valence RDKit dislikes is no reason to drop a structure.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np

from groupae_cli.errors import Failure
from groupae_cli.io.formats import (
    MAX_LINE_BYTES,
    MAX_RECORD_BYTES,
    bounded_lines,
    text_output,
    too_large,
)
from groupae_cli.io.records import SKIPPED, Structure, checked

_TIMESTAMP = re.compile(r"^\[\d\d:\d\d:\d\d\]\s*")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(_TIMESTAMP.sub("", record.getMessage()).strip())


@contextlib.contextmanager
def rdkit_messages() -> Iterator[list[str]]:
    """Collect RDKit's log messages instead of letting them reach stderr."""
    from rdkit import rdBase

    rdBase.LogToPythonLogger()
    logger = logging.getLogger("rdkit")
    saved = logger.handlers[:], logger.propagate
    capture = _Capture()
    logger.handlers[:] = [capture]
    logger.propagate = False
    try:
        yield capture.messages
    finally:
        logger.handlers[:], logger.propagate = saved


#: A MOL block's counts line (its 4th): atom and bond counts ... V2000 or V3000.
_COUNTS_LINE = re.compile(r"^\s*\d+\s+\d+\s.*V[23]000\s*$")


_BINARY = "binary data, not an SDF record"


#: A record's end: a line that is `$$$$` (a `\r` before its newline allowed).
_TERMINATOR = re.compile(rb"^\$\$\$\$\r*$", re.MULTILINE)
#: Bytes asked of the stream at a time (`read1`: what a pipe has, up to this; the first record
#: comes out as soon as it is in).
_CHUNK_BYTES = 1 << 16
#: Text read without a `$$$$` beyond which the record goes line by line (bounded memory; a record
#: this large is rare, and line by line reads it as before).
_PENDING_BYTES = 1 << 20


def _blocks(stream: BinaryIO, limit: int | None = None) -> Iterator[tuple[int, str | int | None, str]]:
    """(first line number, text or why there is none, first line) for each record: the text is
    None for binary data and an int (the bytes read) for a record over `limit` bytes (default
    MAX_RECORD_BYTES), whose lines are not kept (nor are a binary record's): memory is bounded.

    Records end at `$$$$`, and also where a new MOL block begins after a block's `M  END` (MOL
    files concatenated without `$$$$`: RDKit would read the first and drop the rest): after `M  END`
    only SD data items may come, so a counts line there is the 4th line of the next molecule.

    The text is cut at `$$$$` in large blocks; a record that is not plain (binary bytes, invalid
    UTF-8, more than one `M  END`, over a line's or `limit`'s size) and the text after the last
    `$$$$` go through `_line_blocks`, which gives what a line-by-line reading gives.
    """
    limit = MAX_RECORD_BYTES if limit is None else limit
    pending, line = b"", 1  # text not yet cut into records; the line number of its first line
    read = getattr(stream, "read1", stream.read)

    def by_lines(data: bytes, first_line: int):
        for start, text, title in _line_blocks(bounded_lines(io.BytesIO(data)), limit):
            yield start + first_line - 1, text, title

    while chunk := read(_CHUNK_BYTES):
        scanned = pending.rfind(b"\n") + 1  # the lines before it hold no `$$$$`: not searched again
        data = pending + chunk if pending else chunk
        cut = 0
        for match in _TERMINATOR.finditer(data, scanned):
            end = match.end()
            if end == len(data) or data[end : end + 1] != b"\n":
                break  # the terminator's line may go on in the next chunk
            record = data[cut : match.start()]
            plain = (len(record) <= min(limit, MAX_LINE_BYTES) and b"\x00" not in record
                     and record.count(b"M  END") <= 1)
            text = record.decode("utf-8", errors="replace") if plain else ""
            if plain and "\ufffd" not in text:
                newline = text.find("\n")
                yield line, text, text[: newline + 1] if newline >= 0 else text
            else:
                yield from by_lines(data[cut : end + 1], line)
            line += record.count(b"\n") + 1
            cut = end + 1
        pending = data[cut:]
        if len(pending) > _PENDING_BYTES:  # a long record: line by line (bounded) to its `$$$$`, then blocks again
            lines = itertools.chain(bounded_lines(io.BytesIO(pending + stream.readline(MAX_LINE_BYTES))),
                                    bounded_lines(stream))
            counted = [0]  # lines read, the record's `$$$$` included
            for start, text, title in _line_blocks(_through_terminator(lines, counted), limit):
                yield start + line - 1, text, title
            line += counted[0]
            pending = b""
    if pending:
        yield from by_lines(pending, line)


def _through_terminator(lines: Iterator[bytes], counted: list[int]) -> Iterator[bytes]:
    """The lines up to and including the next `$$$$` line, counted in `counted[0]`."""
    for raw in lines:
        counted[0] += 1
        yield raw
        if raw.rstrip(b"\r\n") == b"$$$$":
            return


def _line_blocks(raw_lines: Iterable[bytes], limit: int) -> Iterator[tuple[int, str | int | None, str]]:
    """`_blocks` line by line, every case handled: binary data, records over `limit`, MOL blocks
    concatenated without `$$$$`, the last record without one."""
    lines: list[str] = []
    start = 1
    binary = False
    size = 0  # bytes of the current record
    end = None  # index in `lines` of the current block's `M  END`

    def text(kept: list[str]):
        return None if binary else size if size > limit else "".join(kept)

    for lineno, raw in enumerate(raw_lines, 1):
        line = raw.decode("utf-8", errors="replace")
        bare = line.rstrip("\r\n")
        if bare == "$$$$":
            yield start, text(lines), lines[0] if lines else ""
            lines, start, binary, size, end = [], lineno + 1, False, 0, None
            continue
        binary = binary or "\x00" in line or "\ufffd" in line
        size += len(raw)
        if end is not None and len(lines) - 3 > end and _COUNTS_LINE.match(bare):
            cut = len(lines) - 3  # the next molecule's title, program and comment lines come first
            yield start, text(lines[:cut]), lines[0]
            lines, start, end = lines[cut:], start + cut, None
            size = sum(len(kept) for kept in lines)
        if bare.startswith("M  END"):
            end = len(lines)
        if not lines or (not binary and size <= limit):
            lines.append(line)
    if any(line.strip() for line in lines):
        yield start, text(lines), lines[0]


def _structure(mol, source: str, index: int, name: str, conf_id: int = -1,
               geometry_only: bool = False) -> Structure | str:
    """The Structure of an RDKit molecule's conformer `conf_id`, or why there is none; with
    `geometry_only`, its elements and positions without bonds and charges."""
    if mol.GetNumConformers() == 0:
        return "no coordinates"
    conf = mol.GetConformer(conf_id)
    positions = conf.GetPositions()
    if not conf.Is3D() and len(positions) > 2 and np.all(positions[:, 2] == 0):
        return "2D coordinates (header says 2D, all z = 0); groupae needs 3D structures"
    # by index, not through mol.GetAtoms() / GetBonds(): RDKit's Python sequence wrappers cost
    # more than the parse itself
    atoms = [mol.GetAtomWithIdx(i) for i in range(mol.GetNumAtoms())]
    if geometry_only:  # what embedding reads: the calls for bonds and charges are a quarter of the reading
        return Structure(numbers=[a.GetAtomicNum() for a in atoms], positions=positions, name=name, source=source,
                         index=index)
    bond_list = [mol.GetBondWithIdx(i) for i in range(mol.GetNumBonds())]
    bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in bond_list], dtype=np.int64).reshape(-1, 2)
    return Structure(
        numbers=[a.GetAtomicNum() for a in atoms],
        positions=positions,
        name=name,
        source=source,
        index=index,
        bonds=bonds,
        bond_orders=np.array([b.GetBondTypeAsDouble() for b in bond_list], dtype=np.float64),
        charges=np.array([a.GetFormalCharge() for a in atoms], dtype=np.int64),
    )


def read_sdf(stream: BinaryIO, source: str, wanted: Callable[[int], bool] | None = None,
             geometry_only: bool = False) -> Iterator[Structure | Failure]:
    """Yield every record of an SDF/MOL stream as a Structure or a Failure (SKIPPED, unparsed,
    for a record index that `wanted` rejects). With `geometry_only`, records hold their elements
    and positions, not their bonds, charges or SD properties (what embedding reads)."""
    from rdkit import Chem

    stem = Path(source).name.split(".")[0] if source != "-" else "stdin"
    for index, (lineno, block, title) in enumerate(_blocks(stream)):
        if wanted is not None and not wanted(index):
            yield SKIPPED
            continue
        name = title.strip() or f"{stem}:{index}"
        if block is None or isinstance(block, int):
            why = _BINARY if block is None else too_large(block)
            yield Failure(source, index, f"line {lineno}: {why}", name if title.isprintable() else "")
            continue
        with rdkit_messages() as messages:
            mol = Chem.MolFromMolBlock(block, sanitize=False, removeHs=False, strictParsing=True)
        if mol is None:
            why = messages[-1] if messages else "RDKit could not parse it"
            yield Failure(source, index, f"record starting at line {lineno}: {why}", name)
            continue
        if not geometry_only:
            mol.UpdatePropertyCache(strict=False)
        result = _structure(mol, source, index, name, geometry_only=geometry_only)
        if isinstance(result, str):
            yield Failure(source, index, result, name)
            continue
        if not geometry_only:
            result.properties = sd_properties(block)
        yield checked(result)


_DATA_HEADER = re.compile(r"^>.*?<([^>]*)>")


def sd_properties(block: str) -> dict[str, str]:
    """The SD data items after a record's `M  END` (`> <name>` then value lines up to a blank
    line), as name -> value (lines joined by newlines), in file order."""
    end = block.find("M  END")
    if end < 0:
        return {}
    properties: dict[str, str] = {}
    key, values = None, []
    for line in block[end:].splitlines()[1:]:
        header = _DATA_HEADER.match(line)
        if key is None and header:
            key, values = header.group(1), []
        elif key is not None and not line.strip():
            properties[key] = "\n".join(values)
            key = None
        elif key is not None:
            values.append(line)
    if key is not None:
        properties[key] = "\n".join(values)
    return properties


#: How a written record's bonds were obtained, in the order tried (the `groupae_bonds` SD property).
BOND_SOURCES = ("input", "perceived", "connectivity", "none")
#: Bound on RDKit's bond-order search (real molecules need well under 100 iterations).
_MAX_BOND_ORDER_ITERATIONS = 1000


def _atoms(structure: Structure):
    """An RDKit molecule with the structure's atoms, formal charges and coordinates, no bonds."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    mol = Chem.RWMol()
    charges = structure.charges if structure.charges is not None else np.zeros(len(structure), int)
    for z, q in zip(structure.numbers.tolist(), charges.tolist()):
        atom = Chem.Atom(int(z))
        atom.SetFormalCharge(int(q))
        atom.SetNoImplicit(True)
        mol.AddAtom(atom)
    conf = Chem.Conformer(len(structure))
    for k, (x, y, z) in enumerate(structure.positions.tolist()):
        conf.SetAtomPosition(k, Point3D(x, y, z))
    conf.Set3D(True)
    mol.AddConformer(conf, assignId=True)
    return mol


def _add_bonds(mol, structure: Structure) -> None:
    """The structure's own bonds, with their orders (1.5: aromatic)."""
    from rdkit import Chem

    types = {1.0: Chem.BondType.SINGLE, 1.5: Chem.BondType.AROMATIC, 2.0: Chem.BondType.DOUBLE, 3.0: Chem.BondType.TRIPLE}
    orders = structure.bond_orders if structure.bond_orders is not None else np.ones(len(structure.bonds))
    for (i, j), order in zip(structure.bonds.tolist(), orders.tolist()):
        mol.AddBond(int(i), int(j), types.get(float(order), Chem.BondType.SINGLE))
        if order == 1.5:
            mol.GetBondBetweenAtoms(int(i), int(j)).SetIsAromatic(True)
            mol.GetAtomWithIdx(int(i)).SetIsAromatic(True)
            mol.GetAtomWithIdx(int(j)).SetIsAromatic(True)


def _bonded(atoms, structure: Structure, how: str):
    """A copy of `atoms` with bonds got as `how` says, or None when RDKit cannot get them."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    mol = Chem.RWMol(atoms)
    if how == "input":
        _add_bonds(mol, structure)
        return mol
    charge = int(structure.charges.sum()) if structure.charges is not None else 0
    with rdkit_messages():
        try:
            if how == "perceived":
                rdDetermineBonds.DetermineBonds(mol, charge=charge, maxIterations=_MAX_BOND_ORDER_ITERATIONS)
            else:
                rdDetermineBonds.DetermineConnectivity(mol)
        except (RuntimeError, ValueError):  # geometry too odd: no consistent bonds
            return None
    return mol


def _reads_back(mol) -> bool:
    """Whether RDKit reads the molecule's SDF record back with its default sanitisation."""
    from rdkit import Chem

    mol.UpdatePropertyCache(strict=False)
    with rdkit_messages():
        # sanitising a copy first fails fast on the crowded valences of a blurred decoding, where
        # writing the record would be slow (ring perception on a near-complete graph)
        try:
            Chem.SanitizeMol(Chem.Mol(mol))
        except (RuntimeError, ValueError):
            return False
        return Chem.MolFromMolBlock(Chem.MolToMolBlock(mol, kekulize=False)) is not None


def to_rdkit(structure: Structure, perceive_bonds: bool = True):
    """An RDKit molecule with the structure's atoms, coordinates, charges, bonds and properties.

    Without `perceive_bonds` the bonds are the structure's own, as given. With it the molecule is
    one whose SDF record RDKit reads back with sanitisation: the structure's bonds when they
    sanitise, else bonds perceived from the geometry (RDKit's DetermineBonds), else connectivity
    alone (DetermineConnectivity, single bonds), else none. The `groupae_bonds` property says which
    (see BOND_SOURCES).
    """
    atoms = _atoms(structure)
    mol, how = atoms, "none"
    if not perceive_bonds and structure.has_bonds:
        mol, how = _bonded(atoms, structure, "input"), "input"
    elif perceive_bonds:
        tries = BOND_SOURCES[:-1] if structure.has_bonds else BOND_SOURCES[1:-1]
        for candidate in tries:
            bonded = _bonded(atoms, structure, candidate)
            if bonded is not None and _reads_back(bonded):
                mol, how = bonded, candidate
                break
    mol.SetProp("_Name", structure.name)
    mol.SetProp("groupae_bonds", how)
    for key, value in structure.properties.items():
        mol.SetProp(key, value)
    mol.UpdatePropertyCache(strict=False)
    return mol.GetMol()


def write_sdf(structures, out: TextIO | str | Path, perceive_bonds: bool = True) -> int:
    """Write structures as SDF records that RDKit reads back (see `to_rdkit`); returns the count."""
    from rdkit import Chem

    count = 0
    with text_output(out) as stream:
        writer = Chem.SDWriter(stream)
        writer.SetKekulize(False)
        try:
            for s in structures:
                writer.write(to_rdkit(s, perceive_bonds))
                count += 1
        finally:
            writer.close()
    return count
