"""Put a trained checkpoint into the package as the default model (groupae_cli/pretrained/default.ckpt).

    python recipes/default_model/ship.py runs/default/best.ckpt [--inference-dtype float64] [-o candidate.ckpt]

The optimizer and scheduler state are dropped (the shipped file is weights, config, versions and
training metadata only); the file is then found by name: `--model default`, or no `--model`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from groupae_cli import PRETRAINED_DIR, shipped_model_path
from groupae_cli.io.checkpoint import export_checkpoint, load_model, sha256


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--name", default="default", help="shipped model name (default: default)")
    parser.add_argument("--inference-dtype", choices=("float32", "float64"), default=None,
                        help="the precision users run it in (default: as trained)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="write the file here instead (a candidate to score, e.g. a GPU lease's run)")
    args = parser.parse_args(argv)
    if args.output is None:
        PRETRAINED_DIR.mkdir(exist_ok=True)
    target = args.output or shipped_model_path(args.name)
    changes = {"inference_dtype": args.inference_dtype} if args.inference_dtype else None
    export_checkpoint(args.checkpoint, target, {"recipe": "recipes/default_model"}, changes)
    load_model(target)  # it must load as users will load it
    print(f"{target}: {target.stat().st_size / 1e6:.2f} MB, sha256 {sha256(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
