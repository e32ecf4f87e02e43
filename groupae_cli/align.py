"""Alignment without atom order (DESIGN §3): the minimum RMSD over proper rotations, translations
and one-to-one mappings that keep elements (`--match elements`) or are bond-graph isomorphisms
(`--match graph`).

Element mode: refinement alternates an assignment step (scipy's Hungarian `linear_sum_assignment`
on squared distances, within each element) and a proper-rotation Kabsch step until the mapping
stops changing. Starting poses: a given guess (the learned one, when a model is used), the proper
rotations that carry A's principal axes onto B's (every sign choice and order: 24), and 60 evenly
spread rotations between the two principal frames. The best result over all starts wins.

Graph mode: skeleton isomorphisms times permutations of interchangeable terminal atoms, searched
best bound first (see `align_graph`); exact where it says `proven_optimal`.

Rotations are always proper: a mirror image is never produced.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# scipy's Hungarian assignment (`_hungarian`) and scipy.spatial (random rotations) are loaded where
# they are used: graph mode on ordinary molecules needs neither, and `groupae align` starts fast.


@dataclass
class AlignResult:
    """A mapped onto B: B[mapping[i]] ~ A[i] @ rotation.T + translation.

    rmsd (Å) over all atoms; rotation (3, 3), proper (det +1: never a mirror image); translation
    (3,); mapping (n,): atom i of A is atom mapping[i] of B; mode "elements" or "graph"; starts:
    the starting poses searched; details: in graph mode `proven_optimal`, the principal-axes shape
    of each input, and with a model `learned_rmsd` / `learned_was_optimal`.
    """

    rmsd: float
    rotation: np.ndarray  # (3, 3), det +1
    translation: np.ndarray  # (3,)
    mapping: np.ndarray  # (n,): atom i of A corresponds to atom mapping[i] of B
    mode: str = "elements"
    starts: int = 0
    converged: bool = True
    details: dict = field(default_factory=dict)

    def transform(self, positions: np.ndarray) -> np.ndarray:
        """Points in A's frame moved onto B: positions @ rotation.T + translation."""
        return np.asarray(positions, dtype=np.float64) @ self.rotation.T + self.translation

    def as_dict(self) -> dict:
        return {"rmsd": self.rmsd, "rotation": self.rotation.tolist(), "translation": self.translation.tolist(),
                "mapping": self.mapping.tolist(), "mode": self.mode, "starts": self.starts,
                "converged": self.converged, **self.details}


def kabsch_many(p: np.ndarray, qs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Proper Kabsch of points p (n, 3) onto each of qs (m, n, 3), in one batched SVD.

    Returns rotations (m, 3, 3) with det +1, translations (m, 3) and the summed squared residuals
    (m,): qs[k] ~ p @ rotations[k].T + translations[k].
    """
    pc, qc = p.mean(0), qs.mean(1)
    h = np.einsum("ni,mnj->mij", p - pc, qs - qc[:, None, :])
    u, _, vt = np.linalg.svd(h)
    v, ut = np.swapaxes(vt, 1, 2), np.swapaxes(u, 1, 2)
    d = np.sign(np.linalg.det(v @ ut))
    d[d == 0] = 1.0
    rotations = v @ (np.concatenate([np.ones((len(d), 2)), d[:, None]], axis=1)[:, :, None] * ut)
    translations = qc - np.einsum("j,mkj->mk", pc, rotations)
    moved = np.einsum("nj,mkj->mnk", p, rotations) + translations[:, None, :]
    return rotations, translations, ((moved - qs) ** 2).sum(axis=(1, 2))


def best_fit_ssd(h: np.ndarray, norms: float, iterations: int = 60) -> np.ndarray:
    """The smallest summed squared residual over proper rotations, for correlation matrices h
    (m, 3, 3) = sum_i p_i q_i^T of centred point sets with sum |p|^2 + |q|^2 = `norms`.

    Horn's quaternion form: the residual is norms - 2 lambda, lambda the largest eigenvalue of a
    symmetric 4x4 matrix built from h; lambda is found by Newton's method on its characteristic
    polynomial (Theobald's QCP), vectorised over the batch: no per-matrix decomposition.
    """
    sxx, sxy, sxz = h[:, 0, 0], h[:, 0, 1], h[:, 0, 2]
    syx, syy, syz = h[:, 1, 0], h[:, 1, 1], h[:, 1, 2]
    szx, szy, szz = h[:, 2, 0], h[:, 2, 1], h[:, 2, 2]
    k = np.stack([
        np.stack([sxx + syy + szz, syz - szy, szx - sxz, sxy - syx], -1),
        np.stack([syz - szy, sxx - syy - szz, sxy + syx, szx + sxz], -1),
        np.stack([szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy], -1),
        np.stack([sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz], -1),
    ], -2)
    c2 = -2.0 * (h ** 2).sum(axis=(1, 2))
    c1 = -8.0 * np.linalg.det(h)
    c0 = np.linalg.det(k)
    lam = np.full(len(h), norms / 2.0)  # an upper bound: Newton descends onto the largest root
    for _ in range(iterations):
        value = ((lam * lam + c2) * lam + c1) * lam + c0
        slope = (4.0 * lam * lam + 2.0 * c2) * lam + c1
        step = np.divide(value, slope, out=np.zeros_like(value), where=slope != 0)
        lam = lam - step
        if np.all(np.abs(step) <= 1e-11 * np.maximum(1.0, np.abs(lam))):
            break
    return np.maximum(norms - 2.0 * lam, 0.0)


def kabsch(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The proper rotation R and translation t minimising |p R^T + t - q| (rows are points)."""
    rotations, translations, _ = kabsch_many(p, q[None])
    return rotations[0], translations[0]


def fit_rmsd(a: np.ndarray, b_mapped: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> float:
    """RMSD between A moved by (rotation, translation) and B's atoms in A's order."""
    return float(np.sqrt(((a @ rotation.T + translation - b_mapped) ** 2).sum(-1).mean()))


@functools.cache
def _hungarian():
    """scipy's `linear_sum_assignment`. `import scipy.optimize` also imports scipy.linalg, sparse,
    special, fft and spatial (0.3 s on a quiet machine, more on a busy one: most of element mode's
    start-up) for this one compiled function, so its extension module `scipy.optimize._lsap` is
    loaded on its own; on any surprise (another scipy layout), the ordinary import."""
    import importlib.machinery
    import importlib.util
    import sys

    if "scipy.optimize" not in sys.modules:
        try:
            folder = Path(importlib.util.find_spec("scipy").origin).parent / "optimize"
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                if (path := folder / f"_lsap{suffix}").is_file():
                    spec = importlib.util.spec_from_file_location("scipy.optimize._lsap", path)
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
                    return module.linear_sum_assignment
        except Exception:  # noqa: BLE001, S110 - any failure: the ordinary import below
            pass
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment


def assign(moved: np.ndarray, target: np.ndarray, classes_a: np.ndarray, classes_b: np.ndarray) -> np.ndarray:
    """The mapping minimising the summed squared distances, one Hungarian problem per class."""
    linear_sum_assignment = _hungarian()
    mapping = np.empty(len(moved), dtype=np.int64)
    for c in np.unique(classes_a):
        ia, ib = np.flatnonzero(classes_a == c), np.flatnonzero(classes_b == c)
        cost = ((moved[ia, None, :] - target[None, ib, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        mapping[ia[rows]] = ib[cols]
    return mapping


def refine(a: np.ndarray, b: np.ndarray, classes_a: np.ndarray, classes_b: np.ndarray, rotation: np.ndarray,
           translation: np.ndarray, max_iter: int = 50) -> AlignResult:
    """Alternate assignment and Kabsch from a starting pose until the mapping stops changing."""
    mapping = None
    for step in range(max_iter):
        new = assign(a @ rotation.T + translation, b, classes_a, classes_b)
        if mapping is not None and np.array_equal(new, mapping):
            break
        mapping = new
        rotation, translation = kabsch(a, b[mapping])
    return AlignResult(fit_rmsd(a, b[mapping], rotation, translation), rotation, translation, mapping,
                       converged=step < max_iter - 1)


def principal_axes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(axes as columns, largest first; eigenvalues) of the centred point set's covariance."""
    centred = x - x.mean(0)
    values, vectors = np.linalg.eigh(centred.T @ centred / len(x))
    return vectors[:, ::-1], values[::-1]


def _signed_permutations() -> np.ndarray:
    """The 48 signed permutation matrices (the symmetries of a cube's axes), those with det +1 first."""
    from itertools import permutations, product

    mats = [np.diag(signs)[list(order)] for order in permutations(range(3)) for signs in product((1.0, -1.0), repeat=3)]
    return np.array(sorted(mats, key=lambda m: -np.linalg.det(m)))


_AXIS_MAPS = _signed_permutations()


def principal_shape(x: np.ndarray, tol: float = 0.02) -> str:
    """How degenerate a point set's principal axes are: "linear" (one moment only), "spherical top"
    (three equal moments: methane, SF6, neopentane), "symmetric top" (two equal: benzene, CF3-X,
    ammonia) or "asymmetric" (three distinct: a unique principal frame). Moments compare within
    `tol` of the largest. Where axes are degenerate, the principal frame is arbitrary about them and
    the extra starts (every axis order, the evenly spread rotations) carry the search."""
    _, values = principal_axes(np.asarray(x, float))
    top = max(float(values[0]), 1e-12)
    if values[1] < tol * top:
        return "linear"
    equal = [abs(values[0] - values[1]) < tol * top, abs(values[1] - values[2]) < tol * top]
    return "spherical top" if all(equal) else "symmetric top" if any(equal) else "asymmetric"


def _quaternion_matrices(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (m, 3, 3) of unit quaternions (m, 4) in scalar-last order (x, y, z, w)."""
    x, y, z, w = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def icosahedral_rotations() -> np.ndarray:
    """The 60 rotations of the icosahedral group, (60, 3, 3), in the order of scipy's
    `Rotation.create_group("I")` (built here in numpy: importing scipy.spatial costs a quarter
    of a second at start-up). Quaternions (x, y, z, w): the identity and the 8 of the form
    (1/2)(1, +-1, +-1, +-1) — the tetrahedral group — then the even permutations of
    (1/2, 1/(2 phi), phi/2, 0) with every sign, as scipy lists them."""
    value = {"a": 0.5, "b": 0.25 * (np.sqrt(5.0) - 1.0), "c": 0.25 * (1.0 + np.sqrt(5.0)), "0": 0.0}
    table = ("abc0 ab-c0 ac0b ac0-b a-bc0 a-b-c0 a-c0b a-c0-b a0bc a0b-c a0-bc a0-b-c "
             "ba0c ba0-c bca0 bc-a0 b-a0c b-a0-c b-ca0 b-c-a0 b0ca b0c-a b0-ca b0-c-a "
             "cab0 ca-b0 cb0a cb0-a c-ab0 c-a-b0 c-b0a c-b0-a c0ab c0a-b c0-ab c0-a-b "
             "0acb 0ac-b 0a-cb 0a-c-b 0bac 0ba-c 0b-ac 0b-a-c 0cba 0cb-a 0c-ba 0c-b-a")
    rows = []
    for word in table.split():
        row, sign = [], 1.0
        for ch in word:
            if ch == "-":
                sign = -1.0
            else:
                row.append(sign * value[ch])
                sign = 1.0
        rows.append(row)
    tetra = np.array([[0.5, u, v, w] for w in (0.5, -0.5) for u in (-0.5, 0.5) for v in (-0.5, 0.5)])
    return _quaternion_matrices(np.concatenate([np.eye(4), tetra, np.array(rows)]))


#: 60 well-spread rotations (the icosahedral group). Searches start from each of them, taken
#: between the two structures' principal frames, as well as from the 24 matches of the axes. A
#: fixed, even spread does not depend on a random draw: 48 random rotations in their place missed
#: the optimum on 1 to 3 of the 72 pairs of bench/align.py, depending on the draw; these on none.
_SPREAD = icosahedral_rotations()


#: det of each of `_AXIS_MAPS` (+1 for the first 24), and which of them only flip signs (no swap)
_AXIS_DETS = np.round(np.linalg.det(_AXIS_MAPS))
_AXIS_SIGNS_ONLY = (np.abs(_AXIS_MAPS) == np.eye(3)).all(axis=(1, 2))


def start_rotations(a: np.ndarray, b: np.ndarray, extra: int = 0, seed: int = 0, orders: bool = False,
                    spread: bool = False) -> np.ndarray:
    """Proper rotations (m, 3, 3) taking A's principal axes onto B's, for every sign choice (4);
    with `orders`, also onto B's axes in every order (24 in all: for conformers whose axes swap
    rank); with `spread`, the 60 rotations of `_SPREAD` between the principal frames (for
    near-degenerate axes, where the principal frame is arbitrary); plus `extra` uniformly random
    rotations."""
    centred = [x - x.mean(0) for x in (a, b)]
    # principal_axes of both in one call: columns largest first
    frames = np.linalg.eigh(np.stack([x.T @ x / len(x) for x in centred]))[1][:, :, ::-1]
    # both frames right-handed (eigh returns either hand), so a proper map between them is a
    # proper rotation: the spread set would otherwise be 60 mirror images wherever the two hands
    # differ (31 of the 72 bench pairs), and none of them the tetrahedral axis maps it repeats
    frames[:, :, 2] *= np.sign(np.linalg.det(frames))[:, None]
    axes_a, axes_b = frames
    maps = _AXIS_MAPS[(_AXIS_DETS > 0) & (orders | _AXIS_SIGNS_ONLY)]
    if spread:
        maps = np.concatenate([maps, _SPREAD])
    rotations = axes_b @ maps @ axes_a.T
    if extra:
        from scipy.spatial.transform import Rotation

        # the generator goes in positionally: scipy's `rng` (`random_state` before scipy 1.15)
        rotations = np.concatenate([rotations, Rotation.random(extra, np.random.default_rng(seed)).as_matrix()])
    return rotations


def start_poses(a: np.ndarray, b: np.ndarray, extra: int = 0, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The search's starting poses (rotation, translation): every rotation of `start_rotations`
    (axis orders and the spread set, plus `extra` random ones), centroid onto centroid."""
    rotations = start_rotations(a, b, extra, seed, orders=True, spread=True)
    return list(zip(rotations, b.mean(0) - rotations @ a.mean(0)))


#: From this many atoms on, element mode scores every start cheaply and refines only the best few
#: (see `_align_large`); below, every start is refined with the dense Hungarian assignment.
LARGE = 300
#: Starts refined in full on large structures (after the cheap nearest-neighbour stage).
LARGE_REFINED = 3
#: Candidate partners per atom in the sparse assignment (doubled where no full matching exists).
NEIGHBOURS = 8


def radial_bound(a: np.ndarray, a_numbers: np.ndarray, b: np.ndarray, b_numbers: np.ndarray) -> float:
    """A lower bound on element mode's RMSD, from distances to the centroid alone.

    The best translation for any mapping lays centroid on centroid, and a rotation keeps each
    atom's distance r to its centroid, so |R p - q| >= |r_p - r_q| for every pair; the smallest sum
    of (r_p - r_q)^2 over element-preserving mappings pairs the sorted distances of each element.
    When the search's RMSD meets this bound, it is proven optimal."""
    ra = np.linalg.norm(a - a.mean(0), axis=1)
    rb = np.linalg.norm(b - b.mean(0), axis=1)
    # sorted by element, then by distance: the same elements line up (equal compositions)
    ssd = float(((ra[np.lexsort((ra, a_numbers))] - rb[np.lexsort((rb, b_numbers))]) ** 2).sum())
    return float(np.sqrt(ssd / len(a)))


class _Partners:
    """Nearest atoms of B per element (scipy k-d trees, built once per pair): nearest-neighbour
    scores for the cheap stage, and the one-to-one assignment restricted to each atom's nearest
    candidates (a sparse minimum-weight perfect matching), for structures where the dense
    Hungarian's n^2 cost matrix and n^3 time are wasted on pairs hundreds of Å apart."""

    def __init__(self, b: np.ndarray, b_numbers: np.ndarray, a_numbers: np.ndarray):
        from scipy.spatial import cKDTree

        self.b = b
        self.classes = [(np.flatnonzero(a_numbers == z), np.flatnonzero(b_numbers == z)) for z in np.unique(a_numbers)]
        self.trees = [cKDTree(b[ib]) for _, ib in self.classes]

    def nearest(self, moved: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(squared distance, B atom) of the nearest same-element atom of B to each moved A atom
        (only A atoms `rows`, a subset, when given; `moved` then holds just those)."""
        d2, partner = np.empty(len(moved)), np.empty(len(moved), dtype=np.int64)
        for (ia, ib), tree in zip(self.classes, self.trees):
            pick = np.flatnonzero(np.isin(rows, ia)) if rows is not None else ia
            if len(pick):
                d, j = tree.query(moved[pick])
                d2[pick], partner[pick] = d * d, ib[j]
        return d2, partner

    def candidates(self, moved: np.ndarray, previous: np.ndarray | None = None) -> list:
        """For each element with more than 4 NEIGHBOURS atoms, the candidate pairs of the sparse
        assignment: (A atoms ia, B atoms ib, rows, cols, cost), rows and cols indexing ia and ib,
        cost the squared distance. Each A atom's NEIGHBOURS nearest B atoms, each B atom's nearest
        A atoms, and the pairs of `previous` (the last mapping; else a greedy matching), which make
        sure a full matching exists. Smaller elements: (ia, ib, None, None, None)."""
        from scipy.spatial import cKDTree

        where = np.empty(len(self.b), dtype=np.int64)
        out = []
        for (ia, ib), tree in zip(self.classes, self.trees):
            m, k = len(ia), NEIGHBOURS
            if m <= 4 * k:
                out.append((ia, ib, None, None, None))
                continue
            where[ib] = np.arange(m)
            _, near_b = tree.query(moved[ia], k)  # (m, k) class-local B indices
            _, near_a = cKDTree(moved[ia]).query(self.b[ib], k)  # (m, k) class-local A indices
            kept = where[previous[ia]] if previous is not None else _greedy(near_b, ((moved[ia, None, :] - self.b[ib][near_b]) ** 2).sum(-1))
            rows = np.concatenate([np.repeat(np.arange(m), k), near_a.ravel(), np.arange(m)])
            cols = np.concatenate([near_b.ravel(), np.repeat(np.arange(m), k), kept])
            rows, cols = np.divmod(np.unique(rows * m + cols), m)
            out.append((ia, ib, rows, cols, ((moved[ia[rows]] - self.b[ib[cols]]) ** 2).sum(-1)))
        return out

    def assign(self, moved: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
        """The one-to-one mapping minimising summed squared distances within each element over the
        candidate pairs of `candidates` (scipy's sparse LAPJVsp); the dense Hungarian for small
        elements."""
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import min_weight_full_bipartite_matching

        mapping = np.empty(len(moved), dtype=np.int64)
        for ia, ib, rows, cols, cost in self.candidates(moved, previous):
            if rows is None:
                rows, cols = _hungarian()(((moved[ia, None, :] - self.b[None, ib, :]) ** 2).sum(-1))
                mapping[ia[rows]] = ib[cols]
                continue
            m = len(ia)
            # + 1 on every edge: explicit zeros would read as missing edges, and each perfect
            # matching has m edges, so the offset changes no comparison. One extra column with no
            # edge makes the problem rectangular, and for those scipy's LAPJVsp skips its
            # initial 'augmenting row reduction' and goes straight to shortest augmenting paths:
            # that phase lowers a contested column's price by the gap between a row's two best
            # reduced costs and takes the displaced row up again at once, so near-ties (rounded
            # coordinates, symmetric copies, or any jitter added to break exact ties) make it trade
            # a column back and forth in tiny steps for minutes. The augmenting paths are
            # Dijkstra searches whose work depends on the graph, not on how close the costs are.
            graph = csr_matrix((cost + 1.0, (rows, cols)), shape=(m, m + 1))
            rows, cols = min_weight_full_bipartite_matching(graph)
            mapping[ia[rows]] = ib[cols]
        return mapping


def _greedy(near: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """A one-to-one matching to seed the sparse assignment (a full matching among its candidates):
    rows in order of their nearest distance take their nearest free candidate; rows left over take
    the free columns in order."""
    m = len(near)
    match, used = np.full(m, -1, dtype=np.int64), np.zeros(m, dtype=bool)
    for row in np.argsort(d2[:, 0], kind="stable").tolist():
        for col in near[row].tolist():
            if not used[col]:
                match[row], used[col] = col, True
                break
    match[match < 0] = np.flatnonzero(~used)
    return match


def _fit(a, b, mapping) -> AlignResult:
    rotation, translation = kabsch(a, b[mapping])
    return AlignResult(fit_rmsd(a, b[mapping], rotation, translation), rotation, translation, mapping)


def _align_large(a, za, b, zb, poses, deadline, progress, seed) -> tuple[AlignResult, dict]:
    """Element mode on large structures, near-linear in practice.

    1. Every start is scored on a fixed subsample of A (up to 512 atoms) by the mean squared
       distance to the nearest same-element atom of B: a lower bound on that pose's one-to-one
       assignment cost, found with k-d trees in O(m log n).
    2. The best 16 run nearest-neighbour ICP on the subsample (Kabsch onto the nearest atoms), and
       are rescored on every atom.
    3. The best LARGE_REFINED then alternate the sparse one-to-one assignment (`_Partners.assign`)
       and Kabsch until the mapping stops changing, in order of score, as long as the score (a
       bound on that pose's assignment) is below the best one-to-one answer so far.
    Past `deadline` (time.perf_counter), the best answer so far is returned."""
    import time

    partners = _Partners(b, zb, za)
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(len(a), min(len(a), 512), replace=False))
    scored = []
    for rotation, translation in poses:
        d2, _ = partners.nearest(a[sub] @ rotation.T + translation, sub)
        scored.append(float(d2.mean()))
    icp = []
    for k in np.argsort(scored)[:16]:
        rotation, translation = poses[k]
        for _ in range(8):
            _, partner = partners.nearest(a[sub] @ rotation.T + translation, sub)
            rotation, translation = kabsch(a[sub], b[partner])
        d2, _ = partners.nearest(a @ rotation.T + translation)
        icp.append((float(d2.mean()), rotation, translation))
    icp.sort(key=lambda item: item[0])
    best, refined, converged, stopped = None, 0, True, False
    for score, rotation, translation in icp[:LARGE_REFINED]:
        if best is not None and score >= best.rmsd ** 2:
            break  # its nearest-neighbour bound already loses to the best one-to-one answer
        if best is not None and time.perf_counter() > deadline:
            stopped = True
            break
        mapping, last = None, np.inf
        for _ in range(50):
            new = partners.assign(a @ rotation.T + translation, mapping)
            if mapping is not None and np.array_equal(new, mapping):
                break
            mapping = new
            result = _fit(a, b, mapping)
            if result.rmsd > last * (1.0 - 1e-4) - 1e-6:  # a few atoms trading partners: not worth another
                if result.rmsd < best.rmsd:
                    best = result
                break
            last = result.rmsd
            rotation, translation = result.rotation, result.translation
            if best is None or result.rmsd < best.rmsd:
                best = result
            if time.perf_counter() > deadline:
                stopped = True
                break
        else:
            converged = False
        refined += 1
        if progress is not None:
            progress(refined, LARGE_REFINED)
        if stopped:
            break
    best.converged = converged and not stopped
    return best, {"refined_starts": refined, "time_limit_reached": stopped}


@functools.cache
def _permutations(k: int) -> np.ndarray:
    """Every permutation of range(k), (k!, k)."""
    from itertools import permutations

    return np.array(list(permutations(range(k))), dtype=np.int64).reshape(-1, k)


#: Classes up to this size are assigned by trying every permutation at once (5! = 120) rather
#: than by one Hungarian call per pose.
ENUMERATED = 5


def _assign_batch(moved: np.ndarray, blocks: list) -> np.ndarray:
    """`assign` for a batch of s poses, with atoms sorted by element (each element one contiguous
    block, at the same place in A and B): moved (s, n, 3), A's centred atoms moved (less B's
    centroid); returns the mappings (s, n) in that order. Exact, with fewer Hungarian calls:
    one-atom elements map to themselves; elements of up to ENUMERATED atoms take each atom's
    nearest partner where those all differ (optimal: each row at its minimum) and otherwise try
    every permutation, in one vectorised step; larger elements get scipy's Hungarian, pose by pose
    (on the bench pairs, every atom of such an element has a different nearest partner in 1-4% of
    the poses: not worth the test)."""
    linear_sum_assignment = _hungarian()
    s, n = moved.shape[:2]
    mappings = np.repeat(np.arange(n)[None], s, axis=0)
    for lo, hi, minus_2yt, y2 in blocks:
        k = hi - lo
        # squared distances less each moved atom's own |x|^2 (the same for every partner: no
        # assignment changes), (pose, atom of A, atom of B); less each B atom's |y|^2 too for the
        # Hungarian (every assignment takes every B atom once), not for the nearest partners
        cost = moved[:, lo:hi] @ minus_2yt
        if k > ENUMERATED:
            mappings[:, lo:hi] = [linear_sum_assignment(c)[1] for c in cost]
        else:
            cost += y2
            cols = cost.argmin(2)  # (s, k); k distinct powers of two sum to 2^k - 1, with a repeat never
            left = np.flatnonzero(np.left_shift(1, cols).sum(1) != (1 << k) - 1)
            if len(left):
                perms = _permutations(k)
                cols[left] = perms[cost[left][:, np.arange(k), perms].sum(2).argmin(1)]  # (left, k!) totals
            mappings[:, lo:hi] = cols
        if lo:
            mappings[:, lo:hi] += lo
    return mappings


def _refine_starts(a, za, b, zb, rotations, translations, deadline, progress,
                   max_iter: int = 50) -> tuple[AlignResult, np.ndarray, bool]:
    """`refine` from every start, all at once: the same answer start for start, in less time.

    The starts advance together (one batched pose-and-cost step and one batched Kabsch per
    iteration, in centred coordinates with the atoms sorted by element: after the first step every
    pose lays centroid on centroid). A refinement's future depends only on its current mapping
    (Kabsch of the mapping, then the assignment from that pose), so a start that reaches a mapping
    another start has already reached follows that one's path from there on: it stops and takes
    that start's result. Returns (the best result, every start's RMSD, whether `deadline` stopped
    the search: then each unfinished start counts with its latest fit)."""
    import time
    from itertools import pairwise

    n, m = len(a), len(rotations)
    # stable: within an element the atoms keep their order, so each element's cost matrix (and
    # the Hungarian's choice between equal costs) is the one `assign` builds
    order_a, order_b = np.argsort(za, kind="stable"), np.argsort(zb, kind="stable")
    a_mean, b_mean = a.mean(0), b.mean(0)
    ac, bc = a[order_a] - a_mean, b[order_b] - b_mean
    norms = float((ac ** 2).sum() + (bc ** 2).sum())
    edges = [0, *(np.flatnonzero(np.diff(za[order_a])) + 1).tolist(), n]
    blocks = [(lo, hi, -2.0 * bc[lo:hi].T, (bc[lo:hi] ** 2).sum(-1)) for lo, hi in pairwise(edges)
              if hi - lo > 1]
    rotations, translations = np.asarray(rotations, dtype=float), np.asarray(translations, dtype=float)
    transposed = np.swapaxes(rotations, 1, 2).copy()  # R^T of every start, updated by each Kabsch
    offsets = rotations @ a_mean + translations - b_mean  # where a pose puts A's centroid, from B's
    mappings = np.zeros((m, n), dtype=np.int64)  # in sorted order
    ssd = np.full(m, np.inf)
    converged = np.zeros(m, dtype=bool)
    seen: dict[bytes, int] = {}  # every mapping reached, and the start that reached it first
    last: list[bytes | None] = [None] * m  # each start's latest mapping
    row_bytes = np.dtype((np.void, 8 * n))  # a mapping (int64 row) as one bytes key
    # the same pose twice (the spread set holds the 12 axis maps of the tetrahedral group):
    # refined once (+ 0.0 turns -0.0 into 0.0, so equal poses give equal bytes)
    owner = np.arange(m)
    firsts: dict[bytes, int] = {}
    for start, row in enumerate(np.round(np.concatenate([rotations.reshape(m, 9), translations], 1), 9) + 0.0):
        owner[start] = firsts.setdefault(row.tobytes(), start)
    active, done, stopped = np.flatnonzero(owner == np.arange(m)), 0, False
    for step in range(max_iter):
        s = len(active)
        moved = ac @ transposed[active]  # (s, n, 3)
        if step == 0:
            moved += offsets[active][:, None, :]
        new = _assign_batch(moved, blocks)
        keep = np.ones(s, dtype=bool)
        for j, (start, key) in enumerate(zip(active.tolist(), new.view(row_bytes).ravel().tolist())):
            if key == last[start]:  # the mapping stopped changing
                keep[j], converged[start] = False, True
            elif key in seen:  # on another start's path (or a cycle of equal fits on its own)
                owner[start], keep[j] = seen[key], False
                converged[start] = seen[key] != start
            else:
                seen[key] = start
                last[start] = key
        active, new = active[keep], new[keep]
        if len(active):
            s = len(active)
            mappings[active] = new
            h = (ac.T @ bc[new.T].reshape(n, 3 * s)).reshape(3, s, 3).transpose(1, 0, 2)  # sum_i a_i b_i^T
            u, sv, vt = np.linalg.svd(h)
            fit = u @ vt  # R^T, where it is proper
            flip = np.linalg.det(fit) < 0  # the best orthogonal fit is a reflection: the best proper
            if flip.any():  # one is U diag(1, 1, -1) V^T
                fit[flip] -= 2.0 * u[flip, :, 2:] @ vt[flip, 2:, :]
                sv[flip, 2] *= -1.0
            ssd[active] = norms - 2.0 * sv.sum(1)
            transposed[active] = fit
        if progress is not None and m - len(active) > done:
            progress(m - len(active), m)
        done = m - len(active)
        if not len(active):
            break
        if time.perf_counter() > deadline:
            stopped = True
            break
    root = owner.copy()
    for _ in range(m.bit_length() + 1):  # pointer doubling: every start to the end of its chain
        root = root[root]
    final = np.maximum(ssd[root], 0.0)
    k = int(root[int(np.argmin(final))])
    rotation = transposed[k].T.copy()
    translation = b_mean - rotation @ a_mean
    mapping = np.empty(n, dtype=np.int64)
    mapping[order_a] = order_b[mappings[k]]
    result = AlignResult(fit_rmsd(a, b[mapping], rotation, translation), rotation, translation, mapping,
                         converged=bool(converged[k]))
    return result, np.sqrt(final / n), stopped


def align(a_positions: np.ndarray, a_numbers: np.ndarray, b_positions: np.ndarray, b_numbers: np.ndarray,
          guess: tuple[np.ndarray, np.ndarray] | None = None, extra_starts: int = 0,
          refine_guess: bool = True, seed: int = 0, time_limit: float | None = None,
          progress=None) -> AlignResult:
    """Align A onto B with element-preserving correspondence (`--match elements`).

    `guess` = (rotation, translation) is tried first (the learned guess); with `refine_guess`
    False it is returned as it is (with its assignment). From LARGE atoms on, starts are pruned by
    cheap nearest-neighbour scores and assigned sparsely (`_align_large`). `time_limit` (seconds):
    past it, the best answer found so far, with `time_limit_reached`. `progress(done, total)` is
    called as starts finish. details: `proven_optimal` (the RMSD meets `radial_bound`, a lower
    bound on every answer: otherwise the multi-start search is not a proof) and `rmsd_lower_bound`.
    Raises ValueError for different compositions.
    """
    import time

    started = time.perf_counter()
    deadline = np.inf if time_limit is None else started + time_limit
    a, b = np.asarray(a_positions, float), np.asarray(b_positions, float)
    za, zb = np.asarray(a_numbers), np.asarray(b_numbers)
    reason = composition_difference(za, zb)
    if reason is not None:
        raise ValueError(reason)
    if guess is not None and not refine_guess:
        rotation, translation = guess
        mapping = assign(a @ rotation.T + translation, b, za, zb)
        return AlignResult(fit_rmsd(a, b[mapping], rotation, translation), rotation, translation, mapping, starts=1)
    rotations = start_rotations(a, b, extra_starts, seed, orders=True, spread=True)
    translations = b.mean(0) - rotations @ a.mean(0)
    if guess is not None:
        rotations = np.concatenate([np.asarray(guess[0], dtype=float)[None], rotations])
        translations = np.concatenate([np.asarray(guess[1], dtype=float)[None], translations])
    details = {"time_limit_reached": False}
    if len(a) >= LARGE:
        result, details = _align_large(a, za, b, zb, list(zip(rotations, translations)), deadline, progress, seed)
    else:
        result, rmsds, details["time_limit_reached"] = _refine_starts(a, za, b, zb, rotations, translations,
                                                                      deadline, progress)
        if guess is not None:
            result.details["guess_was_optimal"] = bool(rmsds[0] <= result.rmsd + 1e-6)
    result.starts = len(rotations)
    bound = radial_bound(a, za, b, zb)
    result.details.update(details, rmsd_lower_bound=bound,
                          proven_optimal=bool(result.rmsd <= bound + 1e-9 * max(1.0, bound) + 1e-12))
    return result


def symmetry_classes(structure) -> np.ndarray:
    """Graph symmetry classes of a structure with bonds: RDKit's canonical ranks with ties kept.

    Atoms in one class are interchangeable by a graph automorphism (up to what ranking can tell),
    and the ranks are canonical, so equal graphs give equal class labels.
    """
    from rdkit import Chem

    from groupae_cli.io.sdf import to_rdkit

    plain = type(structure)(structure.numbers, structure.positions, structure.name, structure.source,
                            structure.index, bonds=structure.bonds)  # connectivity only, no charges or orders
    mol = to_rdkit(plain, perceive_bonds=False)
    return np.asarray(list(Chem.CanonicalRankAtoms(mol, breakTies=False)), dtype=np.int64)


def is_isomorphism(mapping: np.ndarray, bonds_a: np.ndarray, bonds_b: np.ndarray) -> bool:
    """Whether a -> mapping[a] sends the bonds of A exactly onto the bonds of B."""
    mapped = {tuple(sorted((int(mapping[i]), int(mapping[j])))) for i, j in bonds_a}
    return mapped == {tuple(sorted((int(i), int(j)))) for i, j in bonds_b}


def _connectivity_mol(structure, keep: np.ndarray | None = None, labels: np.ndarray | None = None):
    """An RDKit molecule of elements and connectivity only (single bonds, no charges or
    aromaticity: resonance forms such as the two oxygens of a nitro group are one graph),
    restricted to the atoms `keep` and with `labels` as isotopes (matched by substructure search)."""
    from rdkit import Chem

    keep = np.arange(len(structure)) if keep is None else keep
    index = {int(i): k for k, i in enumerate(keep)}
    mol = Chem.RWMol()
    for k, i in enumerate(keep):
        atom = Chem.Atom(int(structure.numbers[i]))
        atom.SetNoImplicit(True)
        if labels is not None:
            atom.SetIsotope(int(labels[i]) + 1)
        mol.AddAtom(atom)
    for i, j in structure.bonds:
        if int(i) in index and int(j) in index:
            mol.AddBond(index[int(i)], index[int(j)], Chem.BondType.SINGLE)
    return mol.GetMol()


def _isomorphisms(query, target, limit: int) -> np.ndarray:
    """Up to `limit` substructure matches of query onto target (same size: isomorphisms), (m, n)."""
    from rdkit import Chem

    params = Chem.SubstructMatchParameters()
    params.uniquify, params.maxMatches, params.useChirality = False, limit, False
    matches = target.GetSubstructMatches(query, params)
    return np.asarray(matches, dtype=np.int64).reshape(len(matches), query.GetNumAtoms())


def terminal_groups(structure, classes: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """Interchangeable terminal atoms: {(symmetry class, neighbour): atoms} for groups of two or
    more atoms with one bond each, to the same neighbour, in the same class: the hydrogens of CH3
    and NH2, the fluorines of CF3, the oxygens of SO2. Any permutation within a group is a graph
    automorphism, so this is where isomorphisms multiply (6 per methyl group)."""
    degree = np.bincount(structure.bonds.ravel(), minlength=len(structure))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, j in structure.bonds:
        for atom, other in ((int(i), int(j)), (int(j), int(i))):
            if degree[atom] == 1:
                groups.setdefault((int(classes[atom]), other), []).append(atom)
    # groups of more than 6 (7! = 5,040 permutations each) stay in the skeleton: rare, and their
    # permutation tables would not be small
    return {key: np.array(sorted(atoms)) for key, atoms in groups.items() if 1 < len(atoms) <= 6}


class _GraphSearch:
    """Every isomorphism is a skeleton isomorphism (the molecule without its interchangeable
    terminal atoms, classes kept) times a permutation within each terminal group."""

    def __init__(self, a, b, classes_a, classes_b, limit: int):
        from itertools import permutations
        from math import factorial

        self.pa, self.pb = a.positions, b.positions
        self.groups_a, self.groups_b = terminal_groups(a, classes_a), terminal_groups(b, classes_b)
        free_a, free_b = np.zeros(len(a), bool), np.zeros(len(b), bool)
        for free, groups in ((free_a, self.groups_a), (free_b, self.groups_b)):
            for atoms in groups.values():
                free[atoms] = True
        self.core_a, self.core_b = np.flatnonzero(~free_a), np.flatnonzero(~free_b)
        if len(self.core_a) != len(self.core_b):
            raise ValueError("different bond graphs: not isomorphic (the two are different molecules)")
        self.perms = {k: np.array(list(permutations(range(k)))) for k in {len(v) for v in self.groups_a.values()}}
        self.per_skeleton = int(np.prod([factorial(len(v)) for v in self.groups_a.values()], dtype=float))
        skeleton = _isomorphisms(_connectivity_mol(a, self.core_a, classes_a),
                                 _connectivity_mol(b, self.core_b, classes_b), limit + 1)
        self.skeleton = self.core_b[skeleton]  # (m, n_core): core atom k of A -> atom of B
        self.skeleton_complete = len(skeleton) <= limit

    def mapping(self, skeleton_row: np.ndarray) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """The core mapping of one skeleton isomorphism, and the (A atoms, B atoms) of each group."""
        mapping = np.full(len(self.pa), -1, dtype=np.int64)
        mapping[self.core_a] = skeleton_row
        pairs = [(atoms, self.groups_b[(cls, int(mapping[parent]))]) for (cls, parent), atoms in self.groups_a.items()]
        return mapping, pairs

    def _terms(self, skeleton_row: np.ndarray):
        """For one skeleton isomorphism: the mapping of the core, the (A atoms, B atoms) of each
        group, the norms, the core's correlation matrix and each group's term per permutation.

        B's centroid does not depend on the mapping (nor does the fitted translation), so the
        correlation matrix H = sum_i p_i q_map(i)^T of a full mapping is the core's plus one term
        per group, chosen by that group's permutation."""
        base, pairs = self.mapping(skeleton_row)
        p, q = self.pa - self.pa.mean(0), self.pb - self.pb.mean(0)
        norms = float((p ** 2).sum() + (q ** 2).sum())
        h_core = p[self.core_a].T @ q[skeleton_row]
        terms = [np.einsum("ki,mkj->mij", p[atoms_a], q[atoms_b][self.perms[len(atoms_a)]]) for atoms_a, atoms_b in pairs]
        return base, pairs, norms, h_core, terms

    def _finish(self, base, pairs, picks) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        mapping = base.copy()
        for (atoms_a, atoms_b), pick in zip(pairs, picks):
            mapping[atoms_a] = atoms_b[self.perms[len(atoms_a)][pick]]
        rotations, translations, ssd = kabsch_many(self.pa, self.pb[mapping][None])
        return float(ssd[0]), rotations[0], translations[0], mapping

    def exhaustive(self, skeleton_row: np.ndarray, chunk: int = 65_536) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """The best fit over every permutation within the groups: (ssd, rotation, translation,
        mapping); each candidate's best proper fit is `best_fit_ssd` of its correlation matrix."""
        base, pairs, norms, h_core, terms = self._terms(skeleton_row)
        counts = [len(t) for t in terms]
        total = int(np.prod(counts, dtype=np.int64))
        best_ssd, best_combo = np.inf, 0
        for first in range(0, total, chunk):
            combo = rest = np.arange(first, min(total, first + chunk))
            h = np.repeat(h_core[None], len(combo), axis=0)
            for term, count in zip(terms, counts):
                rest, pick = np.divmod(rest, count)
                h += term[pick]
            ssd = best_fit_ssd(h, norms)
            k = int(np.argmin(ssd))
            if ssd[k] < best_ssd:
                best_ssd, best_combo = float(ssd[k]), int(combo[k])
        picks = []
        for count in counts:
            best_combo, pick = divmod(best_combo, count)
            picks.append(pick)
        return self._finish(base, pairs, picks)

    def bound_search(self, skeleton_row: np.ndarray, best_ssd: float, max_nodes: int = 200_000):
        """Prove that no permutation within the groups beats `best_ssd`, or find the one that does,
        without trying them all: branch and bound over the groups, one group per level.

        The best proper fit of a correlation matrix H is lambda(H) = max_R tr(R H), and lambda is
        subadditive, so for a partial choice (the core and the groups chosen so far) every
        completion has lambda <= lambda(partial) + the sum over the other groups of their largest
        lambda over permutations (each group turned on its own). Its residual is then at least
        norms - 2 * that; nodes whose bound cannot beat `best_ssd` are dropped, level by level (the
        groups with the most room first). Returns (complete, better): complete is False when more
        than `max_nodes` nodes would be needed (nothing proven); better is (ssd, rotation,
        translation, mapping) when a completion beats `best_ssd`, else None."""
        base, pairs, norms, h_core, terms = self._terms(skeleton_row)

        def lam(h):
            return (norms - best_fit_ssd(h, norms)) / 2.0

        room = np.array([lam(term).max() for term in terms])
        order = np.argsort(-room, kind="stable")
        rest = np.concatenate([np.cumsum(room[order][::-1])[::-1], [0.0]])  # rest[d]: room of groups d, d+1, ...
        tol = 1e-9 * max(1.0, best_ssd)
        h, picks, nodes = h_core[None], np.zeros((1, 0), dtype=np.int64), 0
        if norms - 2.0 * (lam(h)[0] + rest[0]) >= best_ssd - tol:
            return True, None
        for depth, g in enumerate(order):
            count = len(terms[g])
            nodes += len(h) * count
            if nodes > max_nodes:
                return False, None
            h = (h[:, None] + terms[g][None]).reshape(-1, 3, 3)
            picks = np.concatenate([np.repeat(picks, count, axis=0), np.tile(np.arange(count), len(picks))[:, None]], 1)
            keep = norms - 2.0 * (lam(h) + rest[depth + 1]) < best_ssd - tol
            h, picks = h[keep], picks[keep]
            if not len(h):
                return True, None
        k = int(np.argmin(best_fit_ssd(h, norms)))
        chosen = np.empty(len(terms), dtype=np.int64)
        chosen[order] = picks[k]
        return True, self._finish(base, pairs, chosen)

    def local(self, skeleton_row: np.ndarray, rotation: np.ndarray, seed: int = 0, samples: int = 160,
              polish: int = 2):
        """Too many group permutations to try them all. With the rotation fixed, every group's best
        permutation is independent of the others' (the translation does not depend on the
        mapping), so rotations sampled around the skeleton's pose (and uniformly) each pick every
        group's best permutation at once; the distinct picks get an exact fit, and the best
        `polish` are improved by exact single-group sweeps (every permutation of one group, the
        others fixed) until no sweep helps. Not proven optimal. (ssd, rotation, translation, mapping)."""
        from scipy.spatial.transform import Rotation

        base, pairs, norms, h_core, terms = self._terms(skeleton_row)
        rng = np.random.default_rng(seed)
        scales = np.repeat([0.05, 0.15, 0.3, 0.6, 1.2], samples // 5 + 1)[:samples, None]
        rotations = np.concatenate([rotation[None], Rotation.from_rotvec(rng.normal(size=(samples, 3)) * scales).as_matrix()
                                    @ rotation, Rotation.random(samples // 8, random_state=rng).as_matrix()])
        # tr(R H) = sum(R * H^T): each group's best permutation for each rotation, (S, G)
        picks = np.unique(np.stack([np.einsum("sij,mji->sm", rotations, t).argmax(1) for t in terms], axis=1), axis=0)

        def total(p):
            return h_core[None] + sum(t[p[:, g]] for g, t in enumerate(terms))

        fits = best_fit_ssd(total(picks), norms)
        best_pick, best_ssd = None, np.inf
        for k in np.argsort(fits)[:polish]:
            pick, ssd = picks[k].copy(), float(fits[k])
            improved = True
            while improved:
                improved = False
                for g, t in enumerate(terms):
                    trial = np.repeat(pick[None], len(t), axis=0)
                    trial[:, g] = np.arange(len(t))
                    trial_fits = best_fit_ssd(total(trial), norms)
                    j = int(np.argmin(trial_fits))
                    if trial_fits[j] < ssd - 1e-9 * max(1.0, ssd):
                        pick, ssd, improved = trial[j], float(trial_fits[j]), True
            if ssd < best_ssd:
                best_pick, best_ssd = pick, ssd
        return self._finish(base, pairs, best_pick)


def align_graph(a, b, guess: tuple[np.ndarray, np.ndarray] | None = None, extra_starts: int = 0,
                limit: int = 5_000) -> AlignResult:
    """Align A onto B over mappings that are graph isomorphisms (`--match graph`), without
    enumerating them all.

    Every isomorphism is a skeleton isomorphism (the molecule without interchangeable terminal
    atoms: the H of CH3, the F of CF3) times a permutation within each terminal group. Skeleton
    isomorphisms are few; each gets a Kabsch fit on the skeleton, a lower bound on every full fit
    that extends it, and they are completed best bound first until the next bound is no better than
    the best full fit. A skeleton isomorphism is completed exactly, by a batched quaternion fit of
    every group permutation, when there are at most `limit` of them; otherwise by the sampled-
    rotation search of `_GraphSearch.local`. `proven_optimal`: every completion was exact (and the
    skeleton search complete). Where the skeleton alone has more than `limit` isomorphisms,
    refinement within graph-symmetry classes from the learned guess and principal-axis starts fills
    in (not proven).
    """
    if a.bonds is None or b.bonds is None:
        raise ValueError("graph matching needs bonds in both structures (use element matching)")
    classes_a, classes_b = symmetry_classes(a), symmetry_classes(b)
    if sorted(classes_a.tolist()) != sorted(classes_b.tolist()) or len(a.bonds) != len(b.bonds):
        raise ValueError(composition_difference(a.numbers, b.numbers) or graph_difference(a, b)
                         or "different bond graphs: not isomorphic (the two are different molecules)")
    pa, pb = a.positions, b.positions
    search = _GraphSearch(a, b, classes_a, classes_b, limit)
    if not len(search.skeleton):
        raise ValueError("different bond graphs: not isomorphic (the two are different molecules)")
    best = (np.inf, None, None, None)
    if guess is not None:  # the learned guess, refined, tightens the bound from the start
        r = refine(pa, pb, classes_a, classes_b, *guess)
        if is_isomorphism(r.mapping, a.bonds, b.bonds):
            best = (r.rmsd ** 2 * len(pa), r.rotation, r.translation, r.mapping)
    exact, completed, starts = search.skeleton_complete, 0, int(guess is not None)
    if search.skeleton_complete:
        core = search.skeleton
        rotations, _, bounds = kabsch_many(pa[search.core_a], pb[core])
        for k in np.argsort(bounds, kind="stable"):
            if bounds[k] >= best[0] - 1e-9 * max(1.0, best[0]):
                break
            if search.per_skeleton <= limit:
                found = search.exhaustive(core[k])
            else:  # a good completion, then a proof that none is better (or the better one)
                found = search.local(core[k], rotations[k])
                complete, better = search.bound_search(core[k], min(found[0], best[0]), max_nodes=min(40 * limit, 2_000_000))
                if better is not None and better[0] < found[0]:
                    found = better
                exact = exact and complete
            completed += 1
            if found[0] < best[0]:
                best = found
    else:
        poses = start_poses(pa, pb, extra_starts)
        for r in (refine(pa, pb, classes_a, classes_b, r, t) for r, t in poses):
            if is_isomorphism(r.mapping, a.bonds, b.bonds) and r.rmsd ** 2 * len(pa) < best[0]:
                best = (r.rmsd ** 2 * len(pa), r.rotation, r.translation, r.mapping)
        starts += len(poses)
        if best[1] is None:  # no start reached an isomorphism: the first skeleton isomorphism, completed
            rotation, _ = kabsch(pa[search.core_a], pb[search.skeleton[0]])
            best = search.local(search.skeleton[0], rotation)
    ssd, rotation, translation, mapping = best
    result = AlignResult(float(np.sqrt(max(ssd, 0.0) / len(pa))), rotation, translation, np.asarray(mapping),
                         mode="graph", starts=starts)
    result.details.update(proven_optimal=bool(exact), skeleton_isomorphisms=len(search.skeleton),
                          skeleton_complete=search.skeleton_complete, completed_skeletons=completed,
                          isomorphisms=int(len(search.skeleton) * search.per_skeleton) if search.skeleton_complete else None)
    return result


def learned_guess(model, a, b, device) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, list[bool]]:
    """The model's guess: rotation R_B R_A^T, translation from the centroids, the correspondence
    of canonical slots (slot k of A <-> slot k of B), and whether each learned frame was flagged
    degenerate (anchor atoms stood in for cancelled frame vectors)."""
    from groupae_cli.embed import encode_batch

    encoded = encode_batch(model, [a, b], device)
    (ra, rb), (ta, tb) = encoded["rotation"].astype(float), encoded["translation"].astype(float)
    rotation = rb @ ra.T
    mapping = np.empty(len(a), dtype=np.int64)
    mapping[encoded["permutation"][0]] = encoded["permutation"][1]
    return (rotation, tb - ta @ rotation.T), mapping, [bool(d) for d in encoded["degenerate"]]


def _symbol(z: int) -> str:
    if z == 0:
        return "X"
    from rdkit import Chem

    return Chem.GetPeriodicTable().GetElementSymbol(int(z))


def formula(numbers) -> str:
    """Hill formula of atomic numbers: C and H first, then the others alphabetically (C6H6O)."""
    from collections import Counter

    counts = Counter(_symbol(int(z)) for z in np.asarray(numbers).tolist())
    first = [e for e in ("C", "H") if "C" in counts and e in counts]
    order = first + sorted(e for e in counts if e not in first)
    return "".join(f"{e}{counts[e] if counts[e] > 1 else ''}" for e in order)


def composition_difference(a_numbers, b_numbers) -> str | None:
    """Why A and B cannot be aligned atom for atom, in one line, or None: a single atom (no
    orientation to align), or different compositions ("A has C6H6O (13 atoms), B has C6H6 (12
    atoms): A has 1 O more")."""
    for label, numbers in (("A", a_numbers), ("B", b_numbers)):
        if len(numbers) < 2:
            return f"{label} has {len(numbers)} atom{'s' if len(numbers) != 1 else ''}: alignment needs at least 2 " \
                   "(a single atom has no orientation)"
    if sorted(np.asarray(a_numbers).tolist()) == sorted(np.asarray(b_numbers).tolist()):
        return None
    from collections import Counter

    a, b = Counter(np.asarray(a_numbers).tolist()), Counter(np.asarray(b_numbers).tolist())
    more = ", ".join(f"{a[z] - b[z]} {_symbol(z)}" for z in sorted(a) if a[z] > b[z])
    fewer = ", ".join(f"{b[z] - a[z]} {_symbol(z)}" for z in sorted(b) if b[z] > a[z])
    how = " and ".join(part for part in (f"{more} more" if more else "", f"{fewer} fewer" if fewer else "") if part)
    return (f"different compositions: A has {formula(a_numbers)} ({len(a_numbers)} atoms), "
            f"B has {formula(b_numbers)} ({len(b_numbers)} atoms): A has {how}")


def graph_difference(a, b) -> str | None:
    """How the bond graphs of A and B (same composition) plainly differ, in one line, or None when
    no simple count tells them apart (they may still not be isomorphic)."""
    from collections import Counter

    if len(a.bonds) != len(b.bonds):
        return f"different bond graphs: A has {len(a.bonds)} bonds, B has {len(b.bonds)} (both {formula(a.numbers)})"

    def environments(s):
        neighbours = [[] for _ in range(len(s))]
        for i, j in np.asarray(s.bonds).tolist():
            neighbours[i].append(_symbol(s.numbers[j]))
            neighbours[j].append(_symbol(s.numbers[i]))
        return Counter((_symbol(s.numbers[i]), ", ".join(sorted(n))) for i, n in enumerate(neighbours))

    env_a, env_b = environments(a), environments(b)
    for (element, around), count in sorted(env_a.items()):
        if env_b[(element, around)] < count:
            return (f"different bond graphs: A has {count} {element} bonded to ({around or 'nothing'}), "
                    f"B has {env_b[(element, around)]} (both {formula(a.numbers)})")
    return None


def perceive_bonds(structure, label: str = "A"):
    """A copy of a structure without bonds (XYZ, PDB-less ...) with the connectivity RDKit perceives
    from its geometry (`rdDetermineBonds.DetermineConnectivity`: covalent radii); graph mode ignores
    bond orders, so none are assigned. ValueError, in one line, where RDKit cannot."""
    import dataclasses

    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    from groupae_cli.io.sdf import _atoms, rdkit_messages

    if (structure.numbers < 1).any():
        raise ValueError(f"{label} has untyped points: bonds cannot be perceived (use --match elements)")
    mol = Chem.RWMol(_atoms(structure))
    with rdkit_messages() as messages:
        try:
            rdDetermineBonds.DetermineConnectivity(mol)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{label}: RDKit could not perceive bonds "
                             f"({(messages or [str(exc)])[-1]}); use --match elements") from None
    pairs = np.array([(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()) for bond in mol.GetBonds()],
                     dtype=np.int64).reshape(-1, 2)
    return dataclasses.replace(structure, bonds=pairs, bond_orders=np.ones(len(pairs)))


def align_structures(a, b, match: str | None = None, model=None, device=None, refine_guess: bool = True,
                     extra_starts: int = 0, graph_limit: int = 5_000, time_limit: float | None = None,
                     progress=None) -> AlignResult:
    """Align structure A onto B: `match` "elements" or "graph" (default: graph when both have bonds).

    With a model, its guess comes first; `refine_guess=False` returns the learned answer alone.
    `time_limit` and `progress`: element mode's (see `align`).
    In graph mode a structure without bonds gets the connectivity RDKit perceives from its geometry
    (`perceive_bonds`; `bonds_a` / `bonds_b` in the details say "input" or "perceived").
    ValueError, in one line, for a single atom, different compositions, and in graph mode for
    bonds that cannot be perceived or different bond graphs.
    """
    match = match or ("graph" if a.has_bonds and b.has_bonds else "elements")
    if match not in ("elements", "graph"):
        raise ValueError(f"match must be 'elements' or 'graph', not {match!r}")
    reason = composition_difference(a.numbers, b.numbers)
    bonds = {}
    if reason is None and match == "graph":
        bonds = {"bonds_a": "input" if a.has_bonds else "perceived", "bonds_b": "input" if b.has_bonds else "perceived"}
        a, b = (s if s.has_bonds else perceive_bonds(s, label) for s, label in ((a, "A"), (b, "B")))
    if reason is None and match == "graph" and len(a.bonds) != len(b.bonds):
        reason = graph_difference(a, b)  # other differences: align_graph, which finds them anyway
    if reason is not None:
        raise ValueError(reason)
    guess, guess_mapping, learned_degenerate = None, None, None
    if model is not None:
        guess, guess_mapping, learned_degenerate = learned_guess(model, a, b, device)
    shapes = {"principal_axes_a": principal_shape(a.positions), "principal_axes_b": principal_shape(b.positions),
              **bonds}
    if learned_degenerate is not None:
        shapes["learned_frame_degenerate"] = learned_degenerate
    learned = None if guess is None else fit_rmsd(a.positions, b.positions[guess_mapping], *guess)
    if not refine_guess:
        if guess is None:
            raise ValueError("--no-refine needs a model (its learned guess is the answer)")
        return AlignResult(learned, *guess, guess_mapping, mode=f"{match} (learned, not refined)", starts=1,
                           details=shapes)
    if match == "graph":
        result = align_graph(a, b, guess, extra_starts, graph_limit)
    else:
        result = align(a.positions, a.numbers, b.positions, b.numbers, guess, extra_starts, time_limit=time_limit,
                       progress=progress)
    result.details.update(shapes)
    if learned is not None:
        result.details["learned_rmsd"] = learned
        result.details["learned_was_optimal"] = bool(learned <= result.rmsd + 1e-3)
    return result
