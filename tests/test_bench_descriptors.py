"""bench/descriptors.py: the classical descriptors and scores of the model-quality benchmark."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from groupae_cli.io import read_structures

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import descriptors

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
SPECIES = [1, 6, 7, 8, 9, 15, 16, 17, 35, 53]


@pytest.fixture(scope="module")
def molecules():
    """The 310 records of sample_data/molecules.sdf: 250 molecules, then 20 x 3 conformers."""
    structures = list(read_structures(SAMPLE / "molecules.sdf"))
    assert len(structures) == 310
    return structures


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_coulomb_eigenspectrum_invariant_and_distinct(molecules, rng):
    mol, other = molecules[0], molecules[1]
    perm = rng.permutation(len(mol))
    moved = (mol.positions @ random_rotation(rng).T + rng.normal(size=3) * 10)[perm]
    size = 80  # more than any record's atom count: padding is checked too
    spectra = descriptors.coulomb_eigenspectrum(
        [mol.numbers, mol.numbers[perm], other.numbers], [mol.positions, moved, other.positions], size
    )
    assert spectra.shape == (3, size)
    np.testing.assert_allclose(spectra[1], spectra[0], rtol=1e-9, atol=1e-9)
    assert np.all(np.diff(np.abs(spectra[0, : len(mol)])) <= 0)  # by decreasing |value|
    assert not spectra[0, len(mol) :].any()
    assert np.abs(spectra[2] - spectra[0]).max() > 1.0
    # the batched path agrees with a plain per-molecule construction (different sizes mixed)
    z, r = other.numbers.astype(float), other.positions
    dist = np.linalg.norm(r[:, None] - r[None], axis=-1)
    np.fill_diagonal(dist, 1.0)
    m = np.outer(z, z) / dist
    np.fill_diagonal(m, 0.5 * z**2.4)
    eig = np.linalg.eigvalsh(m)
    np.testing.assert_allclose(spectra[2, : len(z)], eig[np.argsort(-np.abs(eig))], rtol=1e-12)
    short = descriptors.coulomb_eigenspectrum([mol.numbers], [mol.positions], 5)
    np.testing.assert_array_equal(short[0], spectra[0, :5])


def test_ridge_probe_recovers_linear_and_compositional_targets(molecules, rng):
    numbers = [m.numbers for m in molecules]
    features = descriptors.coulomb_eigenspectrum(numbers, [m.positions for m in molecules], 40)
    counts = descriptors.element_counts(numbers, SPECIES)
    assert counts.sum() == sum(len(z) for z in numbers)
    linear = features @ rng.normal(size=features.shape[1]) + 3.0
    references = rng.normal(size=len(SPECIES)) * 100  # made-up per-element energies
    targets = {
        "linear": linear + rng.normal(size=len(linear)) * 0.01 * linear.std(),
        "u0": counts @ references,
    }
    scores = descriptors.ridge_probe(features, targets, counts, seed=3)
    baseline = descriptors.mean_baseline(targets, counts, seed=3)
    assert set(scores) == set(baseline) == {"linear", "u0"}
    assert scores["linear"] < 0.05 * baseline["linear"]
    assert scores["u0"] < 1e-6 and baseline["u0"] < 1e-6
    # the same split for the same N and seed; another seed gives another split
    train, test = descriptors.split(len(features), seed=3)
    assert len(test) == round(0.25 * len(features)) and not set(train) & set(test)
    np.testing.assert_array_equal(descriptors.split(len(features), seed=3)[1], test)
    assert not np.array_equal(descriptors.split(len(features), seed=4)[1], test)
    # constant columns are harmless
    padded = np.hstack([features, np.ones((len(features), 3))])
    again = descriptors.ridge_probe(padded, targets, counts, seed=3)
    assert again["linear"] == pytest.approx(scores["linear"], rel=1e-3)


def test_conformer_retrieval(molecules, rng):
    groups = np.array([m.name.split("_conf")[0] for m in molecules])  # NCI_<id>[_conf<k>]
    _, label = np.unique(groups, return_inverse=True)
    exact = np.eye(label.max() + 1)[label]  # one-hot: members of a group coincide
    share, queries = descriptors.conformer_retrieval(exact, groups)
    assert (share, queries) == (1.0, 60)  # the 20 three-conformer molecules
    shuffled = exact[rng.permutation(len(exact))]
    chance = 2 / (len(groups) - 1)
    share, queries = descriptors.conformer_retrieval(shuffled, groups)
    assert queries == 60 and share < 0.25
    noise = rng.normal(size=(len(groups), 8))
    shares = [descriptors.conformer_retrieval(noise, rng.permutation(groups))[0] for _ in range(20)]
    assert np.mean(shares) < 5 * chance + 0.02
    # on real conformers the Coulomb spectrum mostly finds a sibling (0.97 when written)
    cm = descriptors.coulomb_eigenspectrum(
        [m.numbers for m in molecules], [m.positions for m in molecules], 80
    )
    assert descriptors.conformer_retrieval(cm, groups)[0] > 0.8
    share, queries = descriptors.conformer_retrieval(noise[:5], np.arange(5))  # no group of 2
    assert np.isnan(share) and queries == 0


@pytest.mark.skipif(importlib.util.find_spec("qm9pack") is None, reason="qm9pack not installed")
def test_qm9_properties_first_rows():
    props = descriptors.qm9_properties([2, 1])
    assert set(props) == {"gap", "dipole", "u0", "polarizability"}
    np.testing.assert_allclose(props["gap"], [0.3399 * 27.211386, 0.5048 * 27.211386])
    np.testing.assert_allclose(props["dipole"], [1.6256, 0.0])
    np.testing.assert_allclose(props["u0"], [-56.525887 * 27.211386, -40.47893 * 27.211386])
    np.testing.assert_allclose(props["polarizability"], [9.46, 13.21])
    with pytest.raises(KeyError, match="0"):
        descriptors.qm9_properties([1, 0])


@pytest.mark.slow  # importing dscribe (which imports scikit-learn) alone takes 2-3 s
def test_averaged_soap_invariant(molecules, rng):
    pytest.importorskip("dscribe")
    mol = molecules[0]
    species = sorted(set(mol.numbers.tolist()))
    perm = rng.permutation(len(mol))
    moved = (mol.positions @ random_rotation(rng).T + 5.0)[perm]
    soap = descriptors.averaged_soap(
        [mol.numbers, mol.numbers[perm]], [mol.positions, moved], species, n_max=3, l_max=2
    )
    assert soap.shape[0] == 2
    np.testing.assert_allclose(soap[1], soap[0], rtol=1e-6, atol=1e-8)
