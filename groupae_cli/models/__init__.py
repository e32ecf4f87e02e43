"""The SE(3) x S_n group autoencoder: e3nn encoder, group heads, decoder."""

from groupae_cli.models.autoencoder import GroupAE
from groupae_cli.models.config import PRESETS, ModelConfig, preset

__all__ = ["PRESETS", "GroupAE", "ModelConfig", "preset"]
