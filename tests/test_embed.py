"""`groupae embed` end to end: file in, HDF5 out, on real molecules."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from conftest import split
from typer.testing import CliRunner

from groupae_cli.app import app
from groupae_cli.errors import Failure
from groupae_cli.io import Structure, read_structures, write_structures
from groupae_cli.models.symmetry import random_rotations

runner = CliRunner()


@pytest.fixture(scope="module")
def molecules():
    structures, _ = split(read_structures(__import__("conftest").SAMPLE / "molecules.sdf"))
    return structures[::30][:10]


def moved_copies(structure, count, rng):
    """Rotated, translated and renumbered copies, with the renumbering of each."""
    copies = []
    for k, rotation in enumerate(random_rotations(count, generator=torch.Generator().manual_seed(7)).numpy()):
        sigma = rng.permutation(len(structure))
        positions = (structure.positions @ rotation.T + rng.normal(scale=5.0, size=3))[sigma]
        copies.append((Structure(structure.numbers[sigma], positions, f"{structure.name}_copy{k}", "", k), sigma))
    return copies


def read(path):
    with h5py.File(path) as f:
        return {k: f[k][:] for k in f}, dict(f.attrs)


def test_embeddings_of_moved_copies_agree_through_the_whole_command(molecules, checkpoint, tmp_path, rng):
    original = molecules[3]
    copies = moved_copies(original, 4, rng)
    path = tmp_path / "copies.xyz"
    write_structures([original] + [c for c, _ in copies], path)
    out = tmp_path / "out.h5"
    result = runner.invoke(app, ["embed", str(path), "-o", str(out), "--model", str(checkpoint), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data, attrs = read(out)
    z = data["embedding"]
    assert z.shape == (5, 8) and attrs["complete"] and attrs["n_records"] == 5
    np.testing.assert_allclose(z[1:], np.repeat(z[:1], 4, axis=0), atol=1e-5 * np.abs(z).max(), rtol=0)
    offsets = data["offsets"]
    n = len(original)
    first = data["permutation"][offsets[0] : offsets[1]]
    for k, (copy, sigma) in enumerate(copies, start=1):
        order = data["permutation"][offsets[k] : offsets[k + 1]]
        # slot j holds copy atom order[j], which is original atom sigma[order[j]]
        same = sigma[order] == first  # float32 may swap atoms whose scores nearly tie
        assert same.mean() > 0.9
        rotation, translation = data["rotation"][k], data["translation"][k]
        canonical = (copy.positions[order] - translation) @ rotation
        reference = (original.positions[first] - data["translation"][0]) @ data["rotation"][0]
        assert np.abs(canonical - reference)[same].max() < 1e-3
    np.testing.assert_array_equal(data["atomic_numbers"][:n], original.numbers)


def test_failures_are_recorded_and_good_records_kept(molecules, checkpoint, tmp_path):
    mixed = tmp_path / "mixed.xyz"
    write_structures(molecules[:2], mixed)
    text = mixed.read_text()
    silicon = "3\nsilane-ish\nSi 0 0 0\nH 1.5 0 0\nH 0 1.5 0\n"
    mixed.write_text(text + silicon + "2\nbroken\nC 0 0 0\n")
    out = tmp_path / "out.h5"
    result = runner.invoke(app, ["embed", str(mixed), "-o", str(out), "--model", str(checkpoint), "--device", "cpu"])
    assert result.exit_code == 0
    assert "element Si unknown to the model" in result.stderr
    data, attrs = read(out)
    assert attrs["n_records"] == 2 and attrs["n_failed"] == 2
    assert data["source_index"].tolist() == [0, 1]
    failed = data["failed"]
    assert failed["source_index"].tolist() == [2, 3]
    assert failed["reason"][0].decode() == "element Si unknown to the model"
    strict = runner.invoke(app, ["embed", str(mixed), "-o", str(tmp_path / "s.h5"), "--model", str(checkpoint),
                                 "--device", "cpu", "--strict"])
    assert strict.exit_code == 1 and (tmp_path / "s.h5").is_file()


def test_shards_and_batch_sizes_give_the_same_embeddings(checkpoint, tmp_path):
    sample = __import__("conftest").SAMPLE / "xyz" / "molecules_10.xyz"
    whole, shard0, shard1 = tmp_path / "all.h5", tmp_path / "s0.h5", tmp_path / "s1.h5"
    base = ["--model", str(checkpoint), "--device", "cpu", "--quiet"]
    assert runner.invoke(app, ["embed", str(sample), "-o", str(whole), "--batch-size", "1", *base]).exit_code == 0
    assert runner.invoke(app, ["embed", str(sample), "-o", str(shard0), "--shard", "0/2", *base]).exit_code == 0
    assert runner.invoke(app, ["embed", str(sample), "-o", str(shard1), "--shard", "1/2", *base]).exit_code == 0
    full, _ = read(whole)
    parts = [read(p)[0] for p in (shard0, shard1)]
    assert parts[0]["source_index"].tolist() == [0, 2, 4, 6, 8]
    merged = np.empty_like(full["embedding"])
    for part in parts:
        merged[part["source_index"]] = part["embedding"]
    np.testing.assert_allclose(merged, full["embedding"], atol=1e-5, rtol=0)


def test_usage_errors(checkpoint, tmp_path):
    sample = str(__import__("conftest").SAMPLE / "tetris.xyz")
    for args, message in [
        (["embed", sample, "-o", str(tmp_path / "x.h5"), "--model", "nosuch"], "no such checkpoint file or shipped model"),
        (["embed", sample, "-o", str(tmp_path / "x.txt"), "--model", str(checkpoint)], "name it .h5"),
        (["embed", sample, "-o", str(tmp_path / "x.h5"), "--model", str(checkpoint), "--shard", "2/2"], "0 <= i < N"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.stderr, result.output
    assert not (tmp_path / "x.h5").exists()


def test_one_record_is_one_record(checkpoint, tmp_path):
    """The closing line counts in English: '1 record embedded', not '1 records'."""
    result = runner.invoke(app, ["embed", str(__import__("conftest").SAMPLE / "same" / "molecule.sdf"), "-o", str(tmp_path / "one.h5"),
                                 "--model", str(checkpoint), "--device", "cpu"])
    assert result.exit_code == 0 and "groupae: 1 record embedded into" in result.stderr, result.output


def test_a_model_shipped_for_float64_runs_in_float64(molecules, tmp_path, rng):
    """A canonical-frame model with inference_dtype float64 (as the default model is shipped): it
    loads in float64, `embed` builds its batches in float64, and moved copies of a molecule embed
    alike to float64 round-off, where float32 inference of the same weights is far less exact."""
    from groupae_cli.embed import encode_batch
    from groupae_cli.io.checkpoint import load_model, save_checkpoint
    from groupae_cli.models import GroupAE, preset

    torch.manual_seed(0)
    config = preset("tiny", pooling="canonical", embedding_dim=16, embedding_identity=8, embedding_composition=True,
                    decoder_memory=2, inference_dtype="float64")
    path = tmp_path / "canonical64.ckpt"
    save_checkpoint(path, GroupAE(config))
    model = load_model(path)
    assert model.dtype == torch.float64
    structures = [molecules[2]] + [c for c, _ in moved_copies(molecules[2], 3, rng)]
    z = encode_batch(model, structures, torch.device("cpu"))["embedding"]
    assert z.dtype == np.float64
    np.testing.assert_allclose(z[1:], np.repeat(z[:1], 3, axis=0), atol=1e-10 * np.abs(z).max(), rtol=0)
    z32 = encode_batch(load_model(path).float(), structures, torch.device("cpu"))["embedding"]
    assert z32.dtype == np.float32 and np.abs(z32 - z).max() > 1e-9 * np.abs(z).max()
    out = tmp_path / "out.h5"
    write_structures(structures, tmp_path / "copies.xyz")
    result = runner.invoke(app, ["embed", str(tmp_path / "copies.xyz"), "-o", str(out), "--model", str(path),
                                 "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["embedding"][:], z, atol=1e-6 * np.abs(z).max(), rtol=0)
        assert f.attrs["embedding_identity"] == 8  # the frame-free block: z[:, :8]


@pytest.mark.parametrize("offset", [1e4, 1e5])
def test_far_from_the_origin_a_molecule_embeds_as_at_the_origin(molecules, checkpoint, offset, tmp_path):
    """Positions are centred in float64 before the float32 model sees them: a copy 1e4-1e5 Å away
    gets the same z and canonical order, its translation is where it is, and it reconstructs there."""
    from groupae_cli.embed import encode_batch
    from groupae_cli.io.checkpoint import load_model
    from groupae_cli.reconstruct import reconstruct

    model = load_model(checkpoint)
    assert model.dtype == torch.float32
    near = molecules[4]
    far = Structure(near.numbers, near.positions + np.array([offset, -0.7 * offset, 0.3 * offset]), "far", "", 1)
    got = encode_batch(model, [near, far], torch.device("cpu"))
    z = got["embedding"]
    np.testing.assert_allclose(z[1], z[0], atol=1e-5 * np.abs(z).max(), rtol=0)
    np.testing.assert_array_equal(got["permutation"][1], got["permutation"][0])
    np.testing.assert_allclose(got["translation"][1] - got["translation"][0], far.positions[0] - near.positions[0],
                               rtol=1e-6)
    (a, b) = reconstruct(model, [near, far], torch.device("cpu"))
    assert abs(a.rmsd - b.rmsd) < 1e-3 * a.rmsd


def records(path):
    """An embed file's records, each a dict of its entries as `read_embeddings` gives them (the
    per-atom arrays cut per record), and its failures as (file, index, name)."""
    from dataclasses import fields

    from groupae_cli import read_embeddings

    table = read_embeddings(path)
    keys = [f.name for f in fields(table) if f.name not in ("failed", "attrs", "identity")]
    rows = [{key: getattr(table, key)[k] for key in keys} for k in range(len(table))]
    return rows, [(f["source"], f["index"], f["name"]) for f in table.failed]


def assert_same_records(got, want):
    """`records` rows of two runs: every entry bit for bit, but the floats, to round-off (runs that
    batch the records differently)."""
    for mine, theirs in zip(got, want, strict=True):
        for key, value in theirs.items():
            if np.asarray(value).dtype.kind == "f":
                np.testing.assert_allclose(mine[key], value, atol=1e-5, rtol=0, err_msg=key)
            else:
                assert np.array_equal(mine[key], value), key


def test_parser_workers_and_shards_give_the_same_file(checkpoint, tmp_path):
    """Shards, read by worker processes or not, hold between them the records of one serial run,
    each shard in input order, failures included: every entry of every record bit for bit, but the
    floats (each worker batches its own share of the records), which agree to round-off."""
    sample = __import__("conftest").SAMPLE
    broken = tmp_path / "broken.xyz"
    broken.write_text((sample / "xyz" / "molecules_10.xyz").read_text().replace("\nC ", "\nC 1.0 nonsense\n", 1))
    inputs = [str(sample / "xyz" / "molecules_10.xyz"), str(broken), str(sample / "tetris.xyz")]
    base = ["--model", str(checkpoint), "--device", "cpu", "--quiet", "--batch-size", "4"]
    outputs = {}
    for name, extra in {"serial": ["--workers", "0"], "s0": ["--workers", "2", "--shard", "0/3"],
                        "s1": ["--workers", "0", "--shard", "1/3"], "s2": ["--workers", "0", "--shard", "2/3"]}.items():
        outputs[name] = tmp_path / f"{name}.h5"
        result = runner.invoke(app, ["embed", *inputs, "-o", str(outputs[name]), *base, *extra])
        assert result.exit_code == 0, result.output
    def where(source, index):  # (file number, record index): the order of the input
        return inputs.index(source), index

    serial, serial_failed = records(outputs["serial"])
    assert len(serial_failed) >= 9  # the broken frame and tetris's untyped points
    got, got_failed = [], []
    for i in range(3):
        rows, failed = records(outputs[f"s{i}"])
        places = [where(r["sources"], int(r["indices"])) for r in rows]
        assert rows and places == sorted(places)
        got += rows
        got_failed += failed
    got.sort(key=lambda r: where(r["sources"], int(r["indices"])))
    assert len(got) == len(serial)
    assert_same_records(got, serial)
    assert sorted(got_failed, key=lambda f: where(*f[:2])) == serial_failed


def test_parser_workers_hand_back_the_records_in_input_order(tmp_path):
    """Workers that only parse (the GPU arrangement) give the items a single reader gives."""
    from groupae_cli.io import read_inputs
    from groupae_cli.io.parallel import RecordStream

    sample = __import__("conftest").SAMPLE
    blocks = (sample / "molecules.sdf").read_text().split("$$$$\n")
    broken = tmp_path / "broken.sdf"  # failures between records, in the chunks the workers send
    broken.write_text(blocks[0] + "$$$$\nnot a record\n$$$$\n" + blocks[1] + "$$$$\n")
    inputs = [str(sample / "xyz" / "molecules_10.xyz"), str(sample / "tetris.xyz"), str(broken),
              str(sample / "molecules.sdf")]
    full = list(read_inputs(inputs))
    want = [(n, type(item).__name__, item.index, item.name) for n, item in full]
    for workers, shard in ((3, (0, 1)), (2, (1, 2))):
        with RecordStream(inputs, workers=workers, shard=shard) as stream:
            got = [(n, type(item).__name__, item.index, item.name) for n, item in stream]
        assert got == want[shard[0]::shard[1]]
    # what the GPU path asks for: each record reduced to what embedding reads, the same geometry
    with RecordStream(inputs, workers=2, geometry_only=True) as stream:
        reduced = list(stream)
    assert [(n, type(item).__name__, item.index, item.name) for n, item in reduced] == want
    assert [x for x in reduced if isinstance(x[1], Failure)] == [x for x in full if isinstance(x[1], Failure)] != []
    sdf = [(a, b) for (_, a), (_, b) in zip(full, reduced, strict=True) if isinstance(a, Structure) and a.has_bonds]
    assert len(sdf) > 100
    for a, b in sdf:
        assert b.source == a.source and b.bonds is None and b.charges is None and not b.properties
        np.testing.assert_array_equal(b.numbers, a.numbers)
        np.testing.assert_array_equal(b.positions, a.positions)


def test_a_shard_parses_only_its_own_records(monkeypatch):
    from rdkit import Chem

    from groupae_cli.io import read_items

    sample = str(__import__("conftest").SAMPLE / "molecules.sdf")
    calls = []
    parse = Chem.MolFromMolBlock
    monkeypatch.setattr(Chem, "MolFromMolBlock", lambda *a, **k: calls.append(1) or parse(*a, **k))
    everything = list(read_items([sample]))
    calls.clear()
    mine = list(read_items([sample], select=lambda k: k % 4 == 1))
    assert [k for k, _, _ in mine] == [k for k, _, _ in everything if k % 4 == 1]
    assert len(calls) == len(mine) < len(everything) / 3
    assert [item.name for _, _, item in mine] == [item.name for k, _, item in everything if k % 4 == 1]


def test_a_parser_process_that_dies_is_one_line():
    import os
    import signal

    from groupae_cli.errors import GroupaeError
    from groupae_cli.io.parallel import RecordStream

    with RecordStream([str(__import__("conftest").SAMPLE / "molecules.sdf")], workers=1) as stream:
        os.kill(stream._procs[0].pid, signal.SIGKILL)
        with pytest.raises(GroupaeError, match=r"worker process died .*molecules\.sdf.*--workers 0"):
            list(stream)


#: a worker's work (`_work`, encoding, chunks of 4) in a fresh interpreter after `import_torch_lean`,
#: each message noted with whether torch's meta kernels were loaded when it was sent; then the same
#: records through a model built afresh under the whole of torch
LEAN_DRIVER = """
import json, sys
import numpy as np
from groupae_cli.early_worker import LEAN_TORCH_RELEASES, _torch_release, import_torch_lean
import_torch_lean()
import torch
from groupae_cli.io.parallel import _work
META = "torch._meta_registrations"
class Noted(list):
    def put(self, message):
        self.append((message, META in sys.modules))
sent = Noted()
_work(sent, [sys.argv[1]], None, 0, 1, 4, {"model": "default", "batch_size": 4, "threads": 1})
from groupae_cli.embed import encode_batch
from groupae_cli.io import Structure, read_structures
from groupae_cli.io.checkpoint import load_model
records = [s for s in read_structures(sys.argv[1]) if isinstance(s, Structure)]
model = load_model("default")
whole = [encode_batch(model, records[i:i + 4], torch.device("cpu")) for i in range(0, len(records), 4)]
got = [item for (kind, items, _), _ in sent if kind == "items" for _, _, item in items]
want = [(b["embedding"][j], b["rotation"][j], b["permutation"][j]) for b in whole for j in range(len(b["rotation"]))]
same = len(got) == len(want) == len(records) and all(
    np.array_equal(g.embedding, z) and np.array_equal(g.rotation, r) and np.array_equal(g.permutation, p)
    for g, (z, r, p) in zip(got, want))
try:
    torch.take(torch.empty(4, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
    meta_works = True
except NotImplementedError:
    meta_works = False
print(json.dumps({"lean": _torch_release() in LEAN_TORCH_RELEASES, "kinds": [m[0] for m, _ in sent],
                  "meta_loaded": [loaded for _, loaded in sent], "same": bool(same), "meta_works": meta_works}))
"""


def test_a_worker_imports_torch_without_its_meta_kernels_until_its_first_records_are_out():
    """Start-up: an encoding worker imports torch without its meta-kernel registrations (a quarter of
    `import torch`; `import_torch_lean`) on the torch releases where that is known to work, sends its
    first records, and only then imports them: the rest runs under the whole of torch, where meta
    tensors work again. What it sends, first records included, is what a model built under the whole
    of torch gives, to the bit."""
    import json

    sample = str(__import__("conftest").SAMPLE / "xyz" / "molecules_10.xyz")
    run = subprocess.run([sys.executable, "-c", LEAN_DRIVER, sample], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert result["kinds"] == ["ready", "items", "items", "items", "done"], result
    assert result["same"] and result["meta_works"], result
    # held back up to the first records, loaded from then on (plain torch: loaded throughout)
    assert result["meta_loaded"] == [not result["lean"]] * 2 + [True] * 3, result


def test_torch_is_completed_once_the_first_batch_is_encoded(monkeypatch):
    """`completing_torch` (embed's own process, standard input): what was held back is imported
    when the record after the first batch is asked for, after the model has taken a whole batch."""
    from groupae_cli import early_worker

    handed = []
    monkeypatch.setattr(early_worker, "complete_torch", lambda: handed.append("complete"))
    handed.extend(early_worker.completing_torch(iter(range(7)), 3))  # (each item appended as it is handed on)
    assert handed == [0, 1, 2, "complete", 3, 4, 5, 6]
    handed.clear()
    assert list(early_worker.completing_torch(iter(range(3)), 3)) == [0, 1, 2] and handed == []


#: `groupae embed` with each call of `encode_batch` noted with whether torch's meta kernels were
#: loaded (the module is patched as it is imported, so that the command imports torch as it would)
WATCHED_ENCODE_DRIVER = """
import atexit, importlib.abc, importlib.machinery, os, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "groupae_cli.embed":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            encode = module.encode_batch
            def watched(*args, **kwargs):
                seen.append("torch._meta_registrations" in sys.modules)
                return encode(*args, **kwargs)
            module.encode_batch = watched
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Watch())
def report():  # at exit, or as the command ends by os._exit (then atexit does not run)
    sys.stderr.write(f"SEEN {' '.join(map(str, seen))}\\n")
    sys.stderr.flush()
atexit.register(report)
exit_now = os._exit
def reporting_exit(status):
    report()
    exit_now(status)
os._exit = reporting_exit
from groupae_cli.early_worker import LEAN_TORCH_RELEASES, _torch_release, console_main
sys.stderr.write(f"LEAN {_torch_release() in LEAN_TORCH_RELEASES}\\n")
sys.argv = ["groupae", *sys.argv[1:]]
console_main()
"""


def test_embed_from_standard_input_holds_torchs_meta_kernels_back_for_its_first_batch(tmp_path):
    """With standard input the model runs in embed's own process; there too torch is imported
    without its meta kernels (`import_torch_lean`) and completed once the first batch is encoded,
    and the file is the one a run in the test's process (the whole of torch) writes."""
    sample = __import__("conftest").SAMPLE / "xyz" / "molecules_10.xyz"
    base = ["-o", "OUT", "--format", "xyz", "--model", "default", "--device", "cpu", "--batch-size", "4", "--quiet"]
    with open(sample, "rb") as stdin:
        run = subprocess.run([sys.executable, "-c", WATCHED_ENCODE_DRIVER, "embed", "-",
                              *[str(tmp_path / "stdin.h5") if a == "OUT" else a for a in base]],
                             stdin=stdin, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stderr.splitlines()
    lean = next(line for line in lines if line.startswith("LEAN")).split()[1] == "True"
    seen = next(line for line in lines if line.startswith("SEEN")).split()[1:]
    assert seen == [str(not lean), "True", "True"], run.stderr[-2000:]  # batches of 4, 4 and 2
    result = runner.invoke(app, ["embed", str(sample), *[str(tmp_path / "file.h5") if a == "OUT" else a
                                                         for a in base if a not in ("--format", "xyz")]])
    assert result.exit_code == 0, result.output
    (got, got_failed), (want, want_failed) = records(tmp_path / "stdin.h5"), records(tmp_path / "file.h5")
    assert len(got) == len(want) == 10 and got_failed == want_failed == []
    assert [row.pop("sources") for row in got] == ["-"] * 10  # the rest as read from the file
    assert_same_records(got, [{k: v for k, v in row.items() if k != "sources"} for row in want])

EARLY_DRIVER = """
import sys
import groupae_cli.early_worker as early_worker
import groupae_cli.io.parallel as parallel
start, release = parallel.RecordStream._start, parallel.release_early_worker
def _start(self):
    early = early_worker._EARLY.get("process")
    start(self)
    sys.stderr.write(f"TAKEN {early is not None and self._procs[0] is early}\\n")
def release_early_worker():
    early = early_worker._EARLY.get("process")
    release()
    sys.stderr.write(f"STOPPED {early is not None and early.exitcode is not None}\\n")
parallel.RecordStream._start, parallel.release_early_worker = _start, release_early_worker
if sys.argv[1] == "stream":  # the worker forked, then a stream that encodes in this process
    early_worker.start_early_worker()
    parallel.RecordStream(sys.argv[2:], workers=0).close()
else:
    from groupae_cli.app import main
    sys.argv = ["groupae", *sys.argv[1:]]
    main()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the early worker is forked on Linux only")
def test_the_worker_forked_as_embed_starts_takes_the_first_share(checkpoint, tmp_path):
    """`groupae embed` forks its first encoding worker before its options are parsed (start-up
    time: `start_early_worker`). That process takes the stream's first share, and the file is the
    one a run in one process writes; where the model runs in this process instead, it is stopped."""
    from groupae_cli.io.parallel import gpu_wanted, usable_cpus

    if usable_cpus() < 2 or gpu_wanted("auto"):
        pytest.skip("no early worker with fewer than two cores or on a GPU machine")
    sample = __import__("conftest").SAMPLE
    inputs = [str(sample / "xyz" / "molecules_10.xyz"), str(sample / "molecules.sdf")]
    base = ["--model", str(checkpoint), "--device", "cpu", "--quiet", "--batch-size", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", EARLY_DRIVER, "embed", *inputs, "-o", str(tmp_path / "early.h5"),
                          *base, "--workers", "2"], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "TAKEN True" in run.stderr.splitlines(), run.stderr[-2000:]
    result = runner.invoke(app, ["embed", *inputs, "-o", str(tmp_path / "serial.h5"), *base, "--workers", "0"])
    assert result.exit_code == 0, result.output
    (got, got_failed), (want, want_failed) = records(tmp_path / "early.h5"), records(tmp_path / "serial.h5")
    assert len(got) == len(want) > 300 and got_failed == want_failed
    assert_same_records(got, want)
    unused = subprocess.run([sys.executable, "-c", EARLY_DRIVER, "stream", inputs[0]], capture_output=True, text=True,
                            timeout=60, env=env, check=False)
    assert unused.returncode == 0 and "STOPPED True" in unused.stderr.splitlines(), unused.stderr[-2000:]
