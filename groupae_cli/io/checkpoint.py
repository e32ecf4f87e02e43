"""Checkpoints: one self-describing file, loaded without executing pickled code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, read back with
`torch.load(weights_only=True)`: format_version, the groupae / torch / e3nn versions that wrote it,
the model config that builds it, the state dict, and training metadata (and, for resuming, the
optimizer and scheduler state).

torch is imported by the functions that need it: finding a model and hashing it (what `groupae
embed` does before its worker processes start) stays light.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

from groupae_cli import __version__, shipped_model_path, shipped_models
from groupae_cli.errors import UsageError
from groupae_cli.io.formats import written_atomically

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, model, training: dict | None = None, state: dict | None = None) -> None:
    """Write atomically (temporary name, then rename): a crash never leaves half a checkpoint."""
    import e3nn
    import torch

    payload = {
        "format_version": FORMAT_VERSION,
        "versions": {"groupae": __version__, "torch": str(torch.__version__), "e3nn": str(e3nn.__version__)},
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "training": training or {},
    }
    if state:
        payload["state"] = state
    _save(payload, path)


def _save(payload: dict, path: str | Path) -> None:
    """torch.save atomically, its bytes written by Python: a full disk is then an OSError (one line,
    no file), where torch's own writer raised a RuntimeError ("unexpected pos ...")."""
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with written_atomically(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A checkpoint path, or the name of a model shipped with the package."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_model_path(name_or_path)
    if shipped.is_file():
        return shipped
    known = [p.stem for p in shipped_models()]
    raise UsageError(f"{name_or_path}: no such checkpoint file or shipped model (shipped: {', '.join(known) or 'none'})")


def read_checkpoint(name_or_path: str | Path) -> dict:
    import torch

    path = resolve_model_path(name_or_path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - not a torch file, or one holding pickled code
        why = (str(exc).strip().splitlines() or [f"{type(exc).__name__}, empty or cut short"])[0][:120]
        raise UsageError(f"{path}: not a groupae checkpoint ({why})") from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise UsageError(f"{path}: not a groupae checkpoint (no format_version)")
    version = payload["format_version"]
    if type(version) is not int or version < 1:
        raise UsageError(f"{path}: not a groupae checkpoint (format_version {version!r}; "
                         f"groupae writes the integer {FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise UsageError(f"{path}: checkpoint format {version} is newer than this groupae "
                         f"reads ({FORMAT_VERSION}); upgrade groupae")
    for key, kind in (("config", dict), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise UsageError(f"{path}: not a complete groupae checkpoint ({key!r} missing or not a {kind.__name__})")
    payload["path"] = str(path)
    return payload


def check_weights(path, state_dict: dict, model) -> None:
    """UsageError naming the first tensor of `state_dict` that cannot be `model`'s: not a tensor,
    missing or unexpected, of another shape or kind (integer weights for float ones), or holding
    NaN or Inf (a model whose training diverged gives NaN for every input)."""
    import torch

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        which = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise UsageError(f"{path}: weights do not fit its model config ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected tensors; {which})")
    for name, value in state_dict.items():
        want = expected[name]
        if not isinstance(value, torch.Tensor):
            raise UsageError(f"{path}: weight {name!r} is not a tensor")
        if value.shape != want.shape:
            raise UsageError(f"{path}: weights do not fit its model config ({name!r} has shape "
                             f"{tuple(value.shape)}, the config needs {tuple(want.shape)})")
        if value.dtype.is_floating_point != want.dtype.is_floating_point or value.dtype == torch.bool:
            raise UsageError(f"{path}: weight {name!r} is {value.dtype}, its model needs {want.dtype}")
        if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
            raise UsageError(f"{path}: weight {name!r} holds NaN or Inf; the checkpoint cannot give finite results")


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu"):
    """The GroupAE a checkpoint describes, weights loaded, in eval mode, in its config's
    `inference_dtype` (batches for it: `centred_batch(..., dtype=model.dtype)`)."""
    import torch

    from groupae_cli.models import GroupAE, ModelConfig
    from groupae_cli.models._startup import quick_build

    payload = read_checkpoint(name_or_path)
    try:
        with quick_build():
            model = GroupAE(ModelConfig.from_dict(payload["config"]))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UsageError(f"{payload['path']}: its model config cannot build a model "
                         f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from None
    check_weights(payload["path"], payload["state_dict"], model)
    model.load_state_dict(payload["state_dict"])
    model.checkpoint = {k: v for k, v in payload.items() if k not in ("state_dict", "state")}
    return model.to(device=device, dtype=getattr(torch, model.config.inference_dtype)).eval()


def export_checkpoint(source: str | Path, target: str | Path, note: dict | None = None,
                      config: dict | None = None) -> None:
    """Copy a checkpoint without its resume state (optimizer, scheduler): what gets shipped.

    Weights, versions and training metadata are kept as written; `config` changes settings that
    do not touch the weights (e.g. inference_dtype), checked by ModelConfig; `note` is added under
    training["export"] (e.g. the recipe that made it).
    """

    from groupae_cli.models import ModelConfig

    payload = read_checkpoint(source)
    payload.pop("state", None)
    payload.pop("path", None)
    if config:
        payload["config"] = ModelConfig.from_dict(payload["config"]).replace(**config).to_dict()
    payload["training"] = {**payload.get("training", {}), "export": {"source": str(source), **(note or {})}}
    _save(payload, target)


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shipped_name_of(digest: str) -> str | None:
    """The name of the model shipped with groupae whose file has this sha256, if one has."""
    return next((p.stem for p in shipped_models() if sha256(p) == digest), None)
