"""Classical invariant descriptors, QM9 targets and the two "usefulness" scores of a benchmark.

Imported by bench scripts as ``from descriptors import ...`` (bench/ is on sys.path when a
script runs as ``python bench/<script>.py``). numpy and scipy only; dscribe (for SOAP) is
imported where it is used, and qm9pack's CSVs are read directly (the package is never
imported: its ``__init__`` fails). ``pip install -e .[bench]`` brings both.

- `coulomb_eigenspectrum`: sorted eigenvalues of the Coulomb matrix (Rupp et al. 2012);
- `averaged_soap`: dscribe's SOAP averaged over the atoms of a structure;
- `qm9_properties`: HOMO-LUMO gap, dipole, U0 and polarizability of QM9 molecules by index;
- `ridge_probe` / `mean_baseline`: held-out MAE of a cross-validated ridge regression on
  standardised features, and of predicting the training mean, on one fixed split;
- `conformer_retrieval`: top-1 share of nearest neighbours from the same molecule.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Hartree in eV (CODATA 2018), the unit change for QM9's energies.
HARTREE_EV = 27.211386
#: The QM9 CSVs of the qm9pack package, in index order.
QM9_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
#: property name -> (CSV column, factor to the reported unit).
QM9_COLUMNS = {
    "gap": ("HOMO_LUMO_gap_au", HARTREE_EV),  # eV
    "dipole": ("Dipole_debye", 1.0),  # Debye
    "u0": ("InternalEnergy_0K_au", HARTREE_EV),  # eV
    "polarizability": ("Polarizability_bohr3", 1.0),  # bohr^3
}
#: Ridge strengths tried, as multiples of the mean eigenvalue of the standardised X^T X
#: (which is the number of fitted rows: the strength is per sample, whatever the width).
RIDGE_GRID = np.logspace(-6, 3, 10)
CV_FOLDS = 5
#: Query rows per block of a distance matrix.
BLOCK = 2048
#: Coulomb-matrix entries per batch of equal-size molecules (bounds the temporaries).
CM_ENTRIES = 1 << 21


# --------------------------------------------------------------------------- descriptors
def coulomb_eigenspectrum(
    numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray], size: int
) -> np.ndarray:
    """(N, size) Coulomb-matrix eigenvalues per molecule, by decreasing |value|, zero-padded.

    M_ii = 0.5 Z_i^2.4, M_ij = Z_i Z_j / |r_i - r_j| (Å). Molecules of equal atom count are
    diagonalised together in batches.
    """
    if len(numbers) != len(positions):
        raise ValueError(f"{len(numbers)} numbers arrays but {len(positions)} positions arrays")
    out = np.zeros((len(numbers), size))
    by_size: dict[int, list[int]] = {}
    for i, z in enumerate(numbers):
        by_size.setdefault(len(z), []).append(i)
    for n, members in by_size.items():
        if n == 0:
            continue
        keep = min(n, size)
        eye = np.eye(n, dtype=bool)
        step = max(1, CM_ENTRIES // (n * n))
        for start in range(0, len(members), step):
            rows = members[start : start + step]
            z = np.stack([np.asarray(numbers[i], dtype=np.float64) for i in rows])  # (b, n)
            r = np.stack([np.asarray(positions[i], dtype=np.float64) for i in rows])  # (b, n, 3)
            r = r.reshape(len(rows), n, 3)
            dist = sum((r[:, :, None, a] - r[:, None, :, a]) ** 2 for a in range(3)) ** 0.5
            dist[:, eye] = 1.0
            m = z[:, :, None] * z[:, None, :] / dist
            m[:, eye] = 0.5 * z**2.4
            eig = np.linalg.eigvalsh(m)  # (b, n), ascending
            order = np.argsort(-np.abs(eig), axis=1, kind="stable")
            out[rows, :keep] = np.take_along_axis(eig, order, axis=1)[:, :keep]
    return out


def averaged_soap(
    numbers: Sequence[np.ndarray],
    positions: Sequence[np.ndarray],
    species: list[int],
    r_cut: float = 5.0,
    n_max: int = 6,
    l_max: int = 4,
    sigma: float = 0.5,
) -> np.ndarray:
    """(N, D) SOAP power spectra averaged over each structure's atoms (dscribe, average="inner").

    Non-periodic, GTO radial basis; `species` must cover every element present.
    """
    from ase import Atoms
    from dscribe.descriptors import SOAP

    soap = SOAP(
        species=sorted({int(s) for s in species}),
        r_cut=r_cut,
        n_max=n_max,
        l_max=l_max,
        sigma=sigma,
        average="inner",
        periodic=False,
    )
    atoms = [
        Atoms(numbers=np.asarray(z, dtype=int), positions=np.asarray(p, dtype=float))
        for z, p in zip(numbers, positions, strict=True)
    ]
    if not atoms:
        return np.zeros((0, soap.get_number_of_features()))
    return np.asarray(soap.create(atoms, n_jobs=1), dtype=np.float64).reshape(len(atoms), -1)


def element_counts(numbers: Sequence[np.ndarray], species: Sequence[int]) -> np.ndarray:
    """(N, K) count of each of `species` per molecule (other elements are not counted)."""
    species = np.asarray(species)
    out = np.zeros((len(numbers), len(species)))
    for i, z in enumerate(numbers):
        out[i] = (np.asarray(z)[:, None] == species[None]).sum(0)
    return out


# --------------------------------------------------------------------------- QM9 targets
def qm9_data_dir() -> Path:
    """The folder of qm9pack's CSVs, found without importing the package."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("qm9pack is not installed: pip install qm9pack (or .[bench])")
    return Path(spec.submodule_search_locations[0]) / "data"


def _first_index(path: Path) -> int:
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        column = next(reader).index("Index")
        return int(next(reader)[column])


def qm9_properties(indices: Sequence[int]) -> dict[str, np.ndarray]:
    """QM9 targets of the molecules `indices` (the CSV's Index, `qm9_<index>` in titles), in order.

    Keys: gap (eV), dipole (Debye), u0 (eV), polarizability (bohr^3). Only the CSV parts whose
    index range can hold a wanted index are read, each only until its wanted rows are found.
    Raises KeyError naming the indices that QM9 does not have.
    """
    wanted = [int(i) for i in indices]
    data = qm9_data_dir()
    csv.field_size_limit(1 << 30)
    paths = [data / part for part in QM9_PARTS]
    starts = [_first_index(p) for p in paths] + [None]
    found: dict[int, tuple[float, ...]] = {}
    for path, lo, hi in zip(paths, starts, starts[1:]):
        todo = {i for i in wanted if i >= lo and (hi is None or i < hi)}
        if not todo:
            continue
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            at = header.index("Index")
            cols = [header.index(column) for column, _ in QM9_COLUMNS.values()]
            for row in reader:
                index = int(row[at])
                if index in todo:
                    found[index] = tuple(float(row[c]) for c in cols)
                    todo.discard(index)
                    if not todo:
                        break
    missing = [i for i in wanted if i not in found]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise KeyError(f"{len(missing)} QM9 indices not in qm9pack's CSVs ({data}): {shown}")
    table = np.array([found[i] for i in wanted], dtype=np.float64).reshape(len(wanted), -1)
    return {
        name: table[:, k] * factor for k, (name, (_, factor)) in enumerate(QM9_COLUMNS.items())
    }


# --------------------------------------------------------------------------- scores
def split(n: int, seed: int = 0, test_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices of the fixed random split that every score here uses."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(test_fraction * n)
    if n_test < 1 or n - n_test < CV_FOLDS:
        raise ValueError(f"{n} rows are too few for a {test_fraction:g} test split")
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _standardise(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x scaled by the mean and std of `rows`; constant columns become 0."""
    mean = x[rows].mean(0)
    std = x[rows].std(0)
    scale = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, np.inf)
    return (x - mean) / scale


def _prepared_targets(
    targets: dict[str, np.ndarray], counts: np.ndarray, train: np.ndarray
) -> dict[str, np.ndarray]:
    """The targets as scored: u0 replaced by its residual after a per-element linear fit."""
    out = {}
    for name, y in targets.items():
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if name == "u0":
            c = np.asarray(counts, dtype=np.float64)
            if c.ndim != 2 or len(c) != len(y):
                raise ValueError(f"counts must be (N, K) with N = {len(y)}, got {c.shape}")
            coef = np.linalg.lstsq(c[train], y[train], rcond=None)[0]
            y = y - c @ coef
        out[name] = y
    return out


def _ridge_paths(
    x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray, strengths: np.ndarray
) -> np.ndarray:
    """(len(strengths), n_eval, P) ridge predictions with an intercept, for every strength."""
    xm, ym = x_fit.mean(0), y_fit.mean(0)
    xf, yf, xe = x_fit - xm, y_fit - ym, x_eval - xm
    n, d = xf.shape
    if d <= n:  # primal: eigenvectors of X^T X
        s, v = np.linalg.eigh(xf.T @ xf)
        left, right = xe @ v, v.T @ (xf.T @ yf)  # (e, d), (d, P)
    else:  # dual: eigenvectors of X X^T
        s, u = np.linalg.eigh(xf @ xf.T)
        left, right = xe @ (xf.T @ u), u.T @ yf  # (e, n), (n, P)
    s = np.clip(s, 0.0, None)
    lam = strengths * max(float(s.sum()) / d, 1e-12) if d else strengths
    return np.stack([left @ (right / (s + a)[:, None]) for a in lam]) + ym


def ridge_probe(
    features: np.ndarray,
    targets: dict[str, np.ndarray],
    counts: np.ndarray,
    seed: int = 0,
    test_fraction: float = 0.25,
) -> dict[str, float]:
    """{property: test MAE} of a ridge regression from standardised `features`, per property.

    Split by `split(N, seed, test_fraction)`; columns standardised by the training rows
    (constant ones dropped to 0); an intercept; the strength from RIDGE_GRID (times the mean
    eigenvalue of X^T X) by 5-fold cross-validated MAE on the training rows, then refitted on
    all of them. "u0" is first replaced by its residual after a least-squares fit on the
    element `counts` (N, K) over the training rows, so its MAE is that of the residual.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(len(x), -1)
    train, test = split(len(x), seed, test_fraction)
    x = _standardise(x, train)
    names = list(targets)
    prepared = _prepared_targets(targets, counts, train)
    y = np.stack([prepared[k] for k in names], axis=1)  # (N, P)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} feature rows but {len(y)} targets")
    folds = np.array_split(np.random.default_rng(seed + 1).permutation(train), CV_FOLDS)
    cv_error = np.zeros((len(RIDGE_GRID), len(names)))
    for k, held in enumerate(folds):
        fit = np.concatenate([f for j, f in enumerate(folds) if j != k])
        pred = _ridge_paths(x[fit], y[fit], x[held], RIDGE_GRID)
        cv_error += np.abs(pred - y[held]).sum(axis=1)
    best = cv_error.argmin(axis=0)  # per property
    pred = _ridge_paths(x[train], y[train], x[test], RIDGE_GRID)
    return {
        name: float(np.abs(pred[best[p], :, p] - y[test, p]).mean())
        for p, name in enumerate(names)
    }


def mean_baseline(
    targets: dict[str, np.ndarray],
    counts: np.ndarray,
    seed: int = 0,
    test_fraction: float = 0.25,
) -> dict[str, float]:
    """{property: test MAE} of predicting the training mean, on `ridge_probe`'s split and targets."""
    n = len(next(iter(targets.values())))
    train, test = split(n, seed, test_fraction)
    prepared = _prepared_targets(targets, counts, train)
    return {k: float(np.abs(y[test] - y[train].mean()).mean()) for k, y in prepared.items()}


def conformer_retrieval(features: np.ndarray, groups: np.ndarray) -> tuple[float, int]:
    """(top-1 share, queries): is each structure's nearest other structure from its own group?

    Every structure whose group has >= 2 members is a query; all structures are candidates.
    Euclidean distance after standardising the columns over the given set (constant ones
    dropped). (nan, 0) when no group has two members.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(len(x), -1)
    groups = np.asarray(groups)
    if len(groups) != len(x):
        raise ValueError(f"{len(x)} feature rows but {len(groups)} group labels")
    _, label, size = np.unique(groups, return_inverse=True, return_counts=True)
    queries = np.flatnonzero(size[label] >= 2)
    if not len(queries):
        return float("nan"), 0
    x = _standardise(x, np.arange(len(x)))
    sq = (x * x).sum(1)
    hits = 0
    for start in range(0, len(queries), BLOCK):
        q = queries[start : start + BLOCK]
        d2 = sq[q, None] + sq[None, :] - 2.0 * (x[q] @ x.T)
        d2[np.arange(len(q)), q] = np.inf
        hits += int((label[d2.argmin(axis=1)] == label[q]).sum())
    return hits / len(queries), len(queries)
