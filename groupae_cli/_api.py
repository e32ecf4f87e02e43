"""The Python API, re-exported from `groupae_cli` (see its docstring): structures from RDKit, ASE or
arrays and back; a model by name or path; embeddings, reconstructions, alignments and canonical
forms as numpy arrays and result objects; embed HDF5 files read back.

Functions that take structures take one or a list of: `Structure`, an RDKit `Mol` (its default
conformer), an ASE `Atoms`. Heavy libraries (torch, RDKit, ASE, h5py) are imported inside the
functions, so `import groupae_cli` stays instant.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from groupae_cli.io.records import Structure, check

DEFAULT_MODEL = "default"
_HDF5 = (".h5", ".hdf5")


# --- structures in and out ---------------------------------------------------------------------


def _checked(structure: Structure) -> Structure:
    reason = check(structure)
    if reason is not None:
        raise ValueError(f"{structure.name}: {reason}")
    return structure


def from_rdkit(mol, conf_id: int = -1, name: str | None = None) -> Structure:
    """A Structure from an RDKit `Mol`: the conformer `conf_id` (default: the first), its atoms
    (hydrogens only where they are atoms of the Mol: use `Chem.AddHs` before embedding), bonds with
    their orders, and formal charges. The name is `name`, else the Mol's `_Name`, else "molecule".

    ValueError when the Mol has no 3D conformer or the structure is unusable (fewer than 2 atoms,
    coinciding atoms, non-finite coordinates).
    """
    from groupae_cli.io.sdf import _structure

    if name is None:
        name = (mol.GetProp("_Name") if mol.HasProp("_Name") else "") or "molecule"
    if mol.GetNumConformers() == 0:
        raise ValueError(f"{name}: no conformer; embed one first (e.g. AllChem.EmbedMolecule(Chem.AddHs(mol)))")
    try:
        result = _structure(mol, "<rdkit>", 0, name, conf_id)
    except ValueError as exc:  # RDKit: "Bad Conformer Id"
        raise ValueError(f"{name}: conformer {conf_id}: {exc}") from None
    if isinstance(result, Structure):
        return _checked(result)
    raise ValueError(f"{name}: {result}")  # the reason there is none (2D coordinates)


def from_ase(atoms, name: str | None = None) -> Structure:
    """A Structure from an ASE `Atoms`: atomic numbers and positions (Å). The name is `name`, else
    `atoms.info["name"]`, else the chemical formula. ASE has no bonds or formal charges."""
    name = name if name is not None else str(atoms.info.get("name") or atoms.get_chemical_formula())
    return _checked(Structure(atoms.get_atomic_numbers(), atoms.get_positions(), name, "<ase>", 0))


def from_arrays(numbers, positions, name: str = "structure", bonds=None, bond_orders=None,
                charges=None) -> Structure:
    """A Structure from arrays: `numbers` (n,) atomic numbers or element symbols (0 / "X": an
    untyped point), `positions` (n, 3) in Å; optional `bonds` (m, 2) atom index pairs with
    `bond_orders` (m,) (1, 1.5 aromatic, 2, 3) and formal `charges` (n,)."""
    numbers = np.asarray(numbers)
    if numbers.dtype.kind in "US":
        from ase.data import atomic_numbers

        numbers = np.array([atomic_numbers[str(symbol)] for symbol in numbers])
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape != (len(numbers), 3):
        raise ValueError(f"positions must be ({len(numbers)}, 3) for {len(numbers)} atoms, not {positions.shape}")
    if bonds is not None:
        bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
        bond_orders = np.ones(len(bonds)) if bond_orders is None else np.asarray(bond_orders, dtype=np.float64)
    return _checked(Structure(numbers, positions, name, "<arrays>", 0, bonds=bonds, bond_orders=bond_orders,
                              charges=None if charges is None else np.asarray(charges, dtype=np.int64)))


def to_rdkit(structure, perceive_bonds: bool = True):
    """An RDKit `Mol` (one conformer) with the structure's atoms, coordinates and formal charges.

    Bonds: the structure's own when RDKit sanitises them, else bonds perceived from the geometry
    (RDKit's DetermineBonds), else connectivity alone, else none; the `groupae_bonds` property says
    which. `perceive_bonds=False`: the structure's own bonds as given, or none.
    """
    from groupae_cli.io.sdf import to_rdkit as structure_to_rdkit

    return structure_to_rdkit(as_structure(structure), perceive_bonds)


def to_ase(structure):
    """An ASE `Atoms` with the structure's atomic numbers and positions; its name in `info["name"]`."""
    import ase

    s = as_structure(structure)
    return ase.Atoms(numbers=s.numbers, positions=s.positions, info={"name": s.name})


def as_structure(item) -> Structure:
    """A Structure from a Structure, an RDKit Mol or an ASE Atoms."""
    if isinstance(item, Structure):
        return item
    if type(item).__module__.startswith("rdkit") and hasattr(item, "GetConformers"):
        return from_rdkit(item)
    if hasattr(item, "get_atomic_numbers") and hasattr(item, "get_positions"):
        return from_ase(item)
    raise TypeError(f"not a structure: {type(item).__name__} (give a Structure, an RDKit Mol or an ASE Atoms; "
                    "read files with groupae_cli.read)")


def _structures(items) -> tuple[list[Structure], bool]:
    """(structures, whether a single one was given); each converted one is numbered by position."""
    if isinstance(items, (str, Path)):
        raise TypeError(f"{items}: a path; read the file with groupae_cli.read(path) first")
    single = isinstance(items, Structure) or not isinstance(items, Iterable) or hasattr(items, "get_positions")
    raw = [items] if single else list(items)
    structures = []
    for k, item in enumerate(raw):
        s = as_structure(item)
        structures.append(s if isinstance(item, Structure) or single else dataclasses.replace(s, index=k))
    return structures, single


def read(path: str | Path, fmt: str | None = None) -> list[Structure]:
    """Every record of a structure file (XYZ / extended XYZ, SDF/MOL, PLY; .gz; "-" for stdin).

    A record that cannot be used is skipped with a warning that says why (file, record, name).
    """
    from groupae_cli.errors import Failure
    from groupae_cli.io import read_structures

    structures = []
    for item in read_structures(path, fmt):
        if isinstance(item, Failure):
            warnings.warn(f"skipped {item}", stacklevel=2)
        else:
            structures.append(item)
    return structures


def write(structures, path: str | Path, fmt: str | None = None) -> int:
    """Write structures (Structures, RDKit Mols or ASE Atoms) as XYZ, SDF or PLY, by extension or
    `fmt`; returns how many were written."""
    from groupae_cli.io import write_structures

    return write_structures(_structures(structures)[0], path, fmt)


# --- the model ---------------------------------------------------------------------------------


def load_model(name_or_path: str | Path = DEFAULT_MODEL, device: str = "auto"):
    """A model in eval mode: a checkpoint path (written by `groupae train`) or the name of a model
    shipped with groupae ("default"); `device` is "auto" (CUDA when available), "cpu" or
    "cuda[:i]"."""
    from groupae_cli.device import resolve_device
    from groupae_cli.io.checkpoint import load_model as load_checkpoint

    return load_checkpoint(name_or_path, resolve_device(device))


def _device(model):
    return next(model.parameters()).device


def _usable(model, structures: Sequence[Structure]) -> None:
    from groupae_cli.embed import usable

    for s in structures:
        if (why := usable(s, model)) is not None:
            raise ValueError(f"{s.name}: {why}")


def _batches(structures: Sequence[Structure], batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    for start in range(0, len(structures), batch_size):
        yield structures[start : start + batch_size]


@dataclass
class Embeddings:
    """The invariant embeddings and group elements of N structures (as `embed` returns them or an
    embed HDF5 file holds them).

    embedding:      (N, d) float32, z: the same for every rotated, translated, renumbered copy
    rotation:       (N, 3, 3) float32, translation: (N, 3) float32 — the predicted group element
    permutation:    N int arrays; permutation[i][k] is record i's input atom in canonical slot k
    degenerate:     (N,) bool — the record's symmetry cancelled the learned frame (anchor atoms defined it)
    atomic_numbers: N int arrays, in input order
    names, sources: N str each (record name; the file it came from); indices: (N,) record index in it
    failed:         records an embed file could not take: dicts of source, index, name, reason
    attrs:          an embed file's provenance (model, sha256, versions, ...)
    identity:       k: embedding[:, :k] (`.frame_free`) is z's frame-free block, the molecule whatever
                    its conformation (0: the model has none)
    """

    embedding: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    permutation: list[np.ndarray]
    degenerate: np.ndarray
    atomic_numbers: list[np.ndarray]
    names: list[str]
    sources: list[str]
    indices: np.ndarray
    failed: list[dict] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    identity: int = 0

    def __len__(self) -> int:
        return len(self.names)

    @property
    def frame_free(self) -> np.ndarray:
        """z's frame-free block (N, identity): for finding the same molecule across conformers."""
        return self.embedding[:, : self.identity]

    def table(self) -> dict[str, list | np.ndarray]:
        """One row per record as 1-D columns — name, source, index, n_atoms, degenerate, z0 ... z{d-1}
        — ready for `pandas.DataFrame(embeddings.table())`."""
        columns: dict[str, list | np.ndarray] = {
            "name": list(self.names), "source": list(self.sources), "index": np.asarray(self.indices),
            "n_atoms": np.array([len(p) for p in self.permutation], dtype=np.int64),
            "degenerate": np.asarray(self.degenerate, dtype=bool),
        }
        for k in range(self.embedding.shape[1]):
            columns[f"z{k}"] = self.embedding[:, k]
        return columns


def embed(model, structures, batch_size: int = 64, out: str | Path | None = None) -> Embeddings | Path:
    """The invariant embedding z and the group element (rotation, translation, canonical atom
    order) of each structure, with its `degenerate` flag.

    Returns an `Embeddings` of numpy arrays, one row per structure in the order given; with `out`,
    writes them to that HDF5 file instead (the layout of `groupae embed`, read back with
    `read_embeddings`) and returns its path. ValueError names a structure the model cannot take
    (an element it was not trained on, too many atoms). With `model.fit_steps = k`, each z is first
    fitted to its structure by k steps through the decoder (recorded in the file as `fit_steps`;
    with `model.fit_hold_identity`, z's frame-free part is left as the encoder made it:
    `fit_hold_identity` 1).
    """
    from groupae_cli.embed import embed_files, encode_batch, provenance

    items, _ = _structures(structures)
    _usable(model, items)
    device = _device(model)
    if out is not None:
        files = {s: k for k, s in enumerate(dict.fromkeys(s.source for s in items))}
        checkpoint = getattr(model, "checkpoint", {}).get("path")
        attrs = provenance(checkpoint, Path(checkpoint).stem if checkpoint else None, list(files), (0, 1), "Python API",
                           model.fit_steps, model.fit_hold_identity)
        embed_files(((files[s.source], s) for s in items), model, out, attrs, device, batch_size)
        return Path(out)
    parts = [encode_batch(model, batch, device) for batch in _batches(items, batch_size)]
    d = model.config.embedding_dim

    def joined(key, shape):
        return np.concatenate([p[key] for p in parts]) if parts else np.zeros((0, *shape), np.float32)

    return Embeddings(
        embedding=joined("embedding", (d,)), rotation=joined("rotation", (3, 3)),
        translation=joined("translation", (3,)), permutation=[q for p in parts for q in p["permutation"]],
        degenerate=np.concatenate([p["degenerate"] for p in parts]) if parts else np.zeros(0, bool),
        atomic_numbers=[s.numbers.copy() for s in items], names=[s.name for s in items],
        sources=[s.source for s in items], indices=np.array([s.index for s in items], dtype=np.int64),
        identity=model.config.embedding_identity,
    )


def read_embeddings(path: str | Path) -> Embeddings:
    """An embed HDF5 file (written by `groupae embed` or `embed(..., out=...)`) as `Embeddings`:
    arrays in memory, names and sources as `str`."""
    import h5py

    from groupae_cli.io.hdf5 import plain

    with h5py.File(path, "r") as f:
        if "embedding" not in f or "offsets" not in f:
            raise ValueError(f"{path}: not an embed file (no /embedding and /offsets)")
        cuts = f["offsets"][1:-1]
        inputs = [str(plain(v)) for v in f.attrs.get("input_files", [])]
        source_file = f["source_file"][:]
        failed = [{"source": inputs[r["source_file"]] if r["source_file"] < len(inputs) else "",
                   "index": int(r["source_index"]), "name": str(plain(r["name"])), "reason": str(plain(r["reason"]))}
                  for r in f["failed"][:]]
        return Embeddings(
            embedding=f["embedding"][:], rotation=f["rotation"][:], translation=f["translation"][:],
            permutation=np.split(f["permutation"][:].astype(np.int64), cuts), degenerate=f["degenerate"][:],
            atomic_numbers=np.split(f["atomic_numbers"][:].astype(np.int64), cuts),
            names=[str(plain(v)) for v in f["name"][:]],
            sources=[inputs[k] if k < len(inputs) else "" for k in source_file.tolist()],
            indices=f["source_index"][:].astype(np.int64), failed=failed,
            attrs={k: plain(v) for k, v in f.attrs.items()}, identity=int(f.attrs.get("embedding_identity", 0)),
        )


def reconstruct(model, structures, batch_size: int = 64):
    """Encode and decode: each structure rebuilt from its embedding and group element, in its own
    frame and atom order, as a `Reconstruction` (`.structure`, `.rmsd` in Å and
    `.element_accuracy` against the input). One structure in, one out; a list in, a list out.

    `structures` may also be the path of an embed HDF5 file: its records are decoded from the
    stored embeddings and group elements (no input to compare with: rmsd is None). With
    `model.fit_steps = k`, each z is first fitted to its structure by k steps through the decoder:
    sharper, at about k decoder passes more per structure.

    Like `embed`, it never returns a partial answer: ValueError names a structure the model cannot
    take, a record of the embed file that cannot be decoded (its embedding NaN or Inf), or one the
    model decodes to NaN or Inf coordinates. (`groupae reconstruct` skips and reports those instead.)
    """
    from groupae_cli.errors import Failure
    from groupae_cli.reconstruct import decode_embeddings, finite
    from groupae_cli.reconstruct import reconstruct as decode_batch

    device = _device(model)
    if isinstance(structures, (str, Path)) and Path(structures).suffix.lower() in _HDF5:
        results, single = list(decode_embeddings(model, structures, device, batch_size)), False
    else:
        items, single = _structures(structures)
        _usable(model, items)
        results = [finite(r) for batch in _batches(items, batch_size) for r in decode_batch(model, batch, device)]
    failed = next((r for r in results if isinstance(r, Failure)), None)
    if failed is not None:
        raise ValueError(str(failed))
    return results[0] if single else results


def canonical_form(model, structures, batch_size: int = 64):
    """Each structure in the model's canonical pose and atom order: C(X) = P (X - t) R, the same for
    every rotated, translated or renumbered copy. Atom k of the result is the input's atom
    `permutation[k]` (see `embed`); bonds, bond orders and charges follow the atoms. One structure
    in, one out; a list in, a list out.
    """
    import torch

    from groupae_cli.data import centred_batch, to_device

    items, single = _structures(structures)
    _usable(model, items)
    device = _device(model)
    results = []
    for batch_items in _batches(items, batch_size):
        batch = to_device(centred_batch(batch_items, model.config.elements, model.dtype)[0], device)
        with torch.inference_mode():
            encoded = model.encode(batch)
            forms = model.canonical_form(batch, encoded).double().cpu().numpy()
            order = encoded["order"].cpu().numpy()
        for b, s in enumerate(batch_items):
            perm = order[b, : len(s)]
            rank = np.empty(len(s), dtype=np.int64)
            rank[perm] = np.arange(len(s))  # where each input atom lands
            results.append(dataclasses.replace(
                s, numbers=s.numbers[perm], positions=forms[b, : len(s)],
                bonds=None if s.bonds is None else rank[s.bonds],
                charges=None if s.charges is None else s.charges[perm],
                features=None if s.features is None else s.features[perm], properties=dict(s.properties)))
    return results[0] if single else results


def align(a, b, match: str | None = None, model=None, refine: bool = True, prove: bool = False,
          time_limit: float | None = None, progress=None):
    """Align structure `a` onto `b`: the minimum RMSD over proper rotations, translations and atom
    correspondences, as an `AlignResult` (rmsd, rotation, translation, mapping: `a` atom i is `b`
    atom mapping[i]; `result.transform(a_positions)` moves `a` onto `b`).

    `match`: "elements" (element-preserving correspondences, no bonds needed) or "graph" (bond-graph
    isomorphisms, RDKit GetBestRMS's question); default graph when both have bonds. With `model`
    its learned guess is tried first (`refine=False`: the learned answer alone). `prove`: graph
    mode completes skeletons exactly up to 10^6 terminal-group permutations (slower), so more
    answers are `proven_optimal`. Element mode: `time_limit` (seconds) returns the best answer found
    by then (`time_limit_reached`), `progress(done, total)` follows its starts; `proven_optimal` when
    the RMSD meets `rmsd_lower_bound`. Never a mirror image. ValueError, in one line, for a single
    atom, different compositions ("A has C6H6O (13 atoms), B has C6H6 (12 atoms)") and, in graph
    mode, missing bonds or different bond graphs. Many pairs: call it in a loop (nothing is loaded
    per call; `groupae align` does exactly that).
    """
    from groupae_cli.align import align_structures

    (first, second), _ = _structures([a, b])
    if model is not None:
        _usable(model, [first])
    elif not refine:
        raise ValueError("refine=False needs a model: its learned guess is the answer")
    return align_structures(first, second, match, model, None if model is None else _device(model),
                            refine_guess=refine, graph_limit=1_000_000 if prove else 5_000, time_limit=time_limit,
                            progress=progress)


__all__ = ["Embeddings", "Structure", "align", "as_structure", "canonical_form", "embed", "from_arrays", "from_ase",
           "from_rdkit", "load_model", "read", "read_embeddings", "reconstruct", "to_ase", "to_rdkit", "write"]
