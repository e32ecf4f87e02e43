"""The embed HDF5 writer: schema, ragged data, failures, provenance, and no half-written file."""

import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from conftest import split
from typer.testing import CliRunner

from groupae_cli.app import app
from groupae_cli.io import read_structures
from groupae_cli.io.hdf5 import embedding_writer

DIM = 8


def batch(structures, rng):
    """A batch in the embed schema built from real records (the numbers stand in for a model's)."""
    n = len(structures)
    return (
        {
            "embedding": rng.normal(size=(n, DIM)),
            "rotation": np.stack([np.linalg.qr(rng.normal(size=(3, 3)))[0] for _ in structures]),
            "translation": np.stack([s.positions.mean(0) for s in structures]),
            "n_atoms": [len(s) for s in structures],
            "name": [s.name for s in structures],
            "source_file": [0] * n,
            "source_index": [s.index for s in structures],
            "degenerate": [False] * n,
        },
        {
            "permutation": [rng.permutation(len(s)) for s in structures],
            "atomic_numbers": [s.numbers for s in structures],
        },
    )


def test_written_file_holds_every_batch(sample, tmp_path, rng):
    structures, _ = split(read_structures(sample / "molecules.sdf"))
    out = tmp_path / "emb.h5"
    batches = [batch(structures[i : i + 100], rng) for i in range(0, len(structures), 100)]
    with embedding_writer(out, DIM, {"model": "test", "input_files": ["molecules.sdf"]}) as writer:
        for records, atoms in batches:
            writer.append(records, atoms)
        writer.fail(0, 7, "NCI_x", "unknown element symbol 'Xx'")
        writer.fail(0, None, "", "empty file: no records")
    assert [p.name for p in tmp_path.iterdir()] == ["emb.h5"]
    with h5py.File(out) as f:
        n = len(structures)
        assert f.attrs["complete"] and f.attrs["n_records"] == n and f.attrs["embedding_dim"] == DIM
        assert f.attrs["group"] == "SE(3) x S_n" and f.attrs["model"] == "test" and "created" in f.attrs
        assert f["embedding"].shape == (n, DIM) and f["embedding"].dtype == np.float32
        assert f["rotation"].shape == (n, 3, 3) and f["translation"].shape == (n, 3)
        assert f["embedding"].compression == "gzip" and f["embedding"].chunks is not None
        offsets = f["offsets"][:]
        assert offsets[0] == 0 and len(offsets) == n + 1
        np.testing.assert_array_equal(np.diff(offsets), [len(s) for s in structures])
        perms = np.concatenate([p for _, atoms in batches for p in atoms["permutation"]])
        np.testing.assert_array_equal(f["permutation"][:], perms)
        for i in (0, 137, n - 1):
            np.testing.assert_array_equal(f["atomic_numbers"][offsets[i] : offsets[i + 1]], structures[i].numbers)
            assert f["name"][i].decode() == structures[i].name
        np.testing.assert_allclose(f["embedding"][:100], batches[0][0]["embedding"].astype(np.float32))
        failed = f["failed"][:]
        assert failed["source_index"].tolist() == [7, -1]
        assert failed["reason"][0].decode() == "unknown element symbol 'Xx'"


def test_interrupted_write_leaves_no_file_under_the_final_name(sample, tmp_path, rng):
    structures, _ = split(read_structures(sample / "molecules.sdf"))
    out = tmp_path / "emb.h5"
    with pytest.raises(KeyboardInterrupt), embedding_writer(out, DIM) as writer:
        writer.append(*batch(structures[:50], rng))
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_killed_process_leaves_no_file_under_the_final_name(tmp_path):
    out = tmp_path / "emb.h5"
    code = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from groupae_cli.io.hdf5 import embedding_writer
        w = embedding_writer({str(out)!r}, 4)
        w.append({{"embedding": np.zeros((2, 4)), "rotation": np.zeros((2, 3, 3)), "translation": np.zeros((2, 3)),
                  "n_atoms": [2, 2], "name": ["a", "b"], "source_file": [0, 0], "source_index": [0, 1],
                  "degenerate": [False, False]}},
                 {{"permutation": [np.arange(2)] * 2, "atomic_numbers": [np.ones(2)] * 2}})
        w._file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", code], check=False)
    assert not out.exists()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".emb.h5.partial-")


def test_batch_not_matching_the_schema_is_refused(tmp_path, rng, sample):
    structures, _ = split(read_structures(sample / "tetris.xyz"))
    records, atoms = batch(structures, rng)
    del records["degenerate"]
    with pytest.raises(ValueError, match="do not match the schema"), embedding_writer(tmp_path / "x.h5", DIM) as writer:
        writer.append(records, atoms)
    assert list(tmp_path.iterdir()) == []


def test_info_describes_the_file(sample, tmp_path, rng):
    structures, _ = split(read_structures(sample / "tetris.xyz"))
    out = tmp_path / "emb.h5"
    with embedding_writer(out, DIM, {"model": "test"}) as writer:
        writer.append(*batch(structures, rng))
    result = CliRunner().invoke(app, ["info", str(out)])
    assert result.exit_code == 0
    assert "/embedding" in result.stdout and "(8, 8)" in result.stdout and "@complete: True" in result.stdout
    as_json = CliRunner().invoke(app, ["info", str(out), "--json"])
    import json

    described = json.loads(as_json.stdout)
    assert described["datasets"]["permutation"]["shape"] == [32]
    assert described["attrs"]["n_records"] == 8
