"""Readers round-trip with their writers, agree across formats, and stream."""

import gzip
import io
import shutil

import numpy as np
import pytest
from conftest import same_geometry, split
from rdkit import Chem

from groupae_cli.io import POINT_TYPE, read_structures, write_structures
from groupae_cli.io.formats import sniff
from groupae_cli.io.ply import write_ply
from groupae_cli.io.xyz import write_xyz


def assert_same(a, b, atol):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.name == y.name
        np.testing.assert_array_equal(x.numbers, y.numbers)
        np.testing.assert_allclose(x.positions, y.positions, atol=atol, rtol=0)


def test_sdf_matches_rdkit_and_keeps_hydrogens_bonds_charges(sample):
    path = sample / "molecules.sdf"
    structures, failures = split(read_structures(path))
    mols = list(Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False))
    assert not failures and len(structures) == len(mols) > 250
    for s, m in zip(structures, mols):
        assert s.name == m.GetProp("_Name")
        assert s.numbers.tolist() == [a.GetAtomicNum() for a in m.GetAtoms()]
        np.testing.assert_array_equal(s.positions, m.GetConformer().GetPositions())
        assert len(s.bonds) == m.GetNumBonds()
        assert s.charges.tolist() == [a.GetFormalCharge() for a in m.GetAtoms()]
    assert all((s.numbers == 1).any() for s in structures)


@pytest.mark.parametrize("filename", ["molecules.sdf", "xyz/molecules_10.extxyz", "point_clouds/cube.ply", "tetris.xyz"])
def test_geometry_only_reads_the_same_structures_without_the_rest(sample, filename):
    assert same_geometry(sample / filename) >= 1


def test_geometry_only_fails_the_same_records(sample, tmp_path):
    blocks = (sample / "molecules.sdf").read_text().split("$$$$\n")[:4]
    atom = blocks[1].splitlines()[4]  # its first atom line, repeated: two atoms in one place
    broken = blocks[1].replace(atom, atom + "\n" + atom, 1).replace(blocks[1].splitlines()[3],
                                                                     _one_more_atom(blocks[1].splitlines()[3]), 1)
    path = tmp_path / "broken.sdf"
    path.write_text(blocks[0] + "$$$$\n" + broken + "$$$$\nnot a record\n$$$$\n" + blocks[2] + "$$$$\n")
    full = list(read_structures(path))
    assert [type(x).__name__ for x in full] == ["Structure", "Failure", "Failure", "Structure"], full
    assert "coincide" in full[1].reason
    assert same_geometry(path) == 2


def test_geometry_only_reads_pdb_models_the_same(sample, tmp_path):
    mols = Chem.SDMolSupplier(str(sample / "molecules.sdf"), removeHs=False)
    path = tmp_path / "two_models.pdb"
    path.write_text("".join(f"MODEL {k + 1}\n" + Chem.MolToPDBBlock(mols[k]).replace("END\n", "") + "ENDMDL\n"
                            for k in range(2)) + "END\n")
    assert same_geometry(path) == 2


def _one_more_atom(counts: str) -> str:
    """A V2000 counts line with one atom more."""
    return f"{int(counts[:3]) + 1:3d}" + counts[3:]


def test_sdf_round_trip(sample, tmp_path):
    original, _ = split(read_structures(sample / "molecules.sdf"))
    assert write_structures(original, tmp_path / "out.sdf") == len(original)
    again, failures = split(read_structures(tmp_path / "out.sdf"))
    assert not failures
    assert_same(original, again, atol=1e-4)  # the MDL format keeps 4 decimals
    for x, y in zip(original, again):
        np.testing.assert_array_equal(x.bonds, y.bonds)
        np.testing.assert_array_equal(x.bond_orders, y.bond_orders)
        np.testing.assert_array_equal(x.charges, y.charges)


def test_gzipped_sdf_reads_like_plain(sample, tmp_path):
    gz = tmp_path / "molecules.sdf.gz"
    with open(sample / "molecules.sdf", "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain, _ = split(read_structures(sample / "molecules.sdf"))
    zipped, failures = split(read_structures(gz))
    assert not failures
    assert_same(plain, zipped, atol=0)


@pytest.mark.parametrize("extended", [True, False])
def test_xyz_round_trip(sample, tmp_path, extended):
    original, failures = split(read_structures(sample / "xyz" / "molecules_10.extxyz"))
    assert len(original) == 10 and not failures
    out = tmp_path / "out.xyz"
    write_xyz(original, out, extended=extended)
    again, failures = split(read_structures(out))
    assert not failures
    assert_same(original, again, atol=1e-6)


def test_xyz_and_extxyz_equal_the_sdf_records(sample):
    sdf, _ = split(read_structures(sample / "molecules.sdf"))
    for name in ("molecules_10.xyz", "molecules_10.extxyz"):
        xyz, failures = split(read_structures(sample / "xyz" / name))
        assert not failures
        assert_same(sdf[:10], xyz, atol=1e-6)


def test_one_molecule_in_sdf_xyz_ply_gives_same_positions_and_elements(sample):
    records = [split(read_structures(sample / "same" / f"molecule.{ext}"))[0] for ext in ("sdf", "xyz", "ply")]
    assert all(len(r) == 1 for r in records)
    sdf, xyz, ply = (r[0] for r in records)
    assert len(sdf) > 10 and (sdf.numbers == 1).any()
    for other in (xyz, ply):
        np.testing.assert_array_equal(sdf.numbers, other.numbers)
        np.testing.assert_allclose(sdf.positions, other.positions, atol=1e-6, rtol=0)
    assert sdf.has_bonds and not xyz.has_bonds and not ply.has_bonds


@pytest.mark.parametrize("name", ["sphere", "torus", "cube", "helix"])
@pytest.mark.parametrize("text", [True, False])
def test_ply_round_trip(sample, tmp_path, name, text):
    (cloud,), failures = split(read_structures(sample / "point_clouds" / f"{name}.ply"))
    assert not failures and len(cloud) >= 300
    assert (cloud.numbers == POINT_TYPE).all()
    out = tmp_path / f"{name}.ply"
    write_ply(cloud, out, text=text)
    (again,), _ = split(read_structures(out))
    assert again.name == cloud.name
    np.testing.assert_array_equal(again.numbers, cloud.numbers)
    np.testing.assert_allclose(again.positions, cloud.positions, rtol=1e-12)
    assert again.feature_names == cloud.feature_names
    if cloud.features is not None:
        np.testing.assert_allclose(again.features, cloud.features, rtol=1e-12)


def test_ply_keeps_normals_as_features(sample):
    (cube,), _ = split(read_structures(sample / "point_clouds" / "cube.ply"))
    assert cube.feature_names == ("nx", "ny", "nz")
    np.testing.assert_allclose(np.linalg.norm(cube.features, axis=1), 1.0, atol=1e-6)


def test_tetris_pieces_are_untyped_four_point_records(sample):
    pieces, failures = split(read_structures(sample / "tetris.xyz"))
    assert not failures
    assert [p.name for p in pieces][:2] == ["chiral_1", "chiral_2"] and len(pieces) == 8
    assert all(len(p) == 4 and (p.numbers == POINT_TYPE).all() for p in pieces)


@pytest.mark.parametrize("fmt,filename", [("sdf", "molecules.sdf"), ("xyz", "xyz/molecules_10.xyz")])
def test_readers_stream(sample, tmp_path, monkeypatch, fmt, filename):
    """The first record arrives after reading a small part of a large file."""
    import groupae_cli.io as gio

    chunk = (sample / filename).read_bytes()
    big = tmp_path / f"big.{fmt}"
    big.write_bytes(chunk * (4_000_000 // len(chunk) + 1))
    opened = []

    def spying_open(path):
        opened.append(gio.formats.open_binary(path))
        return opened[-1]

    monkeypatch.setattr(gio, "open_binary", spying_open)
    records = read_structures(big)
    first = next(records)
    consumed = opened[0].raw.tell()
    records.close()
    assert first.index == 0
    assert consumed < big.stat().st_size / 20


@pytest.mark.parametrize(
    "filename,fmt", [("molecules.sdf", "sdf"), ("xyz/molecules_10.xyz", "xyz"), ("point_clouds/cube.ply", "ply")]
)
def test_sniffing_tells_formats_apart(sample, filename, fmt):
    assert sniff((sample / filename).read_bytes()[:4096]) == fmt


def test_write_structures_to_stdout_is_xyz(sample, capsys):
    structures, _ = split(read_structures(sample / "tetris.xyz"))
    write_structures(structures, "-")
    out = capsys.readouterr().out
    assert out.startswith("4\n") and out.count("\n") == 8 * 6
    again, _ = split(__import__("groupae_cli.io.xyz", fromlist=["read_xyz"]).read_xyz(io.BytesIO(out.encode()), "-"))
    assert_same(structures, again, atol=1e-7)


def test_a_write_that_fails_half_way_leaves_no_file(sample, tmp_path):
    structures, _ = split(read_structures(sample / "xyz" / "molecules_10.xyz"))

    def breaking():
        yield from structures[:5]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_structures(breaking(), tmp_path / "out.sdf")
    assert list(tmp_path.iterdir()) == []


def test_mol_blocks_concatenated_without_separators_are_each_a_record(sample, tmp_path):
    """20 MOL blocks joined without `$$$$` (RDKit reads the first and warns) are 20 records, data
    items and blank titles included."""
    mols = [m for m in Chem.SDMolSupplier(str(sample / "molecules.sdf"), removeHs=False)][:20]
    blocks = []
    for k, mol in enumerate(mols):
        if k == 3:
            mol.SetProp("_Name", "")  # a blank title line
        block = Chem.MolToMolBlock(mol)
        blocks.append(block + ("> <note>\nkept with its molecule\n\n" if k == 5 else ""))
    path = tmp_path / "joined.mol"
    path.write_text("".join(blocks))
    structures, failures = split(read_structures(path))
    assert not failures and len(structures) == 20
    assert [s.name for s in structures] == [m.GetProp("_Name") or f"joined:{k}" for k, m in enumerate(mols)]
    for s, mol in zip(structures, mols):
        np.testing.assert_allclose(s.positions, mol.GetConformer().GetPositions())
        assert s.numbers.tolist() == [a.GetAtomicNum() for a in mol.GetAtoms()]


@pytest.mark.parametrize("chunk", [7, 300, 1 << 20])
def test_sdf_records_cut_in_blocks_equal_the_line_by_line_cut(sample, monkeypatch, chunk):
    """The fast cut at `$$$$` (in blocks of `chunk` bytes) gives what the line-by-line reading gives,
    whatever falls on a block's edge: CRLF, an empty record, binary bytes, invalid UTF-8, MOL blocks
    concatenated without `$$$$`, a last record without `$$$$` or newline, a record over the limit,
    and a stretch without `$$$$` long enough to switch to line by line."""
    import io

    from groupae_cli.io import sdf
    from groupae_cli.io.formats import MAX_RECORD_BYTES, bounded_lines

    blocks = (sample / "molecules.sdf").read_bytes().split(b"$$$$\n")
    mol = blocks[0]  # one MOL block with its SD data
    bare = mol[: mol.index(b"M  END") + 7]  # the MOL block alone, up to its M  END line
    cases = {
        "sample": b"$$$$\n".join(blocks[:40]),
        "crlf": b"$$$$\n".join(blocks[:5]).replace(b"\n", b"\r\n"),
        "empty records and spaces": b"$$$$\n$$$$\n" + mol + b"$$$$\n  \n$$$$ \n" + mol + b"$$$$\n",
        "binary": mol + b"$$$$\n" + b"\x00\x01junk\n" * 5 + b"$$$$\n" + mol + b"$$$$\n",
        "invalid utf-8": mol + b"$$$$\n" + mol.replace(b"M  END", b"M  END \xff\xfe", 1) + b"$$$$\n" + mol,
        "concatenated MOL files": bare + bare + b"$$$$\n" + bare + bare + bare,
        "last record without newline": mol + b"$$$$\n" + mol.rstrip(b"\n"),
        "ends with $$$$ and no newline": mol + b"$$$$",
        "nothing": b"",
    }

    def line_by_line(data, limit=MAX_RECORD_BYTES):
        return list(sdf._line_blocks(bounded_lines(io.BytesIO(data)), limit))

    monkeypatch.setattr(sdf, "_CHUNK_BYTES", chunk)
    for name, data in cases.items():
        assert list(sdf._blocks(io.BytesIO(data))) == line_by_line(data), name
        assert list(sdf._blocks(io.BytesIO(data), limit=900)) == line_by_line(data, 900), name  # records over it
    monkeypatch.setattr(sdf, "_PENDING_BYTES", 2000)  # no `$$$$` for that long: that record goes line by line
    data = cases["concatenated MOL files"] * 3 + b"$$$$\n" + cases["sample"]
    assert list(sdf._blocks(io.BytesIO(data))) == line_by_line(data)
