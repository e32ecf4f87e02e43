"""Alignment without atom order: the minimum RMSD over proper rotations, translations and
element-preserving one-to-one mappings (DESIGN §3, `--match elements`).

Exact refinement alternates an assignment step (scipy's Hungarian `linear_sum_assignment` on
squared distances, within each element) and a proper-rotation Kabsch step until the mapping stops
changing. Starting poses: a given guess (the learned one, when a model is used), and the proper
rotations that carry A's principal axes onto B's (4 sign choices; more when axes are degenerate).
The best result over all starts wins. Rotations are always proper: a mirror image is never produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass
class AlignResult:
    """A mapped onto B: B[mapping[i]] ~ A[i] @ rotation.T + translation."""

    rmsd: float
    rotation: np.ndarray  # (3, 3), det +1
    translation: np.ndarray  # (3,)
    mapping: np.ndarray  # (n,): atom i of A corresponds to atom mapping[i] of B
    mode: str = "elements"
    starts: int = 0
    converged: bool = True
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"rmsd": self.rmsd, "rotation": self.rotation.tolist(), "translation": self.translation.tolist(),
                "mapping": self.mapping.tolist(), "mode": self.mode, "starts": self.starts,
                "converged": self.converged, **self.details}


def kabsch(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The proper rotation R and translation t minimising |p R^T + t - q| (rows are points)."""
    pc, qc = p.mean(0), q.mean(0)
    h = (p - pc).T @ (q - qc)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rotation = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return rotation, qc - pc @ rotation.T


def assign(moved: np.ndarray, target: np.ndarray, classes_a: np.ndarray, classes_b: np.ndarray) -> np.ndarray:
    """The mapping minimising the summed squared distances, one Hungarian problem per class."""
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
    rmsd = float(np.sqrt(((a @ rotation.T + translation - b[mapping]) ** 2).sum(-1).mean()))
    return AlignResult(rmsd, rotation, translation, mapping, converged=step < max_iter - 1)


def principal_axes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(axes as columns, largest first; eigenvalues) of the centred point set's covariance."""
    centred = x - x.mean(0)
    values, vectors = np.linalg.eigh(centred.T @ centred / len(x))
    return vectors[:, ::-1], values[::-1]


def axis_starts(a: np.ndarray, b: np.ndarray, extra: int = 0, seed: int = 0) -> list[np.ndarray]:
    """Proper rotations taking A's principal axes onto B's, for every sign choice; plus `extra`
    random rotations (for near-degenerate axes, where the principal frame is arbitrary)."""
    axes_a, _ = principal_axes(a)
    axes_b, _ = principal_axes(b)
    starts = []
    for s1 in (1.0, -1.0):
        for s2 in (1.0, -1.0):
            signs = np.diag([s1, s2, s1 * s2 * np.linalg.det(axes_a) * np.linalg.det(axes_b)])
            rotation = axes_b @ signs @ axes_a.T
            starts.append(rotation)
    rng = np.random.default_rng(seed)
    for _ in range(extra):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        starts.append(q * np.sign(np.linalg.det(q)))
    return starts


def align(a_positions: np.ndarray, a_numbers: np.ndarray, b_positions: np.ndarray, b_numbers: np.ndarray,
          guess: tuple[np.ndarray, np.ndarray] | None = None, extra_starts: int = 0,
          refine_guess: bool = True) -> AlignResult:
    """Align A onto B with element-preserving correspondence (`--match elements`).

    `guess` = (rotation, translation) is tried first (the learned guess); with `refine_guess`
    False it is returned as it is (with its assignment). Raises ValueError for different
    compositions.
    """
    a, b = np.asarray(a_positions, float), np.asarray(b_positions, float)
    za, zb = np.asarray(a_numbers), np.asarray(b_numbers)
    if sorted(za.tolist()) != sorted(zb.tolist()):
        raise ValueError("the two structures have different compositions")
    poses = []
    if guess is not None:
        poses.append(guess)
    ta, tb = a.mean(0), b.mean(0)
    for rotation in axis_starts(a, b, extra_starts):
        poses.append((rotation, tb - ta @ rotation.T))
    if guess is not None and not refine_guess:
        rotation, translation = guess
        mapping = assign(a @ rotation.T + translation, b, za, zb)
        rmsd = float(np.sqrt(((a @ rotation.T + translation - b[mapping]) ** 2).sum(-1).mean()))
        return AlignResult(rmsd, rotation, translation, mapping, starts=1)
    results = [refine(a, b, za, zb, r, t) for r, t in poses]
    best = min(range(len(results)), key=lambda k: results[k].rmsd)
    result = results[best]
    result.starts = len(poses)
    if guess is not None:
        result.details["guess_was_optimal"] = bool(results[0].rmsd <= result.rmsd + 1e-6)
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


def align_graph(a, b, guess: tuple[np.ndarray, np.ndarray] | None = None, extra_starts: int = 0,
                max_isomorphisms: int = 5_000) -> AlignResult:
    """Align A onto B over mappings that are graph isomorphisms (`--match graph`).

    Up to `max_isomorphisms` isomorphisms (RDKit substructure matches on connectivity) each get a
    proper Kabsch fit: below the cap this is exact (`proven_optimal`). At the cap (molecules with
    many interchangeable atoms, where enumeration explodes), refinement within graph-symmetry
    classes from several starts continues from the best fit found; the result is then reported
    as not proven optimal.
    """
    from rdkit import Chem

    from groupae_cli.io.sdf import to_rdkit

    if a.bonds is None or b.bonds is None:
        raise ValueError("graph matching needs bonds in both structures (use element matching)")
    classes_a, classes_b = symmetry_classes(a), symmetry_classes(b)
    if sorted(classes_a.tolist()) != sorted(classes_b.tolist()) or len(a.bonds) != len(b.bonds):
        raise ValueError("the two structures are different molecules (their bond graphs differ)")
    query, target = to_rdkit(a, perceive_bonds=False), to_rdkit(b, perceive_bonds=False)
    for mol in (query, target):  # match on elements and connectivity only: resonance forms (the two
        for bond in mol.GetBonds():  # oxygens of a nitro group) are one graph
            bond.SetBondType(Chem.BondType.SINGLE)
            bond.SetIsAromatic(False)
        for atom in mol.GetAtoms():
            atom.SetFormalCharge(0)
            atom.SetIsAromatic(False)

    def isomorphisms(limit: int) -> tuple:
        params = Chem.SubstructMatchParameters()
        params.uniquify, params.maxMatches, params.useChirality = False, limit, False
        return target.GetSubstructMatches(query, params)

    matches = isomorphisms(max_isomorphisms)
    if not matches:
        raise ValueError("no graph isomorphism between the two structures")
    best = None
    for match in matches:  # proper Kabsch on every isomorphism found
        mapping = np.asarray(match, dtype=np.int64)
        rotation, translation = kabsch(a.positions, b.positions[mapping])
        rmsd = float(np.sqrt(((a.positions @ rotation.T + translation - b.positions[mapping]) ** 2).sum(-1).mean()))
        if best is None or rmsd < best.rmsd:
            best = AlignResult(rmsd, rotation, translation, mapping, mode="graph")
    complete = len(matches) < max_isomorphisms
    poses = []
    if not complete:
        # too many isomorphisms to try them all (many interchangeable atoms): refine within graph
        # symmetry classes from the guess, the best pose so far and the principal axes, keeping
        # results that are isomorphisms
        poses = [guess] if guess is not None else []
        poses.append((best.rotation, best.translation))
        for rotation in axis_starts(a.positions, b.positions, extra_starts):
            poses.append((rotation, b.positions.mean(0) - a.positions.mean(0) @ rotation.T))
        for r in (refine(a.positions, b.positions, classes_a, classes_b, r, t) for r, t in poses):
            if r.rmsd < best.rmsd and is_isomorphism(r.mapping, a.bonds, b.bonds):
                best = AlignResult(r.rmsd, r.rotation, r.translation, r.mapping, mode="graph")
    best.starts = len(poses)
    best.details.update(enumerated_isomorphisms=len(matches), proven_optimal=complete)
    return best


def learned_guess(model, a, b, device) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """The model's guess: rotation R_B R_A^T, translation from the centroids, and the
    correspondence of canonical slots (slot k of A <-> slot k of B)."""
    from groupae_cli.embed import encode_batch

    encoded = encode_batch(model, [a, b], device)
    (ra, rb), (ta, tb) = encoded["rotation"].astype(float), encoded["translation"].astype(float)
    rotation = rb @ ra.T
    mapping = np.empty(len(a), dtype=np.int64)
    mapping[encoded["permutation"][0]] = encoded["permutation"][1]
    return (rotation, tb - ta @ rotation.T), mapping


def align_structures(a, b, match: str | None = None, model=None, device=None, refine_guess: bool = True,
                     extra_starts: int = 0) -> AlignResult:
    """Align structure A onto B: `match` "elements" or "graph" (default: graph when both have bonds).

    With a model, its guess comes first; `refine_guess=False` returns the learned answer alone.
    """
    match = match or ("graph" if a.has_bonds and b.has_bonds else "elements")
    if match not in ("elements", "graph"):
        raise ValueError(f"match must be 'elements' or 'graph', not {match!r}")
    guess, guess_mapping = (None, None)
    if model is not None:
        guess, guess_mapping = learned_guess(model, a, b, device)
    if not refine_guess:
        if guess is None:
            raise ValueError("--no-refine needs a model (its learned guess is the answer)")
        rotation, translation = guess
        moved = a.positions @ rotation.T + translation
        rmsd = float(np.sqrt(((moved - b.positions[guess_mapping]) ** 2).sum(-1).mean()))
        return AlignResult(rmsd, rotation, translation, guess_mapping, mode=f"{match} (learned, not refined)", starts=1)
    if match == "graph":
        result = align_graph(a, b, guess, extra_starts)
    else:
        result = align(a.positions, a.numbers, b.positions, b.numbers, guess, extra_starts)
    if guess_mapping is not None:
        rotation, translation = guess
        moved = a.positions @ rotation.T + translation
        learned = float(np.sqrt(((moved - b.positions[guess_mapping]) ** 2).sum(-1).mean()))
        result.details["learned_rmsd"] = learned
        result.details["learned_was_optimal"] = bool(learned <= result.rmsd + 1e-3)
    return result
