"""The SE(3) x S_n group autoencoder: e3nn encoder, group heads, decoder."""

# first: e3nn imported without torch._dynamo (start-up time; see _startup)
from groupae_cli.models import _startup  # noqa: F401  # isort: skip
from groupae_cli.models.autoencoder import GroupAE
from groupae_cli.models.config import PRESETS, ModelConfig, preset

__all__ = ["PRESETS", "GroupAE", "ModelConfig", "preset"]
