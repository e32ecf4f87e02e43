"""The proof obligations of DESIGN §1 on real molecules, float64 and float32, and the checkers
themselves shown to fail on deliberately broken models."""

import numpy as np
import pytest
import torch
from conftest import split
from rdkit import Chem

from groupae_cli.data import collate
from groupae_cli.io import read_structures
from groupae_cli.models import GroupAE, preset
from groupae_cli.models.graph import Layout, build_edges
from groupae_cli.models.symmetry import GroupElement, symmetry_errors

# per dtype: (z, rotation, translation, canonical and reconstruction in Å)
TOL = {torch.float64: (1e-10, 1e-9, 1e-10, 1e-8), torch.float32: (1e-5, 1e-3, 1e-4, 1e-3)}


@pytest.fixture(scope="module")
def molecules():
    structures, _ = split(read_structures(__import__("conftest").SAMPLE / "molecules.sdf"))
    return structures[::25][:12]


@pytest.fixture(scope="module")
def chiral():
    """A molecule of the sample set with a stereocentre: mirror images differ."""
    structures, _ = split(read_structures(__import__("conftest").SAMPLE / "same" / "molecule.sdf"))
    mol = Chem.MolFromMolFile(str(__import__("conftest").SAMPLE / "same" / "molecule.sdf"), removeHs=False)
    Chem.AssignStereochemistryFrom3D(mol)
    assert Chem.FindMolChiralCenters(mol)
    return structures[0]


#: the attention-pooled embedding in the canonical frame, with composition, a frame-free part of z
#: and a decoder memory; and the frame-free distance-attention head
CANONICAL = {"pooling": "canonical", "pool_tokens": 2, "pool_dim": 16, "pool_heads": 2, "pool_vectors": 4,
             "embedding_composition": True, "embedding_identity": 3, "decoder_memory": 2}
ATTENTION = {**CANONICAL, "pooling": "attention", "pool_layers": 1, "embedding_identity": 0}
#: the canonical head with self-attention among its atom tokens and a learned refinement of z
REFINED = {**CANONICAL, "token_layers": 1, "refine_steps": 1}
DESIGNS = {"mean": {}, "canonical": CANONICAL, "attention": ATTENTION, "refined": REFINED}
#: the canonical head whose atom tokens carry their canonical slot's code: z depends on the order
#: (not adopted: bench/RESULTS.md; its own tests below)
SLOTS = {**CANONICAL, "pool_slot_codes": True}


def slot_model(seed=0):
    """The slot-code design in float64 (the precision a canonical-frame z is shipped in), its slot
    projection (zero at the start of training) drawn at random so that the codes reach z."""
    m = shared(torch.float64, seed=seed, **SLOTS)
    with torch.no_grad():  # the same draw each time: a shared model stays the same
        m.embedding.slot.weight.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(seed))
    return m


def test_contract_holds_with_slot_codes(molecules):
    """z that reads each atom's canonical slot is still exactly invariant: the order is equivariant."""
    m = slot_model()
    batch = collate(molecules, m.config.elements, dtype=torch.float64)
    for seed in range(3):
        errors = symmetry_errors(m, batch, GroupElement.random(batch, generator=torch.Generator().manual_seed(seed)))
        assert_contract(errors, torch.float64)


def model(dtype, seed=0, name="tiny", **changes):
    """A model of its own, for a test that changes it (hooks, weights)."""
    torch.manual_seed(seed)
    m = GroupAE(preset(name, **changes)).to(dtype).eval()
    with torch.no_grad():  # a refinement starts at zero (a no-op): drawn at random, it reaches z
        for refiner in m.refiners:
            refiner.net[-1].weight.normal_(0.0, 0.3)
    return m


_SHARED: dict = {}


def shared(dtype, seed=0, name="tiny", **changes):
    """model(...), built once for every test that only runs it (building costs more than most of
    these tests): the same config, seed and dtype give the same weights, so it is the model each
    test would build."""
    key = (dtype, seed, repr(preset(name, **changes)))
    if key not in _SHARED:
        _SHARED[key] = model(dtype, seed, name, **changes)
    assert _SHARED[key].fit_steps == 0 and not _SHARED[key].fit_hold_identity
    return _SHARED[key]


def assert_contract(errors, dtype, canonical=True):
    z, rot, trans, coords = TOL[dtype]
    assert errors["z_relative"] <= z, errors
    assert errors["rotation"] <= rot, errors
    assert errors["translation"] <= trans, errors
    if canonical:
        assert errors["canonical"] <= coords, errors
        assert errors["order_agreement"] == 1.0, errors
        assert errors["reconstruction"] <= coords, errors


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("design,message_fraction", [("mean", 1.0), ("mean", 0.5), ("canonical", 0.5), ("attention", 0.5),
                                                     ("refined", 0.5)])
def test_contract_holds_on_real_molecules(molecules, dtype, design, message_fraction):
    m = shared(dtype, message_fraction=message_fraction, **DESIGNS[design])
    batch = collate(molecules, m.config.elements, dtype=dtype)
    for seed in range(3):
        errors = symmetry_errors(m, batch, GroupElement.random(batch, generator=torch.Generator().manual_seed(seed)))
        # float32: near-tied scores of an untrained model may swap slots; the order is checked in float64
        assert_contract(errors, dtype, canonical=dtype == torch.float64)
        assert errors["degenerate_frames"] < len(molecules) // 2


def test_float32_order_differs_only_between_near_tied_atoms(molecules):
    """In float32 two atoms may swap slots only where their scores sit at the tie tolerance."""
    m = shared(torch.float32)
    batch = collate(molecules, m.config.elements, dtype=torch.float32)
    g = GroupElement.random(batch, generator=torch.Generator().manual_seed(0))
    a, b = m.encode(batch), m.encode(g.apply(batch))
    layout = a["layout"]
    offsets = layout.offsets[:, None]
    original = g.sigma[b["order"] * layout.mask + offsets]  # global original atom in each slot of the copy
    expected = a["order"] + offsets
    differ = (original != expected) & layout.mask
    assert differ.sum() <= 0.05 * layout.mask.sum()
    gap = (a["scores"][original[differ]] - a["scores"][expected[differ]]).abs()
    assert (gap <= 3 * m.config.tie_tol).all(), gap


@pytest.mark.parametrize("design", DESIGNS)
def test_mirror_image_gets_a_different_embedding(chiral, design):
    m = shared(torch.float64, **DESIGNS[design])
    mirrored = type(chiral)(chiral.numbers, chiral.positions * np.array([-1.0, 1.0, 1.0]), "mirror", "", 0)
    batch = collate([chiral, mirrored], m.config.elements, dtype=torch.float64)
    z = m.encode(batch)["z"]
    invariance = symmetry_errors(m, batch)["z"]
    assert (z[0] - z[1]).abs().max() > 1e-6
    assert (z[0] - z[1]).abs().max() > 1e4 * max(invariance, 1e-16)


def test_achiral_rotation_of_mirror_is_not_a_mirror(molecules):
    """A rotation is never a reflection: the predicted R has det +1."""
    m = shared(torch.float64)
    batch = collate(molecules, m.config.elements, dtype=torch.float64)
    det = torch.linalg.det(m.encode(batch)["rotation"])
    torch.testing.assert_close(det, torch.ones_like(det))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("design", DESIGNS)
def test_batched_equals_one_by_one(molecules, dtype, design):
    assert_batched_equals_one_by_one(molecules, dtype, design)


def assert_batched_equals_one_by_one(molecules, dtype, design, fit_steps=0, hold=False):
    m = shared(dtype, **DESIGNS[design])
    m.fit_steps, m.fit_hold_identity = fit_steps, hold
    try:
        together = m(collate(molecules, m.config.elements, dtype=dtype))
        alone = [m(collate([s], m.config.elements, dtype=dtype)) for s in molecules]
    finally:
        m.fit_steps, m.fit_hold_identity = 0, False
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for i, (s, one) in enumerate(zip(molecules, alone)):
        n = len(s)
        torch.testing.assert_close(one["z"][0], together["z"][i], atol=tol, rtol=0)
        torch.testing.assert_close(one["rotation"][0], together["rotation"][i], atol=tol * 10, rtol=0)
        torch.testing.assert_close(one["y"][0, :n], together["y"][i, :n], atol=tol * 10, rtol=0)
        assert one["order"][0, :n].tolist() == together["order"][i, :n].tolist()


# --- the checkers fail on broken models -------------------------------------------------------


def broken(kind, monkeypatch):
    import groupae_cli.models.autoencoder as ae

    m = model(torch.float64)
    if kind == "index feature":  # the paper's trap: node indices fed to the encoder
        m.encoder.embed.register_forward_hook(
            lambda mod, inp, out: out + 0.1 * torch.arange(len(out), dtype=out.dtype)[:, None])
    elif kind == "coordinate leak":  # a raw coordinate in the node scalars
        m.encoder.register_forward_hook(lambda mod, inp, out: out + 0.1 * inp[0][:, :1])
    elif kind == "transposed rotation":
        m.rotation.register_forward_hook(lambda mod, inp, out: (out[0].transpose(1, 2), *out[1:]))
    elif kind == "offset translation":
        real = ae.centroid
        monkeypatch.setattr(ae, "centroid", lambda x, layout: real(x, layout) + x.new_tensor([1.0, 0.0, 0.0]))
    elif kind == "transposed permutation":  # the paper's other trap
        order = ae.canonical_order

        def transposed(*a, **k):
            o, t = order(*a, **k)
            return torch.argsort(o, dim=1), t

        monkeypatch.setattr(ae, "canonical_order", transposed)
    return m


@pytest.mark.parametrize("kind,fails", [
    ("index feature", "z_relative"),
    ("coordinate leak", "z_relative"),
    ("transposed rotation", "rotation"),
    ("offset translation", "translation"),
    ("transposed permutation", "canonical"),
])
def test_checker_catches_broken_model(molecules, monkeypatch, kind, fails):
    m = broken(kind, monkeypatch)
    batch = collate(molecules, m.config.elements, dtype=torch.float64)
    errors = symmetry_errors(m, batch, GroupElement.random(batch, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(AssertionError):
        assert_contract(errors, torch.float64)
    assert errors[fails] > 1e-6, errors


def test_mirror_check_catches_an_e3_invariant_embedding(chiral):
    """Make every odd-parity invariant parity-blind (|.|): then the mirror image gets the same z."""
    m = model(torch.float64)
    c = m.config
    odd = list(range(c.scalars, c.scalars + c.pseudoscalars))
    quad = m.invariants.dim - m.invariants.scalar_dims
    odd += list(range(m.invariants.scalar_dims + quad // 2, m.invariants.dim))  # the 0o half of the products
    m.invariants.register_forward_hook(lambda mod, inp, out: torch.cat(
        [out[:, i : i + 1].abs() if i in odd else out[:, i : i + 1] for i in range(out.shape[1])], dim=1))
    mirrored = type(chiral)(chiral.numbers, chiral.positions * np.array([-1.0, 1.0, 1.0]), "mirror", "", 0)
    z = m.encode(collate([chiral, mirrored], m.config.elements, dtype=torch.float64))["z"]
    assert (z[0] - z[1]).abs().max() < 1e-8


def test_batched_check_catches_pooling_across_structures(molecules, monkeypatch):
    monkeypatch.setattr(Layout, "pool", lambda self, x: x.sum(0, keepdim=True).expand(self.n_structures, *x.shape[1:]))
    for design in DESIGNS:
        with pytest.raises(AssertionError):
            assert_batched_equals_one_by_one(molecules, torch.float64, design)


@pytest.mark.parametrize("design", [*DESIGNS, "hydrogens"])
def test_symmetric_molecules_are_flagged_and_still_reach_one_canonical_form(design):
    """Symmetric molecules of ase's g2 set: an equivariant map cannot pick a frame for them. The
    frame is flagged degenerate, anchor atoms stand in, z stays exactly invariant, and every copy
    reaches the same canonical form (to the 1e-6 Å to which g2's geometries are symmetric)."""
    from ase.collections import g2

    from groupae_cli.io import Structure

    symmetric = ["C6H6", "CH4", "CF4", "C2H2", "CO2", "C2H6", "C2H4", "NH3", "H2O", "SiH4"]
    structures = [Structure(g2[n].numbers, g2[n].positions, n, "g2", 0) for n in symmetric + ["CH3CH2OH"]]
    torch.manual_seed(0)
    changes = {**CANONICAL, "hydrogen_order": "parent"} if design == "hydrogens" else DESIGNS[design]
    m = GroupAE(preset("tiny", elements=(1, 6, 7, 8, 9, 14), **changes)).double().eval()
    batch = collate(structures, m.config.elements, dtype=torch.float64)
    assert m.encode(batch)["frame_degenerate"].tolist() == [True] * len(symmetric) + [False]
    for seed in range(5):
        g = GroupElement.random(batch, generator=torch.Generator().manual_seed(seed))
        errors = symmetry_errors(m, batch, g)
        assert errors["z_relative"] < 1e-10 and errors["translation"] < 1e-10
        a, b = m.encode(batch), m.encode(g.apply(batch))
        canonical = (m.canonical_form(g.apply(batch), b) - m.canonical_form(batch, a)).abs().amax(dim=(1, 2))
        assert (canonical < 1e-5).all(), canonical
        det = torch.linalg.det(b["rotation"])
        torch.testing.assert_close(det, torch.ones_like(det))


@pytest.mark.parametrize("graph", ["knn", "radius"])
def test_point_clouds_through_the_same_model(graph):
    """Untyped PLY point clouds (a chiral helix, a torus) with a tie-safe kNN or a radius graph."""
    clouds = [split(read_structures(__import__("conftest").SAMPLE / "point_clouds" / f"{n}.ply"))[0][0]
              for n in ("helix", "torus")]
    torch.manual_seed(0)
    m = GroupAE(preset("tiny").replace(elements=(0,), graph=graph, knn=6, cutoff=1.0)).double().eval()
    batch = collate(clouds, (0,), dtype=torch.float64)
    errors = symmetry_errors(m, batch, GroupElement.random(batch, generator=torch.Generator().manual_seed(3)))
    # the evenly sampled helix has an exact two-fold axis: its frame is flagged; the torus's is not
    assert m.encode(batch)["frame_degenerate"].tolist() == [True, False]
    assert errors["z_relative"] < 1e-10 and errors["rotation"] < 1e-9 and errors["canonical"] < 1e-8
    helix = clouds[0]
    mirrored = type(helix)(helix.numbers, helix.positions * np.array([-1.0, 1.0, 1.0]), "mirror", "", 0)
    z = m.encode(collate([helix, mirrored], (0,), dtype=torch.float64))["z"]
    assert (z[0] - z[1]).abs().max() > 1e-6  # a right- and a left-handed helix differ


@pytest.mark.parametrize("tie,stable", [(None, True), (0.05, False)])
def test_tetris_anchor_frames_hold_under_noise(tie, stable):
    """The tetris preset's anchor frames under the bench's noise (0.01): every noisy copy of a
    piece reaches the noise-free piece's canonical form (up to the piece's symmetry). With the old
    candidate cut (0.05) noise moves the chiral pieces' second anchor (0.913 of the first) in and
    out of the candidates, and some copies land in another pose: this fails there."""
    from itertools import permutations

    from groupae_cli.models.heads import anchor_frames

    tie = preset("tetris").anchor_tie if tie is None else tie
    pieces, _ = split(read_structures(__import__("conftest").SAMPLE / "tetris.xyz"))
    copies = 256
    clean = torch.stack([torch.as_tensor(p.positions, dtype=torch.float64) for p in pieces])
    clean = clean - clean.mean(1, keepdim=True)
    noisy = clean.repeat_interleave(copies, 0)
    noisy = noisy + 0.01 * torch.randn(noisy.shape, generator=torch.Generator().manual_seed(0), dtype=noisy.dtype)
    noisy = noisy - noisy.mean(1, keepdim=True)
    mask = torch.ones(noisy.shape[:2], dtype=torch.bool)
    forms = noisy @ anchor_frames(noisy, mask, None, tie)
    reference = (clean @ anchor_frames(clean, mask[: len(clean)], None, tie)).repeat_interleave(copies, 0)
    # the smallest deviation over renumberings: tied anchors are the piece's symmetric images
    deviation = torch.stack([(forms[:, list(p)] - reference).abs().amax(dim=(1, 2))
                             for p in permutations(range(4))]).amin(0)
    off = deviation > 0.1
    assert not off.any() if stable else off.any(), {p.name: int(o.sum()) for p, o in zip(pieces, off.view(len(pieces), -1))}


def embedding_inputs(m, molecules):
    """(batch, encode's output, node features, invariants) of the molecules in float64: what the
    embedding head is called with, to call it again with other frames or orders."""
    batch = collate(molecules, m.config.elements, dtype=torch.float64)
    out = m.encode(batch)
    edges = build_edges(batch["positions"], out["layout"], m.config.graph, m.config.cutoff, m.config.knn)
    h = m.encoder(batch["positions"], batch["types"], *edges)
    return batch, out, h, m.invariants(h)


def test_identity_part_of_z_ignores_the_frame(molecules):
    """With embedding_identity k, the first k entries of z see only frame-free features: another
    frame (and so other canonical coordinates) changes the rest of z, never them."""
    m = shared(torch.float64, **CANONICAL)
    batch, out, h, inv = embedding_inputs(m, molecules)
    layout = out["layout"]
    other = GroupElement.random(batch, generator=torch.Generator().manual_seed(4)).rotation  # a wrong frame
    canonical = torch.einsum("ai,aij->aj", batch["positions"] - out["translation"][batch["batch"]], other[batch["batch"]])
    z = m.embedding(inv, h, canonical, other, batch["types"], layout)
    k = CANONICAL["embedding_identity"]
    torch.testing.assert_close(z[:, :k], out["z"][:, :k], rtol=0, atol=1e-12)
    assert (z[:, k:] - out["z"][:, k:]).abs().max() > 1e-6


def test_slot_codes_tie_each_token_to_its_canonical_slot(molecules):
    """With pool_slot_codes, z reads which slot each atom holds: the same atoms in the same frame
    but another order give another z (the slot codes do reach z), while the identity block, which
    sees no tokens, stays."""
    m = slot_model()
    batch, out, h, inv = embedding_inputs(m, molecules)
    layout = out["layout"]
    flat = layout.to_flat(out["canonical"])
    again = m.embedding(inv, h, flat, out["rotation"], batch["types"], layout, order=out["order"])
    torch.testing.assert_close(again, out["z"], rtol=0, atol=1e-12)
    # reverse the order within the real slots: every element block is reversed and moved, so the
    # first slot of each structure holds another atom
    n = layout.n_atoms
    slots = torch.arange(layout.n_max)
    reversed_slots = torch.where(slots[None] < n[:, None], n[:, None] - 1 - slots[None], slots[None])
    other = m.embedding(inv, h, flat, out["rotation"], batch["types"], layout,
                        order=out["order"].gather(1, reversed_slots))
    k = SLOTS["embedding_identity"]
    torch.testing.assert_close(other[:, :k], out["z"][:, :k], rtol=0, atol=1e-12)
    assert ((other[:, k:] - out["z"][:, k:]).abs().amax(1) > 1e-6).all()


def test_a_decoder_told_the_composition_decodes_those_elements(molecules):
    """With decoder_composition each slot's element logits are masked to the element it is told,
    so even an untrained model's decoded elements are the input's (an unmasked head guesses)."""
    for composition in (True, False):
        m = shared(torch.float32, decoder_composition=composition)
        batch = collate(molecules, m.config.elements, dtype=torch.float32)
        with torch.no_grad():
            got = m(batch)["reconstruction_logits"].argmax(-1)
        assert (got == batch["types"]).all() == composition, (got == batch["types"]).float().mean()


def test_hydrogens_can_follow_their_parents_in_the_canonical_order(molecules):
    """hydrogen_order "parent": every hydrogen's slot comes after the slots of the hydrogens of
    earlier parents (parents in their own canonical order), and the contract still holds."""
    m = shared(torch.float64, hydrogen_order="parent", **CANONICAL)
    batch = collate(molecules, m.config.elements, dtype=torch.float64)
    out = m.encode(batch)
    layout, hydrogen = out["layout"], m.config.elements.index(1)
    types, x = layout.to_dense(batch["types"]), layout.to_dense(batch["positions"])
    checked = 0
    for b in range(layout.n_structures):
        order = out["order"][b, : layout.n_atoms[b]]
        slot = {int(i): k for k, i in enumerate(order)}
        heavy = [int(i) for i in order if types[b, i] != hydrogen]
        hydrogens = [int(i) for i in order if types[b, i] == hydrogen]
        if not heavy or not hydrogens:
            continue
        parents = [heavy[int(torch.cdist(x[b, i][None], x[b, heavy]).argmin())] for i in hydrogens]
        assert [slot[p] for p in parents] == sorted(slot[p] for p in parents)
        checked += 1
    assert checked >= len(molecules) // 2
    for seed in range(2):
        errors = symmetry_errors(m, batch, GroupElement.random(batch, generator=torch.Generator().manual_seed(seed)))
        assert_contract(errors, torch.float64)
    assert (m.encode(batch)["order"] != shared(torch.float64, **CANONICAL).encode(batch)["order"]).any()


def test_a_bridging_hydrogen_gets_one_parent_whatever_the_numbering():
    """Diborane's bridging hydrogens are equally near both borons: the parent is the boron in the
    earlier slot, so every renumbered, moved copy reaches the same canonical form."""
    from groupae_cli.io import Structure

    b, h, t = 0.885, 0.99, (1.47, 1.04)
    positions = np.array([[b, 0, 0], [-b, 0, 0], [0, h, 0], [0, -h, 0], [t[0], 0, t[1]], [t[0], 0, -t[1]],
                          [-t[0], 0, t[1]], [-t[0], 0, -t[1]]])
    diborane = Structure(np.array([5, 5, 1, 1, 1, 1, 1, 1]), positions, "B2H6", "", 0)
    m = shared(torch.float64, hydrogen_order="parent", **CANONICAL)
    batch = collate([diborane], m.config.elements, dtype=torch.float64)
    reference = m.canonical_form(batch)
    for seed in range(8):
        moved = GroupElement.random(batch, generator=torch.Generator().manual_seed(seed)).apply(batch)
        assert (m.canonical_form(moved) - reference).abs().max() < 1e-6, seed


def test_the_refinement_moves_only_the_canonical_part_of_z(molecules):
    """refine_steps: z's frame-free block is the embedding head's; the canonical part moves by what
    the refiner adds, and by nothing while the refiner is at its zero start."""
    m = model(torch.float64, **REFINED)
    batch = collate(molecules, m.config.elements, dtype=torch.float64)
    refined = m.encode(batch)["z"]
    for refiner in m.refiners:
        torch.nn.init.zeros_(refiner.net[-1].weight)
    plain = m.encode(batch)["z"]
    identity = m.config.embedding_identity
    torch.testing.assert_close(refined[:, :identity], plain[:, :identity], rtol=0, atol=0)
    assert (refined[:, identity:] - plain[:, identity:]).abs().amin(1).gt(0).all()
    with pytest.raises(ValueError, match="refine_steps needs pooling: canonical"):
        preset("tiny", refine_steps=1)


def test_z_fitted_to_the_structure_keeps_the_contract(molecules, monkeypatch, design="canonical"):
    """fit_steps: z fitted through the decoder to the structure in its canonical pose and order is
    still exactly invariant, the reconstruction equivariant (the target is invariant), and a batch
    fits as its structures one by one (each has its own steps), in chunks sorted by size, small
    structures by Levenberg-Marquardt (a few at a time: FIT_LM_CHUNK_CPU here) and large ones by Adam."""
    from groupae_cli.models import autoencoder

    monkeypatch.setattr(autoencoder, "FIT_CHUNK", 5)  # several chunks of 12 molecules, then back in order
    monkeypatch.setattr(autoencoder, "FIT_LM_CHUNK_CPU", 2)  # a chunk's small structures fitted 2 at a time
    sizes = sorted(len(s) for s in molecules)
    chunks = [sizes[i:i + 5] for i in range(0, len(sizes), 5)]
    assert any(c[0] <= autoencoder.FIT_LM_ATOMS < c[-1] for c in chunks)  # a chunk fitted both ways
    m = shared(torch.float64, **DESIGNS[design])
    batch = collate(molecules, m.config.elements, dtype=torch.float64)
    plain = m(batch)
    m.fit_steps = 30  # 3 Levenberg-Marquardt steps: one may be refused (the error rose) and undone
    try:
        fitted = m(batch)
        errors = symmetry_errors(m, batch, GroupElement.random(batch, generator=torch.Generator().manual_seed(0)))
    finally:
        m.fit_steps = 0
    assert (fitted["z"] - plain["z"]).abs().amax(1).gt(1e-3).all()  # every z moved
    error = ((fitted["reconstruction"] - batch["positions"]) ** 2).sum(-1)
    assert error.sum() < ((plain["reconstruction"] - batch["positions"]) ** 2).sum(-1).sum()
    assert_contract(errors, torch.float64)
    assert_batched_equals_one_by_one(molecules[::2], torch.float64, design, fit_steps=10)


def test_a_fit_that_holds_the_frame_free_part_moves_only_the_rest_and_keeps_the_contract(molecules, monkeypatch):
    """fit_hold_identity: the fit leaves z[:, :embedding_identity] as the encoder made it, to the
    bit, in both of its ways (Levenberg-Marquardt for small structures, Adam for large ones); the rest
    of z moves and draws the structures closer; z stays exactly invariant, the reconstruction
    equivariant, and a batch fits as its structures one by one."""
    from groupae_cli.models import autoencoder

    monkeypatch.setattr(autoencoder, "FIT_CHUNK", 5)
    sizes = sorted(len(s) for s in molecules)
    assert sizes[0] <= autoencoder.FIT_LM_ATOMS < sizes[-1]  # both ways
    m = shared(torch.float64, **DESIGNS["canonical"])
    identity = m.config.embedding_identity
    batch = collate(molecules, m.config.elements, dtype=torch.float64)
    plain = m(batch)
    m.fit_steps, m.fit_hold_identity = 30, True
    try:
        fitted = m(batch)
        errors = symmetry_errors(m, batch, GroupElement.random(batch, generator=torch.Generator().manual_seed(1)))
    finally:
        m.fit_steps, m.fit_hold_identity = 0, False
    torch.testing.assert_close(fitted["z"][:, :identity], plain["z"][:, :identity], rtol=0, atol=0)
    assert (fitted["z"][:, identity:] - plain["z"][:, identity:]).abs().amax(1).gt(1e-3).all()
    error = ((fitted["reconstruction"] - batch["positions"]) ** 2).sum(-1)
    assert error.sum() < ((plain["reconstruction"] - batch["positions"]) ** 2).sum(-1).sum()
    assert_contract(errors, torch.float64)
    assert_batched_equals_one_by_one(molecules[::2], torch.float64, "canonical", fit_steps=10, hold=True)


def test_the_fit_relays_the_structure_onto_the_drawing(molecules):
    """During the fit the structure in its canonical pose and order is laid again onto the
    decoder's drawing: a renumbering within elements and a proper rigid motion, which recover a
    drawing that is the structure renumbered and moved exactly; the corrections compose, and the
    group element the fit returns carries the input onto the last target."""
    from scipy.spatial.transform import Rotation

    from groupae_cli.models.autoencoder import _ordered, _relay, _slot_types

    m = shared(torch.float64, **DESIGNS["canonical"])
    batch = collate(molecules[:4], m.config.elements, dtype=torch.float64)
    with torch.no_grad():
        out = m.encode(batch)
    layout = out["layout"]
    types, start = _slot_types(batch["types"], out["order"], layout), _ordered(out["canonical"], out["order"], layout)
    rng = np.random.default_rng(0)
    b, n = types.shape
    identity = (torch.eye(3, dtype=torch.float64).repeat(b, 1, 1), torch.zeros(b, 3, dtype=torch.float64),
                torch.arange(n).repeat(b, 1))
    target = start
    for _ in range(2):  # twice: the second relay starts from the first one's corrections
        # a drawing that is the target renumbered within elements, turned and shifted a little
        drawing = target.clone()
        for k in range(b):
            for e in types[k, : layout.n_atoms[k]].unique():
                where = torch.nonzero(types[k, : layout.n_atoms[k]] == e).flatten()
                drawing[k, where] = target[k, where[torch.as_tensor(rng.permutation(len(where)))]]
            # a local search, like the fit's small steps: a turn of 0.2 rad, a shift of 0.1 A
            axis = rng.normal(size=3)
            turn = torch.as_tensor(Rotation.from_rotvec(0.2 * axis / np.linalg.norm(axis)).as_matrix())
            drawing[k, : layout.n_atoms[k]] = drawing[k, : layout.n_atoms[k]] @ turn.T + torch.as_tensor(0.1 * rng.normal(size=3))
        drawing = drawing * layout.mask[:, :, None]
        target, *corrections = _relay(drawing, target, types, layout.n_atoms, *identity)
        np.testing.assert_allclose(target, drawing, atol=1e-10)
        turn, shift, slots = corrections
        assert torch.allclose(torch.linalg.det(turn), torch.ones(b, dtype=torch.float64))  # never a mirror
        assert (types.gather(1, slots) == types).all()  # each slot keeps its element
        composed = (start.gather(1, slots[:, :, None].expand(-1, -1, 3)) - shift[:, None]) @ turn
        np.testing.assert_allclose(composed * layout.mask[:, :, None], target, atol=1e-10)
        identity = corrections

    m.fit_steps = 10
    try:
        with torch.no_grad():
            fitted = m.encode(batch)
    finally:
        m.fit_steps = 0
    assert (fitted["order"] != out["order"]).any()  # the decoder draws some atoms in another order
    assert not torch.equal(fitted["rotation"], out["rotation"])
    positions = layout.to_dense(batch["positions"]) - fitted["translation"][:, None]
    np.testing.assert_allclose(positions @ fitted["rotation"], fitted["canonical"], atol=1e-12)
