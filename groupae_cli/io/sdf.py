"""SDF / MOL through RDKit: hydrogens kept as written, bonds and formal charges kept.

Records are cut at `$$$$` here (so a broken record is known by its index and title) and each is
parsed by RDKit without sanitisation: the geometry, elements and bonds as written are what groupae
needs, and a valence RDKit dislikes is no reason to drop a structure.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np

from groupae_cli.errors import Failure
from groupae_cli.io.formats import text_output
from groupae_cli.io.records import Structure, checked

_TIMESTAMP = re.compile(r"^\[\d\d:\d\d:\d\d\]\s*")
_MAX_RECORD_LINES = 1_000_000


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


def _blocks(stream: BinaryIO) -> Iterator[tuple[int, str | None, str]]:
    """(first line number, text or None when binary, first line) for each `$$$$`-separated record."""
    lines: list[str] = []
    start = 1
    binary = False
    for lineno, raw in enumerate(stream, 1):
        line = raw.decode("utf-8", errors="replace")
        if line.rstrip("\r\n") == "$$$$":
            yield start, None if binary else "".join(lines), lines[0] if lines else ""
            lines, start, binary = [], lineno + 1, False
            continue
        binary = binary or "\x00" in line or "\ufffd" in line
        if len(lines) < _MAX_RECORD_LINES:
            lines.append(line)
    if any(line.strip() for line in lines):
        yield start, None if binary else "".join(lines), lines[0]


def _structure(mol, source: str, index: int, name: str) -> Structure | str:
    if mol.GetNumConformers() == 0:
        return "no coordinates"
    conf = mol.GetConformer()
    positions = conf.GetPositions()
    if not conf.Is3D() and len(positions) > 2 and np.all(positions[:, 2] == 0):
        return "2D coordinates (header says 2D, all z = 0); groupae needs 3D structures"
    # by index, not through mol.GetAtoms() / GetBonds(): RDKit's Python sequence wrappers cost
    # more than the parse itself
    atoms = [mol.GetAtomWithIdx(i) for i in range(mol.GetNumAtoms())]
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


def read_sdf(stream: BinaryIO, source: str) -> Iterator[Structure | Failure]:
    """Yield every record of an SDF/MOL stream as a Structure or a Failure."""
    from rdkit import Chem

    stem = Path(source).name.split(".")[0] if source != "-" else "stdin"
    for index, (lineno, block, title) in enumerate(_blocks(stream)):
        name = title.strip() or f"{stem}:{index}"
        if block is None:
            yield Failure(source, index, f"line {lineno}: binary data, not an SDF record", name if title.isprintable() else "")
            continue
        with rdkit_messages() as messages:
            mol = Chem.MolFromMolBlock(block, sanitize=False, removeHs=False, strictParsing=True)
        if mol is None:
            why = messages[-1] if messages else "RDKit could not parse it"
            yield Failure(source, index, f"record starting at line {lineno}: {why}", name)
            continue
        mol.UpdatePropertyCache(strict=False)
        result = _structure(mol, source, index, name)
        yield Failure(source, index, result, name) if isinstance(result, str) else checked(result)


def to_rdkit(structure: Structure, perceive_bonds: bool = True):
    """An RDKit molecule with the structure's atoms, coordinates, charges and bonds.

    Without bonds, connectivity is perceived from the geometry (RDKit's DetermineConnectivity)
    when `perceive_bonds` is set.
    """
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    mol = Chem.RWMol()
    charges = structure.charges if structure.charges is not None else np.zeros(len(structure), int)
    for z, q in zip(structure.numbers.tolist(), charges.tolist()):
        atom = Chem.Atom(int(z))
        atom.SetFormalCharge(int(q))
        atom.SetNoImplicit(True)
        mol.AddAtom(atom)
    if structure.bonds is not None:
        types = {1.0: Chem.BondType.SINGLE, 1.5: Chem.BondType.AROMATIC, 2.0: Chem.BondType.DOUBLE, 3.0: Chem.BondType.TRIPLE}
        orders = structure.bond_orders if structure.bond_orders is not None else np.ones(len(structure.bonds))
        for (i, j), order in zip(structure.bonds.tolist(), orders.tolist()):
            mol.AddBond(int(i), int(j), types.get(float(order), Chem.BondType.SINGLE))
            if order == 1.5:
                mol.GetBondBetweenAtoms(int(i), int(j)).SetIsAromatic(True)
                mol.GetAtomWithIdx(int(i)).SetIsAromatic(True)
                mol.GetAtomWithIdx(int(j)).SetIsAromatic(True)
    conf = Chem.Conformer(len(structure))
    for k, (x, y, z) in enumerate(structure.positions.tolist()):
        conf.SetAtomPosition(k, Point3D(x, y, z))
    conf.Set3D(True)
    mol.AddConformer(conf, assignId=True)
    if structure.bonds is None and perceive_bonds:
        from rdkit.Chem import rdDetermineBonds

        with rdkit_messages():
            try:
                rdDetermineBonds.DetermineConnectivity(mol)
            except Exception:  # noqa: BLE001, S110 - geometry too odd to perceive bonds from: write atoms only
                pass
    mol.SetProp("_Name", structure.name)
    mol.UpdatePropertyCache(strict=False)
    return mol.GetMol()


def write_sdf(structures, out: TextIO | str | Path, perceive_bonds: bool = True) -> int:
    """Write structures as SDF records (bonds as given, else perceived); returns the count."""
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
