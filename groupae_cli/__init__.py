"""groupae: an SE(3) x S_n group autoencoder for molecules and point clouds.

The latent of a structure splits into an invariant embedding (what the structure is) and a group
element (rotation, translation, atom permutation: where it sits and how it is numbered).
"""

__version__ = "0.1.0"
