"""groupae: an SE(3) x S_n group autoencoder for molecules and point clouds.

The latent of a structure splits into an invariant embedding z (what the structure is) and a group
element (rotation, translation, atom permutation: where it sits and how it is numbered).

The Python API (the command line is a thin layer over it)::

    import groupae_cli as g
    model = g.load_model()                      # the shipped default model; or a checkpoint path
    mols = [g.from_rdkit(mol) for mol in mols]  # RDKit Mols with 3D conformers (or pass them as they are)
    e = g.embed(model, mols)                    # e.embedding (N, d), e.rotation, e.translation, ...

Structures
    Structure        one molecule or point cloud: numbers, positions (Å), name, bonds, charges
    from_rdkit       a Structure from an RDKit Mol's conformer (bonds and formal charges kept)
    from_ase         a Structure from an ASE Atoms
    from_arrays      a Structure from atomic numbers (or symbols) and positions
    to_rdkit, to_ase back to an RDKit Mol / an ASE Atoms
    read, write      structure files: XYZ / extended XYZ, SDF/MOL, PLY (also .gz)
Model
    load_model       a checkpoint path or a shipped model's name ("default"), on a device
    embed            z, rotation, translation, canonical order and degenerate flag as numpy
                     arrays (an Embeddings), or written to an embed HDF5 file
    read_embeddings  an embed HDF5 file back as Embeddings (names as str; .table() for pandas)
    reconstruct      encode and decode; each Reconstruction has its structure, RMSD and
                     element accuracy
    canonical_form   each structure in its canonical pose and atom order
    align            A onto B over rotations, translations and atom correspondences (by
                     element or by bond graph): an AlignResult

Structure-taking functions accept one or a list of Structure, RDKit Mol or ASE Atoms. Nothing
heavy (torch, RDKit, ASE) is imported until a function is first used.
"""

import sys
import types
from importlib import import_module
from pathlib import Path

__version__ = "0.1.0"

#: Models shipped inside the package, found by name (groupae_cli/pretrained/NAME.ckpt). Defined
#: here, free of torch, so that commands can tell a shipped name without importing it.
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def shipped_model_path(name: str | Path) -> Path:
    """Where the shipped model called `name` lives (whether or not there is one)."""
    return PRETRAINED_DIR / f"{name}.ckpt"


def shipped_models() -> list[Path]:
    """The files of the models shipped with the package, by name (the file's stem)."""
    return sorted(PRETRAINED_DIR.glob("*.ckpt"), key=lambda p: p.stem) if PRETRAINED_DIR.is_dir() else []


__all__ = ["AlignResult", "Embeddings", "Reconstruction", "Structure", "align", "canonical_form", "embed",
           "from_arrays", "from_ase", "from_rdkit", "load_model", "read", "read_embeddings", "reconstruct", "to_ase",
           "to_rdkit", "write"]

#: public name -> the private module that defines it (imported on first use)
_HOMES = {"Structure": "groupae_cli.io.records", "AlignResult": "groupae_cli.align",
          "Reconstruction": "groupae_cli.reconstruct"}
_API = {name: _HOMES.get(name, "groupae_cli._api") for name in __all__}


def __getattr__(name: str):
    """A public name, imported from its private module on first use (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names and the public ones not yet imported."""
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package's module type. `embed`, `align` and `reconstruct` are both API functions and
    modules of the package (groupae_cli/embed.py, ...); importing such a module would bind the
    module to the package's attribute, so that binding is refused here and the name keeps meaning
    the function. `from groupae_cli.align import refine` still works; `import groupae_cli.align as
    m` gives the function (Python reads it as `from groupae_cli import align`): use
    `importlib.import_module("groupae_cli.align")` for the module."""

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
