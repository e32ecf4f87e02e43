"""Element-mode alignment (Python API): exact recovery, known optimum, never a mirror image."""

import json

import numpy as np
import pytest
from conftest import SAMPLE, split

from groupae_cli.align import align, kabsch
from groupae_cli.io import read_structures
from groupae_cli.models.symmetry import random_rotations


def one(path):
    (structure,), _ = split(read_structures(path))
    return structure


@pytest.fixture(scope="module")
def molecules():
    structures, _ = split(read_structures(SAMPLE / "molecules.sdf"))
    return structures[::40][:6]


def test_moved_renumbered_copy_is_recovered_exactly(molecules, rng):
    for k, (s, rotation) in enumerate(zip(molecules, random_rotations(len(molecules)).numpy())):
        sigma = rng.permutation(len(s))
        shift = rng.normal(scale=5.0, size=3)
        moved = (s.positions @ rotation.T + shift)[sigma]
        result = align(s.positions, s.numbers, moved, s.numbers[sigma])
        assert result.rmsd < 1e-6, (k, result.rmsd)
        np.testing.assert_allclose(s.positions @ result.rotation.T + result.translation, moved[result.mapping], atol=1e-6)
        assert np.isclose(np.linalg.det(result.rotation), 1.0)
        assert sorted(result.mapping.tolist()) == list(range(len(s)))
        np.testing.assert_array_equal(s.numbers, s.numbers[sigma][result.mapping])


def test_sample_pair_reaches_at_least_the_known_correspondence():
    a, b = one(SAMPLE / "align" / "a.xyz"), one(SAMPLE / "align" / "b.xyz")
    truth = json.loads((SAMPLE / "align" / "truth.json").read_text())
    known = np.empty(len(a), dtype=np.int64)
    known[np.asarray(truth["permutation"])] = np.arange(len(a))  # a atom i is b atom known[i]
    rotation, translation = kabsch(a.positions, b.positions[known])
    known_rmsd = np.sqrt(((a.positions @ rotation.T + translation - b.positions[known]) ** 2).sum(-1).mean())
    assert known_rmsd == pytest.approx(truth["conformer_rmsd_all_atoms"], abs=1e-3)
    result = align(a.positions, a.numbers, b.positions, b.numbers)
    assert result.rmsd <= known_rmsd + 1e-9
    exhaustive = align(a.positions, a.numbers, b.positions, b.numbers, extra_starts=60)
    assert result.rmsd <= exhaustive.rmsd + 1e-3


def test_a_mirror_image_is_never_produced():
    s = one(SAMPLE / "same" / "molecule.sdf")  # has a stereocentre
    mirrored = s.positions * np.array([-1.0, 1.0, 1.0])
    result = align(s.positions, s.numbers, mirrored, s.numbers, extra_starts=20)
    assert np.isclose(np.linalg.det(result.rotation), 1.0)
    assert result.rmsd > 0.1


def test_different_compositions_are_refused(molecules):
    a, b = molecules[0], molecules[1]
    with pytest.raises(ValueError, match="different compositions"):
        align(a.positions, a.numbers, b.positions, b.numbers)


def test_a_given_guess_is_used_first_and_can_stand_alone(molecules, rng):
    s = molecules[2]
    rotation = random_rotations(1).numpy()[0]
    shift = rng.normal(scale=3.0, size=3)
    moved = s.positions @ rotation.T + shift
    alone = align(s.positions, s.numbers, moved, s.numbers, guess=(rotation, shift), refine_guess=False)
    assert alone.starts == 1 and alone.rmsd < 1e-9
    np.testing.assert_array_equal(alone.mapping, np.arange(len(s)))
    refined = align(s.positions, s.numbers, moved, s.numbers, guess=(rotation, shift))
    assert refined.details["guess_was_optimal"] and refined.starts == 1 + 24 + 60  # guess, axes, spread


# --- graph mode --------------------------------------------------------------------------------


def conformer_pairs(count):
    structures, _ = split(read_structures(SAMPLE / "molecules.sdf"))
    confs = [s for s in structures if "_conf" in s.name]
    return [(confs[i], confs[i + 1]) for i in range(0, 3 * count, 3)]


def test_graph_mode_matches_rdkit_best_rms_on_conformer_pairs():
    from rdkit import Chem
    from rdkit.Chem import rdMolAlign

    from groupae_cli.align import align_graph

    mols = {m.GetProp("_Name"): m for m in Chem.SDMolSupplier(str(SAMPLE / "molecules.sdf"), removeHs=False)}
    # the first eight families include symmetric ones (1,152 isomorphisms) and nitro groups
    for a, b in conformer_pairs(8) + [(p[0], p[1]) for p in conformer_pairs(20)[14:18]]:
        result = align_graph(a, b)
        expected = rdMolAlign.GetBestRMS(mols[a.name], mols[b.name], maxMatches=1_000_000)
        assert result.rmsd == pytest.approx(expected, abs=1e-6), a.name
        assert np.isclose(np.linalg.det(result.rotation), 1.0)


def bonded_copy(s, rotation, shift, sigma):
    """s rotated, shifted and renumbered (new atom k is old atom sigma[k]), bonds and charges kept."""
    from groupae_cli.io import Structure

    return Structure(s.numbers[sigma], (s.positions @ rotation.T + shift)[sigma], "copy", "", 0,
                     bonds=np.argsort(sigma)[s.bonds], bond_orders=s.bond_orders, charges=s.charges[sigma])


def test_graph_mode_recovers_a_moved_renumbered_copy(rng):
    from groupae_cli.align import align_graph

    s = one(SAMPLE / "align" / "a.sdf")
    sigma = rng.permutation(len(s))
    rotation = random_rotations(1).numpy()[0]
    moved = bonded_copy(s, rotation, 2.0, sigma)
    result = align_graph(s, moved)
    assert result.rmsd < 1e-6 and result.details["proven_optimal"]
    np.testing.assert_allclose(result.rotation, rotation, atol=1e-6)


def conformers(smiles, count=2, seed=7):
    """Structures (with bonds) of ETKDG + MMFF conformers of one molecule, the RDKit molecule
    holding them all, and the conformer ids."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from groupae_cli.io.sdf import read_sdf

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    ids = list(AllChem.EmbedMultipleConfs(mol, count, randomSeed=seed))
    AllChem.MMFFOptimizeMoleculeConfs(mol)
    blocks = "".join(Chem.MolToMolBlock(mol, confId=i) + "$$$$\n" for i in ids)
    structures, _ = split(read_sdf(__import__("io").BytesIO(blocks.encode()), smiles))
    return structures, mol, ids


def test_graph_mode_on_many_methyl_groups_matches_uncapped_rdkit():
    """Neopentane: 31,104 isomorphisms, 24 of its carbon skeleton, each completed exactly;
    hexamethylbenzene: 559,872, with a limit that leaves the completion to the local search, proven
    optimal by the bound search over the methyl groups."""
    from rdkit.Chem import rdMolAlign

    from groupae_cli.align import align_graph

    for smiles, limit, proven in (("CC(C)(C)C", 50_000, True), ("Cc1c(C)c(C)c(C)c(C)c1C", 1_000, True)):
        (a, b), mol, ids = conformers(smiles)
        result = align_graph(a, b, limit=limit)
        expected = rdMolAlign.GetBestRMS(mol, mol, prbId=ids[0], refId=ids[1], maxMatches=1_000_000)
        assert result.rmsd == pytest.approx(expected, abs=1e-4), smiles
        assert result.details["proven_optimal"] is proven


def test_graph_mode_is_right_where_rdkits_match_cap_is_not(rng):
    """1,3,5-tri-tert-butylbenzene has 1.3e10 isomorphisms: RDKit's GetBestRMS stops at its
    maxMatches cap with a wrong answer; a moved, renumbered copy is found exactly, and proven
    optimal by bounds without trying the 1,296^3 methyl permutations of a skeleton."""
    from groupae_cli.align import align_graph

    (s,), _, _ = conformers("CC(C)(C)c1cc(C(C)(C)C)cc(C(C)(C)C)c1", count=1)
    sigma = rng.permutation(len(s))
    rotation = random_rotations(1).numpy()[0]
    moved = bonded_copy(s, rotation, -4.0, sigma)
    result = align_graph(s, moved)
    assert result.details["isomorphisms"] > 10**10 and result.details["proven_optimal"]
    assert result.rmsd < 1e-6
    np.testing.assert_allclose(result.rotation, rotation, atol=1e-6)


def test_graph_mode_refuses_different_molecules():
    from groupae_cli.align import align_graph

    (a, _), (b, _) = conformer_pairs(2)
    with pytest.raises(ValueError, match="different molecules|different compositions"):
        align_graph(a, b)


# --- the command --------------------------------------------------------------------------------


def test_align_command_json_output_and_aligned_file(tmp_path, checkpoint):
    from typer.testing import CliRunner

    from groupae_cli.app import app

    runner = CliRunner()
    a, b = SAMPLE / "align" / "a.sdf", SAMPLE / "align" / "b.sdf"
    result = runner.invoke(app, ["align", str(a), str(b), "--json", "-o", str(tmp_path / "moved.sdf")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # JSON Lines: one object on one line for one pair
    assert {"rmsd", "rotation", "translation", "mapping"} <= set(data) and data["match"] == "graph"
    moved = one(tmp_path / "moved.sdf")
    target = one(b)
    mapping = np.asarray(data["mapping"])
    rmsd = np.sqrt(((moved.positions - target.positions[mapping]) ** 2).sum(-1).mean())
    assert rmsd == pytest.approx(data["rmsd"], abs=1e-3)
    elements = runner.invoke(app, ["align", str(SAMPLE / "align" / "a.xyz"), str(SAMPLE / "align" / "b.xyz"), "--json"])
    assert json.loads(elements.stdout)["match"] == "elements" and json.loads(elements.stdout)["rmsd"] <= data["rmsd"]
    learned = json.loads(runner.invoke(app, ["align", str(a), str(b), "--model", str(checkpoint), "--json"]).stdout)
    assert learned["learned_rmsd"] is not None and learned["model"] == str(checkpoint)
    assert data["learned_rmsd"] is None and data["model"] is None  # no model unless asked for
    many = runner.invoke(app, ["align", str(a), str(SAMPLE / "molecules.sdf"), "--json", "--quiet"])
    rows = [json.loads(line) for line in many.stdout.splitlines()]
    assert [r["b_name"] for r in rows] == [f"NCI_4331_conf{k}" for k in range(3)]  # the same molecule only
    assert rows[0]["rmsd"] < 1e-3  # a against itself
    bad = runner.invoke(app, ["align", str(a), str(b), "--no-refine", "--no-model"])
    assert bad.exit_code == 2 and "no learned guess" in bad.stderr
    plain = json.loads(runner.invoke(app, ["align", str(a), str(b), "--prove", "--json"]).stdout)
    assert plain["model"] is None and plain["proven_optimal"] and plain["rmsd"] == pytest.approx(data["rmsd"])


def test_the_hungarian_solver_loaded_alone_is_scipys(rng):
    from scipy.optimize import linear_sum_assignment

    from groupae_cli.align import _hungarian

    _hungarian.cache_clear()
    assert _hungarian().__module__ == "scipy.optimize._lsap"
    for shape in ((5, 5), (7, 4), (30, 30)):
        cost = rng.random(shape)
        for ours, theirs in zip(_hungarian()(cost), linear_sum_assignment(cost)):
            np.testing.assert_array_equal(ours, theirs)


def test_spread_rotations_are_scipys_icosahedral_group():
    from scipy.spatial.transform import Rotation

    from groupae_cli.align import icosahedral_rotations

    np.testing.assert_allclose(icosahedral_rotations(), Rotation.create_group("I").as_matrix(), atol=1e-12)


@pytest.mark.parametrize("smiles,shape", [
    ("c1ccccc1", "symmetric top"),          # benzene
    ("C", "spherical top"),                 # methane
    ("FC(F)(F)c1ccccc1", "asymmetric"),     # a CF3 group on an asymmetric frame
    ("CC(C)(C)C", "spherical top"),         # neopentane: four tert-butyl-like methyls
    ("O=C=O", "linear"),
    ("C#C", "linear"),
])
def test_symmetric_and_degenerate_inputs_are_recovered_and_reported(smiles, shape, rng):
    """Moved, renumbered copies of symmetric molecules come back exactly in both modes, through
    the extra starts, with the degeneracy of their principal axes reported."""
    from groupae_cli.align import align_structures

    (s,), _, _ = conformers(smiles, count=1)
    sigma = rng.permutation(len(s))
    rotation = random_rotations(1).numpy()[0]
    moved = bonded_copy(s, rotation, 3.0, sigma)
    for match in ("elements", "graph"):
        result = align_structures(s, moved, match)
        assert result.rmsd < 1e-5, (smiles, match, result.rmsd)
        assert np.isclose(np.linalg.det(result.rotation), 1.0)
        assert result.details["principal_axes_a"] == result.details["principal_axes_b"] == shape
        np.testing.assert_allclose(s.positions @ result.rotation.T + result.translation,
                                   moved.positions[result.mapping], atol=1e-4)


def test_starts_refined_together_give_each_start_its_own_refinement():
    """Element mode refines all starts at once, merging starts whose paths meet and assigning small
    or uncontested classes without the Hungarian: every start must end where `refine` alone ends."""
    import sys

    module = sys.modules["groupae_cli.align"]
    structures, _ = split(read_structures(SAMPLE / "molecules.sdf"))
    a, b = [s for s in structures if s.name.startswith("NCI_355_conf")][:2]
    poses = module.start_poses(a.positions, b.positions, extra=16, seed=3)
    _, rmsds, stopped = module._refine_starts(a.positions, a.numbers, b.positions, b.numbers, *zip(*poses), np.inf,
                                              None)
    alone = [module.refine(a.positions, b.positions, a.numbers, b.numbers, r, t).rmsd for r, t in poses]
    assert not stopped
    np.testing.assert_allclose(rmsds, alone, atol=1e-9)


def test_starts_refined_together_match_refine_with_any_translation_and_a_large_element(rng):
    """The batched refinement works in centred coordinates with atoms sorted by element: a starting
    pose that does not lay centroid on centroid (a learned guess can be anywhere), elements given in
    any order, and a large element (62 H), each still end where `refine` alone ends."""
    import sys

    module = sys.modules["groupae_cli.align"]
    (a, b), _, _ = conformers("CCCCCCCCCCCCCCCCCCCCCCCCCCCCCC", count=2)  # C30H62
    order = rng.permutation(len(a))  # elements interleaved, not in blocks
    pa, za, pb, zb = a.positions[order], a.numbers[order], b.positions, b.numbers
    poses = module.start_poses(pa, pb)[::6]
    poses += [(r, t + rng.normal(scale=2.0, size=3)) for r, t in poses[:4]]
    result, rmsds, stopped = module._refine_starts(pa, za, pb, zb, *zip(*poses), np.inf, None)
    alone = [module.refine(pa, pb, za, zb, r, t).rmsd for r, t in poses]
    assert not stopped
    np.testing.assert_allclose(rmsds, alone, atol=1e-9)
    assert result.rmsd == pytest.approx(min(alone), abs=1e-9)
    np.testing.assert_array_equal(zb[result.mapping], za)
    assert np.isclose(np.linalg.det(result.rotation), 1.0)


def test_every_start_is_a_proper_rotation_and_the_spread_set_repeats_the_tetrahedral_axis_maps():
    """numpy's eigh returns principal frames of either hand; the starts between them are made
    proper all the same (a mirror-image start wasted a refinement), so the 12 tetrahedral
    rotations of the spread set coincide with 12 of the 24 axis maps, whatever the hands."""
    from groupae_cli.align import principal_axes, start_rotations

    hands = set()
    for seed in range(8):
        points = np.random.default_rng(seed).normal(size=(2, 12, 3)) * [3.0, 2.0, 1.0]
        hands.add((np.sign(np.linalg.det(principal_axes(points[0])[0])),
                   np.sign(np.linalg.det(principal_axes(points[1])[0]))))
        starts = start_rotations(points[0], points[1], orders=True, spread=True)
        assert len(starts) == 84
        np.testing.assert_allclose(np.linalg.det(starts), 1.0, atol=1e-9)
        same = np.abs(starts[:24, None] - starts[None, 24:]).max(axis=(2, 3)) < 1e-9
        assert same.sum() == 12 and same.any(1).sum() == 12
    assert len(hands) > 1  # both hands were met
