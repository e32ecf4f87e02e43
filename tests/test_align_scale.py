"""Issue 11, scale and honest optimality of element mode: large structures through pruned starts
and sparse assignment, a time limit, and a lower bound that proves an answer optimal or says it
is not proven."""

import json

import numpy as np
import pytest
from conftest import SAMPLE, split
from typer.testing import CliRunner

from groupae_cli.align import LARGE, _Partners, align, assign, kabsch, radial_bound
from groupae_cli.app import app
from groupae_cli.io import read_structures


@pytest.fixture(scope="module")
def blob():
    """About 1,200 atoms: sample drug-like molecules (with H, chiral ones among them) packed on a
    9 Å grid, as residues crowd in a protein."""
    structures, _ = split(read_structures(SAMPLE / "molecules.sdf"))
    numbers, positions, total, k = [], [], 0, 0
    while total < 1200:
        s = structures[k]
        centre = np.array([k % 4, (k // 4) % 4, k // 16]) * 9.0
        numbers.append(s.numbers)
        positions.append(s.positions - s.positions.mean(0) + centre)
        total, k = total + len(s), k + 1
    return np.concatenate(numbers), np.concatenate(positions)


def moved_copy(numbers, positions, rng, noise=0.2):
    """B: A with noise, turned, shifted and renumbered; and the known mapping (A atom i is B atom known[i])."""
    from scipy.spatial.transform import Rotation

    sigma = rng.permutation(len(numbers))
    noisy = positions + rng.normal(scale=noise, size=positions.shape)
    b = (noisy @ Rotation.random(1, rng).as_matrix()[0].T + rng.normal(scale=5.0, size=3))[sigma]
    return b, numbers[sigma], np.argsort(sigma)


def rmsd_of(a, b, mapping):
    rotation, translation = kabsch(a, b[mapping])
    return float(np.sqrt(((a @ rotation.T + translation - b[mapping]) ** 2).sum(-1).mean()))


def test_large_structure_reaches_the_known_correspondence_refining_few_starts(blob, rng):
    numbers, a = blob
    assert len(numbers) >= LARGE
    b, numbers_b, known = moved_copy(numbers, a, rng)
    result = align(a, numbers, b, numbers_b)
    assert result.rmsd <= rmsd_of(a, b, known) + 1e-6
    assert sorted(result.mapping.tolist()) == list(range(len(a)))
    np.testing.assert_array_equal(numbers_b[result.mapping], numbers)
    assert result.details["refined_starts"] <= 3 < result.starts  # the others pruned by their bounds
    assert np.isclose(np.linalg.det(result.rotation), 1.0)


def test_a_large_chiral_structure_is_not_laid_onto_its_mirror_image(blob):
    numbers, a = blob
    result = align(a, numbers, a * np.array([1.0, 1.0, -1.0]), numbers)
    assert np.isclose(np.linalg.det(result.rotation), 1.0) and result.rmsd > 0.1


def test_sparse_assignment_is_the_dense_hungarian_optimum(blob, rng):
    numbers, a = blob
    b, numbers_b, known = moved_copy(numbers, a, rng, noise=0.5)
    rotation, translation = kabsch(a, b[known])
    moved = a @ rotation.T + translation + rng.normal(scale=0.3, size=a.shape)  # a pose near, not at, the fit
    dense = assign(moved, b, numbers, numbers_b)
    sparse = _Partners(b, numbers_b, numbers).assign(moved)
    cost = [float(((moved - b[m]) ** 2).sum()) for m in (dense, sparse)]
    assert cost[1] == pytest.approx(cost[0], rel=1e-12)
    assert sorted(sparse.tolist()) == list(range(len(a)))


def copies_of_one_molecule(index=3, atoms=1500, decimals=1):
    """Identical copies of one sample molecule on a 9 Å grid, coordinates rounded to `decimals`:
    exact ties between the copies, and near-ties from the rounding."""
    structures, _ = split(read_structures(SAMPLE / "molecules.sdf"))
    s = structures[index]
    count = -(-atoms // len(s))
    centres = np.array([(k % 6, (k // 6) % 6, k // 36) for k in range(count)]) * 9.0
    positions = (s.positions - s.positions.mean(0))[None] + centres[:, None]
    return np.tile(s.numbers, count), np.round(positions.reshape(-1, 3), decimals)


def test_rounded_coordinates_and_identical_copies_neither_stall_nor_change_the_answer(rng):
    """Ties and near-ties made scipy's LAPJVsp trade columns in tiny price steps for minutes (its
    augmenting row reduction): the mirror image below ran for more than 5 minutes with the 1e-9
    jitter the costs had (a jitter turns exact ties into near-ties of its own), and more than 3
    without it. The sparse assignment skips that phase (a rectangular problem): on rounded
    coordinates it finishes in seconds with the optimum over its candidate pairs (the dense
    Hungarian's, non-candidates forbidden), and a rounded moved copy reaches the known
    correspondence."""
    import time

    from scipy.optimize import linear_sum_assignment

    numbers, a = copies_of_one_molecule()
    mirror = a * np.array([1.0, 1.0, -1.0])
    assert len(a) >= LARGE
    start = time.perf_counter()
    mirrored = align(a, numbers, mirror, numbers)
    assert time.perf_counter() - start < 60  # seconds at most on a busy machine, not minutes
    assert np.isclose(np.linalg.det(mirrored.rotation), 1.0) and mirrored.rmsd > 0.1
    moved = a @ mirrored.rotation.T + mirrored.translation
    partners = _Partners(mirror, numbers, numbers)
    sparse = partners.assign(moved, mirrored.mapping)
    for ia, ib, rows, cols, cost in partners.candidates(moved, mirrored.mapping):
        if rows is not None:
            dense = np.full((len(ia), len(ib)), np.inf)
            dense[rows, cols] = cost
            r, c = linear_sum_assignment(dense)
            assert ((moved[ia] - mirror[sparse[ia]]) ** 2).sum() == pytest.approx(dense[r, c].sum(), rel=1e-12)
    b, numbers_b, known = moved_copy(numbers, a, rng, noise=0.0)
    b = np.round(b, 1)
    copy = align(a, numbers, b, numbers_b)
    assert copy.rmsd <= rmsd_of(a, b, known) + 1e-6


def test_time_limit_returns_the_best_so_far_not_proven(blob, rng):
    numbers, a = blob
    b, numbers_b, _ = moved_copy(numbers, a, rng)
    calls = []
    result = align(a, numbers, b, numbers_b, time_limit=1e-6, progress=lambda done, total: calls.append((done, total)))
    assert result.details["time_limit_reached"] and not result.details["proven_optimal"]
    assert np.isfinite(result.rmsd) and sorted(result.mapping.tolist()) == list(range(len(a)))
    assert calls and calls[-1][0] <= calls[-1][1]
    small, _ = split(read_structures(SAMPLE / "align" / "a.xyz"))
    other, _ = split(read_structures(SAMPLE / "align" / "b.xyz"))
    quick = align(small[0].positions, small[0].numbers, other[0].positions, other[0].numbers, time_limit=1e-6)
    full = align(small[0].positions, small[0].numbers, other[0].positions, other[0].numbers)
    assert quick.details["time_limit_reached"] and not full.details["time_limit_reached"]
    assert quick.rmsd >= full.rmsd - 1e-9


def test_time_limit_option_is_checked_and_reported():
    runner = CliRunner()
    bad = runner.invoke(app, ["align", str(SAMPLE / "align" / "a.xyz"), str(SAMPLE / "align" / "b.xyz"), "--time-limit", "0"])
    assert bad.exit_code == 2 and "--time-limit" in bad.stderr
    args = ["align", str(SAMPLE / "align" / "a.xyz"), str(SAMPLE / "align" / "b.xyz"), "--time-limit", "1e-6"]
    row = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert row["time_limit_reached"] is True and row["proven_optimal"] is False
    assert "time limit reached" in runner.invoke(app, args).stdout


def test_lower_bound_holds_and_proves_exact_answers(rng):
    structures, _ = split(read_structures(SAMPLE / "molecules.sdf"))
    for s in structures[:60:6]:
        sigma = rng.permutation(len(s))
        exact = align(s.positions, s.numbers, (s.positions @ kabsch(s.positions, s.positions)[0].T)[sigma] + 3.0,
                      s.numbers[sigma])
        assert exact.details["proven_optimal"] and exact.rmsd < 1e-6
    pairs = [s for s in structures if "_conf" in s.name][:18]
    for x, y in zip(pairs[::3], pairs[1::3]):  # conformers 0 and 1 of one molecule
        result = align(x.positions, x.numbers, y.positions, y.numbers)
        bound = radial_bound(x.positions, x.numbers, y.positions, y.numbers)
        assert bound == result.details["rmsd_lower_bound"] <= result.rmsd
        assert result.details["proven_optimal"] is (result.rmsd <= bound + 1e-9)


def conformers_of(name):
    structures, _ = split(read_structures(SAMPLE / "molecules.sdf"))
    return [s for s in structures if s.name.startswith(f"{name}_conf")]


@pytest.mark.parametrize("name", ["NCI_2414", "NCI_1473"])  # 2 CH3 + 9 CH2, 4 CH3 + 4 CH2: 18,432 / 20,736 per skeleton
def test_graph_mode_proves_its_answer_by_bounds_where_groups_are_too_many_to_try(name):
    from groupae_cli.align import _GraphSearch, align_graph, symmetry_classes

    first, second, _ = conformers_of(name)
    result = align_graph(first, second)  # 5,000 permutations tried at most per skeleton
    exhaustive = align_graph(first, second, limit=1_000_000)  # every permutation tried
    assert exhaustive.details["proven_optimal"]
    assert result.details["proven_optimal"] and result.rmsd == pytest.approx(exhaustive.rmsd, abs=1e-9)
    # the bound search finds the optimum itself when told of a worse answer, and proves the optimum
    search = _GraphSearch(first, second, symmetry_classes(first), symmetry_classes(second), 5_000)
    optimum = exhaustive.rmsd ** 2 * len(first)
    found = [search.bound_search(row, optimum + 1.0) for row in search.skeleton]
    assert all(complete for complete, _ in found)
    assert min(better[0] for _, better in found if better is not None) == pytest.approx(optimum, rel=1e-9)
    assert all(search.bound_search(row, optimum - 1e-6) == (True, None) for row in search.skeleton)
