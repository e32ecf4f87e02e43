"""Model quality, one design at a time: a fixed training budget, then held-out reconstruction and
the usefulness of z as a descriptor, side by side with classical invariants.

    pip install -e '.[train,bench]' && python recipes/default_model/make_data.py   # the data, once
    python bench/model_quality.py --design bench/designs/mean.yaml        # train + evaluate a design
    python bench/model_quality.py --model default                         # evaluate a checkpoint only
    python bench/model_quality.py --model default --split name --fit-steps 200 --fit-hold-identity \
        --usefulness-only --workers 2                                     # z fitted first (CPU hours)

Data (fixed, so that rows compare): the default model's files (QM9 + drug-like conformers), split
exactly as the default-model recipe splits them (`StructureSet.split(0.1, seed 0)` over both files
in the recipe's order), so no held-out molecule was ever trained on by the bench's runs or by the
shipped model. `--split name` takes the split by molecule name (TrainConfig.split) instead, for a
model trained under it (the default model with Si and Se); rows compare only within one split. Training: 20,000 QM9 + 2,000 drug-like structures from the training side, a fixed
budget of optimizer steps (`--steps`, batch 32). Held out: 2,000 QM9 and every drug-like structure
of the validation side for reconstruction; 5,000 QM9 for the property probe; the drug-like
conformers for retrieval.

Reported per design (one row; the JSON beside it has the per-size table):
- reconstruction RMSD through the predicted group element, median / mean, QM9 and drug-like;
- matched RMSD: the decoded structure against the input after Hungarian matching within elements and
  Kabsch refinement from the predicted pose: the structure's quality alone, whatever the order;
- element accuracy; bonds (from the input's SDF) whose decoded length is within 0.1 Å of the truth;
- z's invariance: max over structures of |z(gX) - z(X)| for a random rotation, translation and
  renumbering g (applied in the model's inference precision, as users get it: float32, or
  float64 for a model whose config says so), over the largest |z| entry of the set;
- conformer retrieval top-1: z's nearest neighbour among held-out drug-like structures is another
  conformer of the same molecule; ridge probe from z alone: MAE of HOMO-LUMO gap (eV), dipole (D),
  U0 after a per-element linear fit (eV), polarizability (bohr^3) on held-out QM9; for a model whose
  z has a frame-free block (`embedding_identity`), the same figures for that block alone (a second row);
- the same usefulness figures for the Coulomb-matrix eigenspectrum and averaged SOAP (dscribe),
  computed once and cached.

With `--fit-steps K` (and `--fit-hold-identity`) every z is first fitted to its structure, as
`groupae embed --fit-steps K` does; the fitted z of the usefulness sets are computed by `--workers`
processes and kept in the run directory (`z_fit.npz`), so a second run reuses them.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "default_model"
FILES = ("qm9.sdf.gz", "druglike.sdf.gz")  # the recipe's order: the split depends on it
TRAIN_QM9, TRAIN_DRUG, HELD_QM9, PROBE_QM9 = 20_000, 2_000, 2_000, 5_000


# --- data -----------------------------------------------------------------------------------------

def load_data(cache_dir: Path) -> dict:
    """Every record of the recipe's files (positions, elements, bonds), cached as npz."""
    from groupae_cli.train.dataset import StructureSet

    cache = cache_dir / "data.npz"
    if not cache.exists():
        from groupae_cli.io import Failure, read_inputs

        structures, bonds, bond_offsets = [], [], [0]
        for _, item in read_inputs([str(DATA / f) for f in FILES], None):
            if isinstance(item, Failure):
                raise SystemExit(f"bench data: {item}")
            structures.append(item)
            b = item.bonds if item.bonds is not None else np.zeros((0, 2), np.int64)
            bonds.append(b)
            bond_offsets.append(bond_offsets[-1] + len(b))
        data = StructureSet.from_structures(structures)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(cache, numbers=data.numbers, positions=data.positions, offsets=data.offsets, names=data.names,
                 bonds=np.concatenate(bonds), bond_offsets=np.array(bond_offsets))
    with np.load(cache, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    data = StructureSet(arrays["numbers"], arrays["positions"], arrays["offsets"], arrays["names"])
    return {"set": data, "bonds": arrays["bonds"], "bond_offsets": arrays["bond_offsets"]}


def subsets(data, split: str = "random") -> dict[str, np.ndarray]:
    """The fixed index sets: training (QM9 + drug-like) and the held-out evaluation sets, under the
    default-model recipe's split: "random" (every design row, and the default models up to the one
    trained on it) or "name" (TrainConfig.split: the default model trained with Si and Se)."""
    train, held = data.split(0.1, 0, by=split)
    is_qm9 = np.char.startswith(data.names.astype(str), "qm9_")
    rng = np.random.default_rng(20261126)

    def pick(pool, n):
        return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))

    return {"train": np.concatenate([pick(train[is_qm9[train]], TRAIN_QM9), pick(train[~is_qm9[train]], TRAIN_DRUG)]),
            "held_qm9": pick(held[is_qm9[held]], HELD_QM9), "held_drug": held[~is_qm9[held]],
            "probe_qm9": pick(held[is_qm9[held]], PROBE_QM9)}


# --- training -------------------------------------------------------------------------------------

def read_design(path: Path) -> tuple[dict, dict, str]:
    """(model overrides, train overrides, preset) of a design YAML: sections `preset`, `model`, `train`."""
    import yaml

    design = yaml.safe_load(path.read_text()) or {}
    return design.get("model") or {}, design.get("train") or {}, design.get("preset", "small")


def train_design(data, sets, design: Path, out: Path, steps: int, batch_size: int, epochs: int, device: str) -> Path:
    from groupae_cli.models import preset
    from groupae_cli.models.config import ORGANIC
    from groupae_cli.train import TrainConfig, Trainer
    from groupae_cli.train.dataset import Batches, epoch_batches, fixed_batches

    model_over, train_over, preset_name = read_design(design)
    model_config = preset(preset_name, **{"elements": ORGANIC, **model_over})
    epoch_size = steps * batch_size // epochs
    config = TrainConfig(**{"epochs": epochs, "batch_size": batch_size, "epoch_size": epoch_size, "val_size": 500,
                            **train_over})
    val = np.sort(np.random.default_rng(3).choice(np.concatenate([sets["held_qm9"], sets["held_drug"]]), 500,
                                                  replace=False))
    sizes = data.sizes

    def train_batches(epoch):
        return Batches(data, epoch_batches(sets["train"], sizes, config.batch_size, config.seed, epoch,
                                           epoch_size=config.epoch_size), model_config.elements)

    def val_batches():
        return Batches(data, list(fixed_batches(val, 64)), model_config.elements)

    trainer = Trainer(model_config, config, out, train_batches, val_batches, device=device,
                      extra_state={"bench": str(design)})
    if (out / "last.ckpt").exists():
        trainer.resume(out / "last.ckpt")
    trainer.fit()
    return out / "last.ckpt"


# --- evaluation -----------------------------------------------------------------------------------

@torch.no_grad()
def reconstruction(model, data, bonds, bond_offsets, indices: np.ndarray, device) -> dict:
    """Per-structure figures of held-out structures (the model's inference precision, hard permutation)."""
    from groupae_cli.align import refine
    from groupae_cli.models.symmetry import GroupElement
    from groupae_cli.train.losses import decoded_in_input_frame
    from groupae_cli.train.metrics import size_table

    rows = {k: [] for k in ("rmsd", "matched", "element_acc", "bonds_ok", "bonds", "n_atoms", "baseline_rmsd",
                            "invariance", "z_size")}
    elements = np.asarray(model.config.elements)
    generator = torch.Generator().manual_seed(0)
    for start in range(0, len(indices), 64):
        chunk = indices[start : start + 64]
        batch = {k: v.to(device) for k, v in data.batch(chunk, model.config.elements, model.dtype).items()}
        out = model(batch)
        moved = model.encode(GroupElement.random(batch, generator=generator).apply(batch))["z"]
        rows["invariance"].extend((moved - out["z"]).abs().amax(1).cpu().numpy())
        rows["z_size"].extend(out["z"].abs().amax(1).cpu().numpy())
        x_hat = out["reconstruction"].double().cpu().numpy()
        predicted = elements[out["reconstruction_logits"].argmax(-1).cpu().numpy()]
        world = decoded_in_input_frame(out).double().cpu().numpy()  # slot order
        slot_atoms = out["order"].cpu().numpy()
        at = 0
        for b, i in enumerate(chunk):
            lo, hi = data.offsets[i], data.offsets[i + 1]
            n = hi - lo
            x, z = data.positions[lo:hi], data.numbers[lo:hi].astype(np.int64)
            mine = x_hat[at : at + n]
            rows["rmsd"].append(np.sqrt(((mine - x) ** 2).sum(-1).mean()))
            rows["baseline_rmsd"].append(np.sqrt(((x - x.mean(0)) ** 2).sum(-1).mean()))
            rows["element_acc"].append((predicted[at : at + n] == z).mean())
            decoded, decoded_z = world[b, :n], z[slot_atoms[b, :n]]  # each slot carries its atom's element
            rows["matched"].append(refine(decoded, x, decoded_z, z, np.eye(3), np.zeros(3)).rmsd)
            pairs = bonds[bond_offsets[i] : bond_offsets[i + 1]]
            true = np.linalg.norm(x[pairs[:, 0]] - x[pairs[:, 1]], axis=-1)
            got = np.linalg.norm(mine[pairs[:, 0]] - mine[pairs[:, 1]], axis=-1)
            rows["bonds_ok"].append(int((np.abs(got - true) <= 0.1).sum()))
            rows["bonds"].append(len(pairs))
            rows["n_atoms"].append(n)
            at += n
    cat = {k: np.asarray(v) for k, v in rows.items()}
    return {"structures": len(indices), "rmsd_median": float(np.median(cat["rmsd"])), "rmsd_mean": float(cat["rmsd"].mean()),
            "matched_median": float(np.median(cat["matched"])), "matched_mean": float(cat["matched"].mean()),
            "baseline_mean": float(cat["baseline_rmsd"].mean()),
            "element_acc": float((cat["element_acc"] * cat["n_atoms"]).sum() / cat["n_atoms"].sum()),
            "bonds_within_0.1": float(cat["bonds_ok"].sum() / max(1, cat["bonds"].sum())),
            # |z(gX) - z(X)| (max over entries) against the scale of z (its largest entry over the set)
            "invariance_max": float(cat["invariance"].max() / cat["z_size"].max()),
            "invariance_p99": float(np.percentile(cat["invariance"], 99) / cat["z_size"].max()),
            "by_size": size_table({**cat, "perm_acc": np.full(len(indices), np.nan)})}


@torch.no_grad()
def embeddings(model, data, indices: np.ndarray, device) -> np.ndarray:
    out = []
    for start in range(0, len(indices), 128):
        batch = {k: v.to(device) for k, v in data.batch(indices[start : start + 128], model.config.elements, model.dtype).items()}
        out.append(model.encode(batch)["z"].double().cpu().numpy())
    return np.concatenate(out)


_WORKER = {}  # in each process of fitted_embeddings: the model and the data, loaded once


def _fitted_part(checkpoint: str, fit: tuple[int, bool], device: str, indices: np.ndarray) -> np.ndarray:
    """One part of `fitted_embeddings`, in a worker process (one torch thread)."""
    from groupae_cli.io.checkpoint import load_model

    if not _WORKER:
        torch.set_num_threads(1)
        _WORKER["model"] = load_model(checkpoint, device).eval()
        _WORKER["model"].fit_steps, _WORKER["model"].fit_hold_identity = fit
        _WORKER["data"] = load_data(ROOT / "runs" / "model_quality")["set"]
    return embeddings(_WORKER["model"], _WORKER["data"], indices, device)


def fitted_embeddings(checkpoint: str, fit: tuple[int, bool], device: str, indices: np.ndarray, workers: int,
                      label: str, done: np.ndarray | None = None, keep=None) -> np.ndarray:
    """z of the structures at `indices`, each fitted (`fit`: steps, whether the frame-free part is
    held), by `workers` processes over parts of 32 in turn, in the order given. `done`: the first
    rows, from an earlier run; `keep(rows)` is called with the rows so far after every part."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    out = [done] if done is not None and len(done) else []
    parts = [indices[k : k + 32] for k in range(sum(map(len, out)), len(indices), 32)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for z in pool.map(_fitted_part, *zip(*((checkpoint, fit, device, p) for p in parts), strict=True)):
            out.append(z)
            if keep:
                keep(np.concatenate(out))
            print(f"{label}: {sum(map(len, out))}/{len(indices)} fitted", file=sys.stderr, flush=True)
    return np.concatenate(out)


def key_of(sets: dict, indices: np.ndarray) -> str:
    """Which of the fixed index sets `indices` is."""
    return next(key for key, chosen in sets.items() if chosen is indices)


def molecules(data, indices):
    numbers = [data.numbers[data.offsets[i] : data.offsets[i + 1]].astype(np.int64) for i in indices]
    positions = [data.positions[data.offsets[i] : data.offsets[i + 1]] for i in indices]
    return numbers, positions


def usefulness_inputs(data, sets) -> dict:
    """What every descriptor is scored against, read once: the held-out drug-like structures'
    molecule ids (retrieval) and the probe molecules' QM9 properties and element counts."""
    from descriptors import element_counts, qm9_properties

    from groupae_cli.models.config import ORGANIC

    probe = sets["probe_qm9"]
    return {"groups": data.groups()[sets["held_drug"]],
            "targets": qm9_properties([int(str(data.names[i]).split("_")[1]) for i in probe]),
            "counts": element_counts(molecules(data, probe)[0], ORGANIC)}


def usefulness(features_of, sets, inputs: dict) -> dict:
    """Retrieval top-1 on held-out drug-like conformers, ridge-probe MAEs on held-out QM9."""
    from descriptors import conformer_retrieval, ridge_probe

    top1, queries = conformer_retrieval(features_of(sets["held_drug"]), inputs["groups"])
    return {"retrieval_top1": top1, "retrieval_queries": queries,
            "probe_mae": ridge_probe(features_of(sets["probe_qm9"]), inputs["targets"], inputs["counts"], seed=0)}


def peers(data, sets, inputs: dict, cache_dir: Path, split: str = "random") -> dict:
    """The classical descriptors' usefulness figures (model-independent, cached per split)."""
    cache = cache_dir / ("peers.json" if split == "random" else f"peers_{split}.json")
    if cache.exists():
        return json.loads(cache.read_text())
    from descriptors import averaged_soap, coulomb_eigenspectrum, mean_baseline

    from groupae_cli.models.config import ORGANIC

    result = {"mean_baseline": {"probe_mae": mean_baseline(inputs["targets"], inputs["counts"])}}
    size = int(data.sizes.max())
    for name, make in (("coulomb_eigenspectrum", lambda n, p: coulomb_eigenspectrum(n, p, size)),
                       ("soap_average", lambda n, p: averaged_soap(n, p, list(ORGANIC)))):
        started = time.perf_counter()
        result[name] = usefulness(lambda idx, make=make: make(*molecules(data, idx)), sets, inputs)
        result[name]["seconds"] = time.perf_counter() - started
        print(f"{name}: {result[name]}", file=sys.stderr)
    cache.write_text(json.dumps(result, indent=2))
    return result


def row(name: str, result: dict) -> str:
    q, d, u = result["qm9"], result["drug"], result["usefulness"]
    mae = u["probe_mae"]
    return (f"| {name} | {q['rmsd_median']:.3f} / {q['rmsd_mean']:.3f} | {d['rmsd_median']:.3f} / {d['rmsd_mean']:.3f} "
            f"| {q['matched_median']:.3f} / {d['matched_median']:.3f} | {q['element_acc']:.4f} / {d['element_acc']:.4f} "
            f"| {q['bonds_within_0.1']:.3f} / {d['bonds_within_0.1']:.3f} "
            f"| {max(q['invariance_max'], d['invariance_max']):.1e} | {u['retrieval_top1']:.3f} "
            f"| {mae['gap']:.3f} | {mae['dipole']:.3f} | {mae['u0']:.3f} | {mae['polarizability']:.2f} |")


#: the reconstruction figures of a row that has none
DASH = {"rmsd_median": np.nan, "rmsd_mean": np.nan, "matched_median": np.nan, "element_acc": np.nan,
        "bonds_within_0.1": np.nan, "invariance_max": np.nan}
HEADER = ("| design | QM9 RMSD median / mean (Å) | drug-like RMSD median / mean (Å) | matched RMSD median QM9 / drug (Å) "
          "| element acc. QM9 / drug | bonds within 0.1 Å QM9 / drug | z invariance (max rel.) | retrieval top-1 "
          "| gap MAE (eV) | dipole MAE (D) | U0 MAE (eV) | polarizability MAE (bohr³) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--design", type=Path, help="a design YAML (preset, model, train sections): train, then evaluate")
    what.add_argument("--model", help="evaluate this checkpoint (a path or a shipped model's name)")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default runs/model_quality/<design>)")
    parser.add_argument("--steps", type=int, default=6000, help="optimizer steps (the fixed budget)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6, help="validation points over the budget")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-peers", action="store_true", help="skip the classical descriptors")
    parser.add_argument("--fit-steps", type=int, default=0, help="fit each z to its structure first (groupae embed "
                                                                 "--fit-steps)")
    parser.add_argument("--fit-hold-identity", action="store_true",
                        help="with --fit-steps: the fit leaves z's frame-free part as the encoder made it")
    parser.add_argument("--workers", type=int, default=1, help="processes for the fitted z of the usefulness sets")
    parser.add_argument("--usefulness-only", action="store_true",
                        help="skip the reconstruction figures (with --fit-steps they take hours on a CPU)")
    parser.add_argument("--split", choices=("random", "name"), default="random",
                        help="which molecules are held out: the split the model was trained under (TrainConfig.split); "
                             "rows compare only within one split")
    args = parser.parse_args(argv)

    from groupae_cli.io.checkpoint import load_model

    cache_dir = ROOT / "runs" / "model_quality"
    loaded = load_data(cache_dir)
    data = loaded["set"]
    sets = subsets(data, args.split)
    started = time.perf_counter()
    stem = args.design.stem if args.design else Path(args.model).stem
    fit = (args.fit_steps, args.fit_hold_identity and args.fit_steps > 0)
    fitted = f"_fit{fit[0]}{'_held' if fit[1] else ''}" if fit[0] else ""
    out = args.out or cache_dir / (stem + fitted if args.split == "random" else f"{stem}_{args.split}{fitted}")
    if args.design:
        name = stem
        checkpoint = train_design(data, sets, args.design, out, args.steps, args.batch_size, args.epochs, args.device)
    else:
        name, checkpoint = args.model, args.model
    if fit[0]:
        name += f" --fit-steps {fit[0]}" + (" --fit-hold-identity" if fit[1] else "")
    train_seconds = time.perf_counter() - started
    model = load_model(checkpoint, args.device).eval()
    model.fit_steps, model.fit_hold_identity = fit
    result = {"design": name, "checkpoint": str(checkpoint), "train_seconds": train_seconds,
              "parameters": sum(p.numel() for p in model.parameters()), "config": model.config.to_dict(),
              "steps": args.steps if args.design else None, "batch_size": args.batch_size,
              "command": "python bench/model_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if not args.usefulness_only:
        for key, held in (("qm9", "held_qm9"), ("drug", "held_drug")):
            result[key] = reconstruction(model, data, loaded["bonds"], loaded["bond_offsets"], sets[held], args.device)
    inputs = usefulness_inputs(data, sets)
    if fit[0]:
        kept = out / "z_fit.npz"  # the fitted z so far, of an earlier run with the same settings: it goes on
        z = dict(np.load(kept)) if kept.exists() else {}
        if z and (int(z.pop("fit_steps")), bool(z.pop("hold"))) != fit:
            raise SystemExit(f"{kept}: fitted with other settings; remove it or give --out")
        out.mkdir(parents=True, exist_ok=True)

        def keep(rows, key):
            z[key] = rows
            np.savez(out / "z_fit.part.npz", fit_steps=fit[0], hold=fit[1], **z)
            (out / "z_fit.part.npz").replace(kept)  # whole or not at all, if stopped while writing

        for key in ("held_drug", "probe_qm9"):
            if len(z.get(key, ())) < len(sets[key]):
                z[key] = fitted_embeddings(str(checkpoint), fit, args.device, sets[key], args.workers, key,
                                           z.get(key), functools.partial(keep, key=key))
    else:
        z = {key: embeddings(model, data, sets[key], args.device) for key in ("held_drug", "probe_qm9")}
    result["usefulness"] = usefulness(lambda idx: z[key_of(sets, idx)], sets, inputs)
    identity = model.config.embedding_identity
    if identity:  # the frame-free block alone: what the molecule is, whatever its conformation
        result["usefulness_identity"] = usefulness(lambda idx: z[key_of(sets, idx)][:, :identity], sets, inputs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(result, indent=2))
    shown = result if not args.usefulness_only else {**result, "qm9": DASH, "drug": DASH}
    print(HEADER)
    print(row(name, shown).replace("nan", "-"))
    if identity:
        print(row(f"{name}: z[:, :{identity}] alone (the frame-free block)",
                  {**shown, "usefulness": result["usefulness_identity"]}).replace("nan", "-"))
    if not args.no_peers:
        known = peers(data, sets, inputs, cache_dir, args.split)
        print(f"probe MAE of predicting the training mean: {known['mean_baseline']['probe_mae']}")
        for peer, figures in known.items():
            if peer == "mean_baseline":
                continue
            print(row(peer, {"qm9": DASH, "drug": DASH, "usefulness": figures}).replace("nan", "-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
