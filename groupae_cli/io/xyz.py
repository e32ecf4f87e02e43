"""XYZ and extended XYZ (multi-frame) through ase; plain XYZ frames without it (start-up).

ase parses a file as a whole and stops at the first bad frame, so the frames are cut here — count
line, comment line, atom lines — and each frame is parsed by ase on its own. A bad frame becomes a
Failure naming its record and line, and reading resumes at the next count line.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np

from groupae_cli.errors import Failure
from groupae_cli.io.formats import (
    MAX_RECORD_BYTES,
    bounded_lines,
    text_output,
    too_large,
)
from groupae_cli.io.records import SKIPPED, Structure, checked

_NAME_KEYS = ("name", "title", "id", "Name", "Title", "ID")
#: Element symbols by atomic number, as ase spells them ("X", 0: an untyped point).
_SYMBOL_TEXT = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
    "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf "
    "Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
)
_NUMBER = {symbol: z for z, symbol in enumerate(_SYMBOL_TEXT.split())}



class _Lines:
    """Numbered text lines of a binary stream with one line of look-ahead."""

    def __init__(self, stream: BinaryIO):
        self._it = bounded_lines(stream)
        self._ahead: tuple[int, str] | None = None
        self.lineno = 0

    def peek(self) -> tuple[int, str] | None:
        if self._ahead is None:
            raw = next(self._it, None)
            if raw is None:
                return None
            self.lineno += 1
            self._ahead = (self.lineno, raw.decode("utf-8", errors="replace"))
        return self._ahead

    def next(self) -> tuple[int, str] | None:
        item = self.peek()
        self._ahead = None
        return item

    def skip_blank(self) -> None:
        while (item := self.peek()) is not None and not item[1].strip():
            self.next()

    def skip_to_count_line(self) -> None:
        while (item := self.peek()) is not None and _count(item[1]) is None:
            self.next()


def _count(line: str) -> int | None:
    token = line.strip()
    return int(token) if token.isdigit() else None


def _is_binary(line: str) -> bool:
    return "\x00" in line or "\ufffd" in line


def _looks_like_atom_line(line: str) -> bool:
    parts = line.split()
    if len(parts) < 4 or _count(line) is not None:
        return False
    try:
        [float(p) for p in parts[1:4]]
    except ValueError:
        return False
    return True


def _name(comment: str, fallback: str) -> str:
    """The record's name: a `name=` (or title=, id=) value of an extended XYZ comment line, taken
    verbatim (ase would turn `name=T` into True), or a plain comment line."""
    if "=" not in comment:
        return comment.strip() or fallback
    for key in _NAME_KEYS:
        if match := re.search(rf'(?:^|\s){key}=(?:"([^"]*)"|(\S+))', comment):
            return match.group(1) if match.group(1) is not None else match.group(2)
    return fallback


def _plain_frame(body: list[str], comment: str, source: str, index: int, name: str) -> Structure | None:
    """A plain XYZ frame (a comment line without key=value pairs, atom lines of exactly "symbol x
    y z") read without ase, whose import costs about a second at start-up; None for anything
    else (extended XYZ, extra columns, atomic numbers or unusual symbols), which ase parses."""
    if "=" in comment:
        return None
    numbers, positions = [], []
    for line in body:
        parts = line.split()
        if len(parts) != 4 or parts[0] not in _NUMBER:
            return None
        try:
            positions.append([float(p) for p in parts[1:]])
        except ValueError:
            return None
        numbers.append(_NUMBER[parts[0]])
    return Structure(np.array(numbers, dtype=np.int64), np.array(positions, dtype=np.float64).reshape(-1, 3),
                     _name(comment, name), source, index)


def _parse_frame(text: str, comment: str, source: str, index: int, name: str,
                 geometry_only: bool = False) -> Structure:
    import ase.io

    atoms = ase.io.read(io.StringIO(text), format="extxyz")
    columns = [] if geometry_only else [k for k, v in atoms.arrays.items()
                                        if k not in ("numbers", "positions") and v.ndim == 1 and v.dtype.kind in "fiu"]
    features = np.stack([atoms.arrays[k] for k in columns], axis=1).astype(np.float64) if columns else None
    return Structure(atoms.numbers, atoms.positions, _name(comment, name), source, index,
                     features=features, feature_names=tuple(columns))


def read_xyz(stream: BinaryIO, source: str, wanted: Callable[[int], bool] | None = None,
             geometry_only: bool = False) -> Iterator[Structure | Failure]:
    """Yield every frame of an XYZ / extended XYZ stream as a Structure or a Failure (SKIPPED,
    unparsed, for a frame index that `wanted` rejects; the frame is still cut, so indices hold).
    With `geometry_only`, extended XYZ's per-atom columns are not kept as features."""
    stem = Path(source).name.split(".")[0] if source != "-" else "stdin"
    lines = _Lines(stream)
    index = 0
    while True:
        lines.skip_blank()
        head = lines.next()
        if head is None:
            return
        lineno, count_line = head
        n = _count(count_line)
        if n is None:
            if _is_binary(count_line):
                reason = f"line {lineno}: binary data, not XYZ text"
            else:
                reason = f"line {lineno}: expected an atom count, found {count_line.strip()[:40]!r}"
            yield Failure(source, index, reason)
            index += 1
            lines.skip_to_count_line()
            continue
        frame = [count_line, ""]
        comment = lines.next()
        body: list[str] = []
        failure = None
        if comment is None:
            failure = f"truncated: count line {lineno} says {n} atoms, file ends after 0"
        else:
            frame[1] = comment[1]
            size = len(count_line) + len(comment[1])
            while len(body) < n:
                item = lines.peek()
                if size > MAX_RECORD_BYTES:
                    failure = f"count line {lineno}: {too_large(size)}"
                    break
                if item is None:
                    failure = f"truncated: count line {lineno} says {n} atoms, file ends after {len(body)}"
                    break
                if not _looks_like_atom_line(item[1]):
                    failure = (
                        f"count line {lineno} says {n} atoms but line {item[0]} "
                        f"is not an atom line (found {len(body)} atoms)"
                    )
                    break
                body.append(lines.next()[1])  # type: ignore[index]
                size += len(body[-1])
            if failure is None and (extra := lines.peek()) is not None and _looks_like_atom_line(extra[1]):
                failure = f"count line {lineno} says {n} atoms but more atom lines follow (line {extra[0]})"
        if wanted is not None and not wanted(index):
            if failure is not None:
                lines.skip_to_count_line()
            yield SKIPPED
            index += 1
            continue
        name = "" if _is_binary(frame[1]) else _name(frame[1], "")
        if failure is not None:
            yield Failure(source, index, failure, name)
            lines.skip_to_count_line()
            index += 1
            continue
        try:
            structure = _plain_frame(body, frame[1], source, index, f"{stem}:{index}") or \
                _parse_frame("".join(frame + body), frame[1], source, index, f"{stem}:{index}", geometry_only)
        except KeyError as exc:
            yield Failure(source, index, f"unknown element symbol {exc.args[0]!r}", name)
        except Exception as exc:  # noqa: BLE001 - ase raises many types for malformed frames
            yield Failure(source, index, f"line {lineno}: malformed frame ({exc})", name)
        else:
            yield checked(structure)
        index += 1


def write_xyz(structures, out: TextIO | str | Path, extended: bool = True) -> int:
    """Write structures as (extended) XYZ frames; returns how many were written.

    Extended XYZ keeps each record's name as `name=...` and its per-point features as columns.
    """
    import ase
    import ase.io

    count = 0
    with text_output(out) as stream:
        for s in structures:
            atoms = ase.Atoms(numbers=s.numbers, positions=s.positions)
            if extended:
                atoms.info["name"] = s.name
                for k, col in enumerate(s.feature_names):
                    atoms.arrays[col] = np.ascontiguousarray(s.features[:, k])
                ase.io.write(stream, atoms, format="extxyz")
            else:
                ase.io.write(stream, atoms, format="xyz", comment=s.name)
            count += 1
    return count
