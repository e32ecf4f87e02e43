"""groupae: an SE(3) x S_n group autoencoder for molecules and point clouds.

The latent of a structure splits into an invariant embedding (what the structure is) and a group
element (rotation, translation, atom permutation: where it sits and how it is numbered).
"""

from pathlib import Path

__version__ = "0.1.0"

#: Models shipped inside the package, found by name (groupae_cli/pretrained/NAME.ckpt). Defined
#: here, free of torch, so that commands can tell a shipped name without importing it.
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def shipped_model_path(name: str | Path) -> Path:
    """Where the shipped model called `name` lives (whether or not there is one)."""
    return PRETRAINED_DIR / f"{name}.ckpt"
