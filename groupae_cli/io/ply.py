"""PLY point clouds (ascii and binary) through plyfile.

A PLY file is one record: its `vertex` element. The vertices become points of one type
(POINT_TYPE), unless the file carries an integer vertex property `atomic_number` (groupae writes one
for molecules). Other numeric vertex properties (normals, colours, ...) become per-point features.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from groupae_cli.errors import Failure
from groupae_cli.io.formats import MAX_RECORD_BYTES, too_large
from groupae_cli.io.records import POINT_TYPE, SKIPPED, Structure, checked

TYPE_PROPERTY = "atomic_number"
_XYZ = ("x", "y", "z")


def read_ply(stream: BinaryIO, source: str, wanted: Callable[[int], bool] | None = None,
             geometry_only: bool = False) -> Iterator[Structure | Failure]:
    """Yield the point cloud of a PLY stream as one Structure, or a Failure (SKIPPED, unread, when
    `wanted` rejects record 0). With `geometry_only`, extra vertex properties are not kept as features."""
    if wanted is not None and not wanted(0):
        yield SKIPPED
        return
    from plyfile import PlyData

    name = Path(source).name.split(".")[0] if source != "-" else "stdin"
    if not stream.peek(3).startswith(b"ply"):
        yield Failure(source, 0, "not a PLY file (it does not start with 'ply')", name)
        return
    data = stream.read(MAX_RECORD_BYTES + 1)  # one record: the whole file, bounded
    if len(data) > MAX_RECORD_BYTES:
        yield Failure(source, 0, too_large(len(data)), name)
        return
    body = io.BytesIO(data)
    try:
        ply = PlyData.read(body)
        rest = b"" if ply.text else data[body.tell():]  # (plyfile closes the stream of an ASCII file)
        if rest:  # e.g. a binary header over an ASCII body: its first bytes read as a few points
            raise ValueError(f"{len(rest)} bytes past the data: the header's format does not match the body")
        if "vertex" not in ply:
            raise ValueError("no 'vertex' element")
        vertex = ply["vertex"].data
        missing = [c for c in _XYZ if c not in vertex.dtype.names]
        if missing:
            raise ValueError(f"vertex element lacks {', '.join(missing)}")
    except Exception as exc:  # noqa: BLE001 - plyfile raises PlyHeaderParseError, PlyElementParseError, ValueError, ...
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        text = text if len(text) <= 100 else text[:97] + "..."
        yield Failure(source, 0, f"broken PLY: {text}", name)
        return
    positions = np.stack([vertex[c] for c in _XYZ], axis=1).astype(np.float64)
    if TYPE_PROPERTY in vertex.dtype.names:
        numbers = np.asarray(vertex[TYPE_PROPERTY], dtype=np.int64)
    else:
        numbers = np.full(len(positions), POINT_TYPE, dtype=np.int64)
    extra = [] if geometry_only else [c for c in vertex.dtype.names
                                      if c not in _XYZ and c != TYPE_PROPERTY and vertex.dtype[c].kind in "fiu"]
    features = np.stack([vertex[c] for c in extra], axis=1).astype(np.float64) if extra else None
    for comment in ply.comments:
        if comment.startswith("groupae: "):
            name = comment[len("groupae: ") :]
    yield checked(Structure(numbers, positions, name, source, 0, features=features, feature_names=tuple(extra)))


def write_ply(structure: Structure, path: str | Path, text: bool = False) -> None:
    """Write one structure as a PLY vertex element (float64 x, y, z; atomic numbers when typed)."""
    from plyfile import PlyData, PlyElement

    columns = [(c, "f8") for c in _XYZ]
    typed = bool(np.any(structure.numbers != POINT_TYPE))
    if typed:
        columns.append((TYPE_PROPERTY, "u1"))
    columns += [(c, "f8") for c in structure.feature_names]
    vertex = np.empty(len(structure), dtype=columns)
    for k, c in enumerate(_XYZ):
        vertex[c] = structure.positions[:, k]
    if typed:
        vertex[TYPE_PROPERTY] = structure.numbers
    for k, c in enumerate(structure.feature_names):
        vertex[c] = structure.features[:, k]
    PlyData([PlyElement.describe(vertex, "vertex")], text=text, comments=[f"groupae: {structure.name}"]).write(str(path))
