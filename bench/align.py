"""Alignment against peers on conformer pairs with hydrogens, in one run.

    python bench/align.py [--model default] [--json bench/align.json] [--only sample] [--element-repeats 3]

Pairs:
- "sample": every pair of conformers of the 20 three-conformer molecules in
  sample_data/molecules.sdf (60 pairs);
- "symmetric": two ETKDG + MMFF conformers (seed 7) of each molecule in SYMMETRIC below, chosen
  for methyl, tert-butyl and CF3 groups, where isomorphisms run to millions or billions.
Graph mode is compared with RDKit's GetBestRMS (its default maxMatches, 10^6; the reference
optimum is the better of the two where RDKit hits its cap, and RDKit's own answer otherwise).
Element mode is compared with an exhaustive multi-start search (the same refinement from 300
random rotations as well as its own 84 starts) and with a plain
principal-axes + Hungarian baseline (one assignment, no iteration, best of the 4 proper sign
choices), and with charnley's `rmsd` package (`pip install rmsd`, the `bench` extra), in process:
`calculate_rmsd --reorder` (its default reorder method, inertia-hungarian) and with
`--use-reflections-keep-stereo` (reflections paired with axis swaps, so the fit stays proper).
With a model, the learned guess alone (`--no-refine`) is scored against the optimum.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolAlign

from groupae_cli.align import (
    align,
    align_graph,
    align_structures,
    assign,
    fit_rmsd,
    kabsch,
    start_rotations,
)
from groupae_cli.embed import usable
from groupae_cli.io import Failure, read_structures
from groupae_cli.io.records import Structure
from groupae_cli.io.sdf import read_sdf

ROOT = Path(__file__).resolve().parent.parent
SYMMETRIC = {
    "neopentane": "CC(C)(C)C",
    "hexamethylbenzene": "Cc1c(C)c(C)c(C)c(C)c1C",
    "1,3,5-tri-tert-butylbenzene": "CC(C)(C)c1cc(C(C)(C)C)cc(C(C)(C)C)c1",
    "tert-butyl N-tert-butylcarbamate": "CC(C)(C)OC(=O)NC(C)(C)C",
    "2,6-di-tert-butyl-4-methylphenol (BHT)": "Cc1cc(C(C)(C)C)c(O)c(C(C)(C)C)c1",
    "1,4-bis(trifluoromethyl)benzene": "FC(F)(F)c1ccc(cc1)C(F)(F)F",
    "triisopropylsilane": "CC(C)[SiH](C(C)C)C(C)C",
    "tetraethylammonium": "CC[N+](CC)(CC)CC",
    "ibuprofen": "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "flutamide": "CC(C)C(=O)Nc1ccc([N+](=O)[O-])c(C(F)(F)F)c1",
    "triethyl citrate": "CCOC(=O)CC(O)(CC(=O)OCC)C(=O)OCC",
    "sulfur hexafluoride": "FS(F)(F)(F)(F)F",
}


def sample_pairs():
    path = ROOT / "sample_data" / "molecules.sdf"
    records = [s for s in read_structures(path) if not isinstance(s, Failure) and "_conf" in s.name]
    mols = {m.GetProp("_Name"): m for m in Chem.SDMolSupplier(str(path), removeHs=False)}
    for i in range(0, len(records), 3):
        for j, k in ((0, 1), (0, 2), (1, 2)):
            a, b = records[i + j], records[i + k]
            yield "sample", a.name.rsplit("_conf", 1)[0], a, b, mols[a.name], mols[b.name]


def symmetric_pairs():
    for name, smiles in SYMMETRIC.items():
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        ids = list(AllChem.EmbedMultipleConfs(mol, 2, randomSeed=7))
        AllChem.MMFFOptimizeMoleculeConfs(mol)
        blocks = "".join(Chem.MolToMolBlock(mol, confId=i) + "$$$$\n" for i in ids)
        a, b = [s for s in read_sdf(__import__("io").BytesIO(blocks.encode()), name) if not isinstance(s, Failure)]
        mols = []
        for i in ids:
            single = Chem.Mol(mol)
            single.RemoveAllConformers()
            single.AddConformer(Chem.Conformer(mol.GetConformer(i)), assignId=True)
            mols.append(single)
        yield "symmetric", name, a, b, mols[0], mols[1]


def baseline(a: Structure, b: Structure) -> float:
    """Principal axes + one Hungarian assignment + Kabsch, best over the 4 proper sign choices."""
    best = np.inf
    for rotation in start_rotations(a.positions, b.positions):
        translation = b.positions.mean(0) - a.positions.mean(0) @ rotation.T
        mapping = assign(a.positions @ rotation.T + translation, b.positions, a.numbers, b.numbers)
        best = min(best, fit_rmsd(a.positions, b.positions[mapping], *kabsch(a.positions, b.positions[mapping])))
    return best


def charnley(a: Structure, b: Structure, keep_stereo: bool) -> float:
    """charnley's `calculate_rmsd --reorder` on A and B (as its command line does: both centred,
    reordered by inertia-hungarian), or with `--use-reflections-keep-stereo`."""
    from rmsd import calculate_rmsd as cr

    p, q = a.positions - a.positions.mean(0), b.positions - b.positions.mean(0)
    if keep_stereo:
        return float(cr.check_reflections(a.numbers, b.numbers, p, q, reorder_method=cr.reorder_inertia_hungarian,
                                          rmsd_method=cr.kabsch_rmsd, keep_stereo=True)[0])
    review = cr.reorder_inertia_hungarian(a.numbers, b.numbers, p, q)
    return float(cr.kabsch_rmsd(p, q[review]))


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a checkpoint or shipped model name for the learned guess")
    parser.add_argument("--json", type=Path, default=None, help="write every pair's figures here")
    parser.add_argument("--limit", type=int, default=None,
                        help="align_graph's limit on exact completions per skeleton (default: its own)")
    parser.add_argument("--only", choices=["sample", "symmetric"], default=None, help="one set of pairs only")
    parser.add_argument("--element-repeats", type=int, default=1,
                        help="time element mode this many times per pair and keep the fastest (a machine shared "
                             "with other jobs slows single runs at random)")
    args = parser.parse_args()
    model = None
    if args.model:
        from groupae_cli.io.checkpoint import load_model

        model = load_model(args.model)
    rows = []
    graph_options = {} if args.limit is None else {"limit": args.limit}
    pairs = ([] if args.only == "symmetric" else list(sample_pairs())) + \
            ([] if args.only == "sample" else list(symmetric_pairs()))
    for kind, name, a, b, ma, mb in pairs:
        graph, t_graph = timed(align_graph, a, b, **graph_options)
        matches = len(mb.GetSubstructMatches(ma, uniquify=False, maxMatches=1_000_000, useChirality=False))
        rdkit, t_rdkit = timed(rdMolAlign.GetBestRMS, ma, mb)
        capped = matches >= 1_000_000
        optimum = min(rdkit, graph.rmsd) if capped else rdkit
        elem, t_elem = timed(align, a.positions, a.numbers, b.positions, b.numbers)
        for _ in range(args.element_repeats - 1):
            t_elem = min(t_elem, timed(align, a.positions, a.numbers, b.positions, b.numbers)[1])
        exhaustive = align(a.positions, a.numbers, b.positions, b.numbers, extra_starts=300, seed=1)
        row = {"set": kind, "molecule": name, "atoms": len(a), "rdkit_matches": matches, "rdkit_capped": capped,
               "graph_rmsd": graph.rmsd, "graph_s": t_graph, "proven_optimal": graph.details["proven_optimal"],
               "rdkit_rmsd": rdkit, "rdkit_s": t_rdkit, "graph_optimum": optimum,
               "element_rmsd": elem.rmsd, "element_s": t_elem, "exhaustive_rmsd": exhaustive.rmsd,
               "baseline_rmsd": baseline(a, b), "element_proven": elem.details["proven_optimal"]}
        for key, stereo in (("charnley", False), ("charnley_stereo", True)):
            row[f"{key}_rmsd"], row[f"{key}_s"] = timed(charnley, a, b, stereo)
        if model is not None and usable(a, model) is None:  # the model knows the elements
            for match, optimum_key in (("graph", "graph_optimum"), ("elements", "exhaustive_rmsd")):
                learned, t_learned = timed(align_structures, a, b, match, model, "cpu", refine_guess=False)
                row[f"learned_{match}_rmsd"], row[f"learned_{match}_s"] = learned.rmsd, t_learned
                row[f"learned_{match}_optimal"] = bool(learned.rmsd <= row[optimum_key] + 1e-3)
            with_model, t_with = timed(align_structures, a, b, "graph", model, "cpu")
            row["graph_with_model_rmsd"], row["graph_with_model_s"] = with_model.rmsd, t_with
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")

    def col(key, subset):
        return np.array([r[key] for r in subset], dtype=float)

    print(f"{len(rows)} conformer pairs; model: {args.model or 'none'}; graph options: {graph_options or 'defaults'}; "
          f"element mode timed {'once' if args.element_repeats == 1 else f'best of {args.element_repeats}'} per pair\n")
    print("| figure | sample pairs | symmetric pairs |")
    print("| --- | --- | --- |")
    sets = [[r for r in rows if r["set"] == s] for s in ("sample", "symmetric")]

    def line(label, fn):
        print(f"| {label} | " + " | ".join(fn(s) if s else "-" for s in sets) + " |")

    line("pairs (of which RDKit hits its 10^6 match cap)", lambda s: f"{len(s)} ({sum(r['rdkit_capped'] for r in s)})")
    line("graph mode within 1e-3 Å of the optimum",
         lambda s: f"{np.mean(np.abs(col('graph_rmsd', s) - col('graph_optimum', s)) <= 1e-3):.3f}")
    line("graph mode proven optimal", lambda s: f"{np.mean(col('proven_optimal', s)):.3f}")
    line("GetBestRMS wrong by > 1e-3 Å (capped)",
         lambda s: f"{int(sum(r['rdkit_rmsd'] > r['graph_optimum'] + 1e-3 for r in s))}")
    line("median time, groupae graph / GetBestRMS",
         lambda s: f"{np.median(col('graph_s', s)) * 1e3:.1f} ms / {np.median(col('rdkit_s', s)) * 1e3:.1f} ms")
    line("median of per-pair speed-up, GetBestRMS time / groupae time",
         lambda s: f"{np.median(col('rdkit_s', s) / col('graph_s', s)):.2f}x")
    def many_isomorphisms(s):
        m = [r for r in s if r["rdkit_matches"] >= 10_000]
        return f"{np.median(col('rdkit_s', m) / col('graph_s', m)):.2f}x ({len(m)})" if m else "- (0)"

    line("the same, pairs with >= 10^4 isomorphisms (count)", many_isomorphisms)
    line("element mode within 1e-3 Å of exhaustive multi-start",
         lambda s: f"{np.mean(col('element_rmsd', s) <= col('exhaustive_rmsd', s) + 1e-3):.3f}")
    line("element mode median time", lambda s: f"{np.median(col('element_s', s)) * 1e3:.1f} ms")
    line("element mode proven optimal (meets its lower bound)", lambda s: f"{np.mean(col('element_proven', s)):.3f}")
    line("charnley rmsd --reorder (inertia-hungarian) within 1e-3 Å of exhaustive",
         lambda s: f"{np.mean(col('charnley_rmsd', s) <= col('exhaustive_rmsd', s) + 1e-3):.3f}")
    line("charnley rmsd --reorder --use-reflections-keep-stereo within 1e-3 Å of exhaustive",
         lambda s: f"{np.mean(col('charnley_stereo_rmsd', s) <= col('exhaustive_rmsd', s) + 1e-3):.3f}")
    line("charnley below exhaustive by > 1e-3 Å (a mirror image or a broken mapping)",
         lambda s: f"{int(sum(min(r['charnley_rmsd'], r['charnley_stereo_rmsd']) < r['exhaustive_rmsd'] - 1e-3 for r in s))}")
    line("median time, charnley --reorder / with keep-stereo",
         lambda s: f"{np.median(col('charnley_s', s)) * 1e3:.1f} ms / {np.median(col('charnley_stereo_s', s)) * 1e3:.1f} ms")
    line("principal axes + Hungarian baseline within 1e-3 Å of exhaustive",
         lambda s: f"{np.mean(col('baseline_rmsd', s) <= col('exhaustive_rmsd', s) + 1e-3):.3f}")
    line("mean RMSD: element mode / baseline / charnley / charnley keep-stereo / exhaustive",
         lambda s: f"{col('element_rmsd', s).mean():.3f} / {col('baseline_rmsd', s).mean():.3f} / "
                   f"{col('charnley_rmsd', s).mean():.3f} / {col('charnley_stereo_rmsd', s).mean():.3f} / "
                   f"{col('exhaustive_rmsd', s).mean():.3f} Å")
    if model is not None:
        sets = [[r for r in s if "learned_graph_rmsd" in r] for s in sets]
        line("pairs the model can take", lambda s: f"{len(s)}")
        line("learned guess alone optimal (graph / elements)",
             lambda s: f"{np.mean(col('learned_graph_optimal', s)):.3f} / {np.mean(col('learned_elements_optimal', s)):.3f}")
        line("learned guess alone, mean RMSD above the optimum (graph)",
             lambda s: f"{np.mean(col('learned_graph_rmsd', s) - col('graph_optimum', s)):.3f} Å")
        line("median time, learned guess alone / graph mode with the model",
             lambda s: f"{np.median(col('learned_graph_s', s)) * 1e3:.1f} ms / "
                       f"{np.median(col('graph_with_model_s', s)) * 1e3:.1f} ms")
    print("\n| symmetric molecule | atoms | isomorphisms (RDKit, capped at 10^6) | groupae RMSD | proven | GetBestRMS | "
          "groupae ms | GetBestRMS ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in [r for r in rows if r["set"] == "symmetric"]:
        print(f"| {r['molecule']} | {r['atoms']} | {r['rdkit_matches']:,} | {r['graph_rmsd']:.4f} | "
              f"{'yes' if r['proven_optimal'] else 'no'} | {r['rdkit_rmsd']:.4f} | {r['graph_s'] * 1e3:.1f} | "
              f"{r['rdkit_s'] * 1e3:.1f} |")


if __name__ == "__main__":
    main()
