"""Model configuration: one frozen dataclass, presets, and strict loading from plain dicts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: The elements a molecule model knows by default: the common organic ones.
ORGANIC = (1, 5, 6, 7, 8, 9, 15, 16, 17, 35, 53)
#: A point-cloud model knows one type: untyped points (atomic number 0).
POINTS = (0,)


def check_keys(cls, data: dict, what: str) -> None:
    """Unknown keys in a config dict are an error, never silently dropped."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} config keys: {', '.join(unknown)}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that builds a GroupAE; saved in every checkpoint.

    Encoder: e3nn message passing on a radius graph (or a tie-safe kNN graph for point clouds).
    Hidden irreps are `scalars`x0e + `pseudoscalars`x0o + `vectors`x1o + `pseudovectors`x1e.
    """

    elements: tuple[int, ...] = ORGANIC
    embedding_dim: int = 32
    # encoder
    layers: int = 3
    scalars: int = 32
    pseudoscalars: int = 8
    vectors: int = 16
    pseudovectors: int = 8
    sh_lmax: int = 1
    # share of each irrep's channels the message tensor product runs on (1: all; 0.5 halves its cost)
    message_fraction: float = 1.0
    radial_basis: int = 8
    radial_hidden: int = 32
    graph: str = "radius"  # "radius" or "knn"
    cutoff: float = 5.0
    knn: int = 8
    avg_neighbors: float = 16.0
    # the invariant embedding: "mean" (an MLP of the mean of the atoms' invariant features),
    # "canonical" (atom tokens in the predicted canonical frame pooled by `pool_tokens` attention
    # queries of width `pool_dim`) or "attention" (atom tokens through `pool_layers` blocks of
    # distance-biased self-attention, then pooled the same way); see models/embedding.py.
    # `embedding_composition` adds the element counts, so that z alone tells formulas apart
    pooling: str = "mean"
    pool_tokens: int = 4
    pool_dim: int = 64
    pool_heads: int = 4
    pool_vectors: int = 8
    pool_layers: int = 2  # distance-biased self-attention blocks of the "attention" head
    embedding_composition: bool = False
    # canonical head: this many entries of z come from frame-free features only (see embedding.py)
    embedding_identity: int = 0
    # canonical head: each atom token also carries the code of its canonical slot (the decoder's
    # slot codes: slot, size, rank within its element, element count), so encoder and decoder share
    # an address for every atom; exactly invariant, since the canonical order is equivariant
    pool_slot_codes: bool = False
    # canonical head: blocks of self-attention among the atom tokens before they are pooled (a Set
    # Transformer encoder), so each token can say where its atom sits relative to the others
    token_layers: int = 0
    # canonical head: this many learned refinements of z's canonical-frame part, each from the
    # decoder's slots and what they miss of the structure in its canonical pose and order
    # (GroupAE.encode); the frame-free part of z is left as it is
    refine_steps: int = 0
    # permutation head
    score_hidden: int = 64
    # "score": atoms of one element in score order; "parent": hydrogens grouped by their parent
    # (the nearest other atom), in the parents' canonical order, then by score
    hydrogen_order: str = "score"
    # decoder
    decoder_dim: int = 128
    decoder_layers: int = 3
    decoder_heads: int = 4
    decoder_composition: bool = True  # the decoder is told each slot's element (z need not carry it)
    # 0: z is added to every slot; k > 0: z is also unfolded into k memory tokens that every decoder
    # layer cross-attends to (a transformer decoder), so slots can read different parts of z
    decoder_memory: int = 0
    max_atoms: int = 256
    # degeneracy: a pooled frame vector smaller than frame_tol x its typical size is taken to vanish
    # (the input's symmetry, or near-symmetry, cancels it) and anchor atoms define the frame;
    # atoms of one element whose scores differ by less than tie_tol are tied
    frame_tol: float = 1e-3
    tie_tol: float = 1e-3
    # anchor atoms whose distances differ by less than this share of the largest are told apart
    # by handedness (a pseudo-scalar), so noise cannot flip the pick between mirror images
    anchor_tie: float = 0.05
    # the precision the model is used in (embed, reconstruct, the Python API; training is float32):
    # "float64" where z sees the learned canonical frame (pooling: canonical), whose float32
    # round-off is amplified where the frame is ill-conditioned (bench/RESULTS.md, "Model quality")
    inference_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.inference_dtype not in ("float32", "float64"):
            raise ValueError(f"inference_dtype must be 'float32' or 'float64', not {self.inference_dtype!r}")
        if self.pooling not in ("mean", "canonical", "attention"):
            raise ValueError(f"pooling must be 'mean', 'canonical' or 'attention', not {self.pooling!r}")
        if not 0 <= self.embedding_identity < self.embedding_dim:
            raise ValueError("embedding_identity must be in [0, embedding_dim)")
        if self.hydrogen_order not in ("score", "parent"):
            raise ValueError(f"hydrogen_order must be 'score' or 'parent', not {self.hydrogen_order!r}")
        if self.refine_steps < 0:
            raise ValueError("refine_steps must be >= 0")
        if self.refine_steps and self.pooling != "canonical":
            raise ValueError("refine_steps needs pooling: canonical")
        if self.token_layers < 0:
            raise ValueError("token_layers must be >= 0")
        if self.token_layers and self.pooling != "canonical":
            raise ValueError("token_layers needs pooling: canonical")
        if self.pool_slot_codes and self.pooling != "canonical":
            raise ValueError("pool_slot_codes needs pooling: canonical")
        if self.pool_dim % self.pool_heads:
            raise ValueError("pool_dim must be a multiple of pool_heads")
        if self.graph not in ("radius", "knn"):
            raise ValueError(f"graph must be 'radius' or 'knn', not {self.graph!r}")
        if self.layers < 2:
            raise ValueError("layers must be >= 2 (chirality needs two message-passing steps)")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError("decoder_dim must be a multiple of decoder_heads")
        if len(set(self.elements)) != len(self.elements):
            raise ValueError("elements must be distinct")
        if not 0 < self.message_fraction <= 1:
            raise ValueError("message_fraction must be in (0, 1]")
        object.__setattr__(self, "elements", tuple(int(z) for z in self.elements))

    @property
    def hidden_irreps(self) -> str:
        return (f"{self.scalars}x0e + {self.pseudoscalars}x0o + "
                f"{self.vectors}x1o + {self.pseudovectors}x1e")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"elements": list(self.elements)}

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        check_keys(cls, data, "model")
        return cls(**{k: tuple(v) if k == "elements" else v for k, v in data.items()})

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    # a few channels, for tests and quick looks
    "tiny": ModelConfig(embedding_dim=8, layers=2, scalars=8, pseudoscalars=4, vectors=4, pseudovectors=4,
                        radial_basis=6, radial_hidden=16, score_hidden=16, decoder_dim=32, decoder_layers=1,
                        decoder_heads=2),
    "small": ModelConfig(embedding_dim=32, layers=3, scalars=32, pseudoscalars=8, vectors=12, pseudovectors=6,
                         decoder_dim=96, decoder_layers=2),
    "medium": ModelConfig(),
    "large": ModelConfig(embedding_dim=64, layers=4, scalars=64, pseudoscalars=16, vectors=32, pseudovectors=16,
                         radial_hidden=64, score_hidden=128, decoder_dim=256, decoder_layers=4, decoder_heads=8),
    # the paper's tetris experiment: 4 untyped points, a 2-D invariant code. Frames always come
    # from anchor points; anchor_tie puts the candidate cut in the widest gap between the pieces'
    # distance ratios (0.447 and 0.333), so noise of 0.01 never moves a point in or out of the
    # candidates (at 0.05 the cut sat 2-3 noise widths from the ratio 0.913 of the chiral pieces)
    "tetris": ModelConfig(elements=POINTS, embedding_dim=2, layers=3, scalars=16, pseudoscalars=8, vectors=8,
                          pseudovectors=8, cutoff=4.0, avg_neighbors=3.0, score_hidden=32, decoder_dim=64,
                          decoder_layers=2, max_atoms=8, frame_tol=1.0, anchor_tie=0.61),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


__all__ = ["ORGANIC", "POINTS", "PRESETS", "ModelConfig", "preset"]
