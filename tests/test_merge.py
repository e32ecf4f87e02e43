"""`groupae merge`: the files of `groupae embed --shard i/N` make the file of one unsharded run, on
real molecules with the shipped default model, failures among the records."""

import shutil

import h5py
import numpy as np
import pytest
from conftest import SAMPLE
from typer.testing import CliRunner

from groupae_cli.app import app

runner = CliRunner()
SHARDS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Four inputs (SDF records, an XYZ file with two failed frames between good ones, an empty file,
    more SDF records; 27 items), embedded once whole and once in 3 shards, plus a shard of a run
    with another model and one of a run over other inputs. The default model is loaded once."""
    import groupae_cli.cli.embed as embed_command

    root = tmp_path_factory.mktemp("merge")
    blocks = (SAMPLE / "molecules.sdf").read_text().split("$$$$\n")
    (root / "a.sdf").write_text("$$$$\n".join(blocks[:12]) + "$$$$\n")
    (root / "b.sdf").write_text("$$$$\n".join(blocks[12:22]) + "$$$$\n")
    (root / "mixed.xyz").write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"
                                    "3\nstannane\nSn 0 0 0\nH 1.7 0 0\nH 0 1.7 0\n"  # an element the model never saw
                                    "2\nbroken\nC 0 0 0\n"  # a frame cut short
                                    "2\nco\nC 0 0 0\nO 1.13 0 0\n")
    (root / "empty.xyz").write_text("")  # a failure of the whole file (source_index -1)
    inputs = [str(root / n) for n in ("a.sdf", "mixed.xyz", "empty.xyz", "b.sdf")]
    loaded = {}
    load = embed_command.load_for_command

    def embed(out, *args, inputs=inputs):
        result = runner.invoke(app, ["embed", *inputs, "-o", str(root / out), "--device", "cpu", "--quiet", *args])
        assert result.exit_code == 0, result.output
        return root / out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embed_command, "load_for_command",
                      lambda model, device: loaded.get(model) or loaded.setdefault(model, load(model, device)))
        whole = embed("whole.h5")
        parts = [embed(f"part_{i}.h5", "--shard", f"{i}/{SHARDS}") for i in range(SHARDS)]
        other_inputs = embed("other_inputs.h5", "--shard", f"2/{SHARDS}", inputs=inputs[:2])
    other_model = embed("other_model.h5", "--shard", f"2/{SHARDS}", "--model", str(tiny_checkpoint(root)))
    return {"root": root, "whole": whole, "parts": parts, "other_inputs": other_inputs, "other_model": other_model}


def tiny_checkpoint(root):
    import torch

    from groupae_cli.io.checkpoint import save_checkpoint
    from groupae_cli.models import GroupAE, preset

    torch.manual_seed(0)
    path = root / "tiny.ckpt"
    save_checkpoint(path, GroupAE(preset("tiny")))
    return path


def read(path):
    with h5py.File(path) as f:
        return {k: f[k][:] for k in f}, {k: f.attrs[k] for k in f.attrs}


def merge(parts, out):
    return runner.invoke(app, ["merge", *map(str, parts), "-o", str(out)])


def test_shards_merged_equal_one_unsharded_run(run, tmp_path):
    out = tmp_path / "merged.h5"
    result = merge(run["parts"][::-1], out)
    assert result.exit_code == 0, result.output
    assert "24 records (3 failed) from 3 parts merged" in result.stderr
    whole, whole_attrs = read(run["whole"])
    merged, attrs = read(out)
    # the data the test rests on: failures from several shards, between records, a whole-file one
    failed = whole["failed"]
    assert failed["source_index"].tolist() == [1, 2, -1] and len(whole["embedding"]) == 24
    shards_of = {i: read(p)[0] for i, p in enumerate(run["parts"])}
    assert sum(len(d["failed"]) > 0 for d in shards_of.values()) >= 2
    assert sorted(merged) == sorted(whole)
    for name in whole:
        assert merged[name].dtype == whole[name].dtype, name
        assert np.array_equal(merged[name], whole[name]), name
    with h5py.File(run["whole"]) as a, h5py.File(out) as b:
        for name in a:
            assert (a[name].chunks, a[name].compression, a[name].maxshape) == \
                (b[name].chunks, b[name].compression, b[name].maxshape), name
    own = {"created", "command", "merged_from"}
    assert set(attrs) - own == set(whole_attrs) - own
    for key in set(whole_attrs) - own:
        assert np.array_equal(attrs[key], whole_attrs[key]), key
    assert attrs["shard"] == "0/1" and attrs["complete"] and attrs["n_records"] == 24 and attrs["n_failed"] == 3
    assert attrs["command"].endswith(" merge")
    assert list(attrs["merged_from"]) == [str(p) for p in run["parts"]]  # in shard order


def test_part_order_and_chunk_size_do_not_matter(run, tmp_path, monkeypatch):
    import groupae_cli.io.merge as merging

    parts = run["parts"]
    reference = tmp_path / "reference.h5"
    assert merge(parts, reference).exit_code == 0
    expected, _ = read(reference)
    for k, (order, chunk) in enumerate([([1, 2, 0], 4096), ([2, 1, 0], 2), ([0, 2, 1], 1), ([1, 0, 2], 5)]):
        monkeypatch.setattr(merging, "CHUNK", chunk)  # several merge rounds: parts interleave across chunks
        out = tmp_path / f"m{k}.h5"
        result = merge([parts[i] for i in order], out)
        assert result.exit_code == 0, result.output
        merged, attrs = read(out)
        assert list(attrs["merged_from"]) == [str(p) for p in parts]
        for name in expected:
            assert np.array_equal(merged[name], expected[name]), (order, chunk, name)


def refused(result, out, *words):
    """One line on stderr naming `words`, exit 2, and nothing at `out` (nor a temporary file)."""
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("groupae: error: "), result.output
    for word in words:
        assert str(word) in lines[0], (word, lines[0])
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    return lines[0]


def test_a_missing_or_duplicated_shard_is_one_line(run, tmp_path):
    parts = run["parts"]
    out = tmp_path / "merged.h5"
    refused(merge(parts[:2], out), out, "shard 2/3 missing", parts[0], parts[1])
    refused(merge([parts[0], parts[2]], out), out, "shard 1/3 missing")
    again = tmp_path / "again.h5"
    shutil.copy(parts[1], again)
    refused(merge([*parts, again], out), out, "shard 1/3 given more than once", parts[1], again)
    refused(merge([parts[0], parts[1], run["whole"]], out), out, "different numbers of shards", run["whole"])
    refused(merge([*parts[:2], tmp_path / "nosuch.h5"], out), out, "nosuch.h5: no such file")
    refused(merge(parts, parts[0]), parts[0].with_name("x.h5"), "is also an input")
    assert read(parts[0])[1]["shard"] == "0/3"  # not written over


def test_parts_of_other_runs_are_refused(run, tmp_path):
    parts = run["parts"]
    out = tmp_path / "merged.h5"
    refused(merge([*parts[:2], run["other_model"]], out), out, "not shards of one run: different models",
            parts[0], run["other_model"])
    refused(merge([*parts[:2], run["other_inputs"]], out), out, "not shards of one run: different inputs",
            run["other_inputs"])
    fitted = tmp_path / "fitted.h5"  # the same shard with its z fitted (embed --fit-steps)
    shutil.copy(parts[2], fitted)
    with h5py.File(fitted, "a") as f:
        f.attrs["fit_steps"] = 10
    refused(merge([*parts[:2], fitted], out), out, "not shards of one run: different fit steps", fitted)
    copies = [tmp_path / f"fitted{k}.h5" for k in range(3)]  # the three shards, fitted alike
    for part, copy in zip(parts, copies, strict=True):
        shutil.copy(part, copy)
        with h5py.File(copy, "a") as f:
            f.attrs["fit_steps"] = 10
    held = tmp_path / "held.h5"  # the last one with the frame-free part held (embed --fit-hold-identity)
    shutil.copy(copies[2], held)
    with h5py.File(held, "a") as f:
        f.attrs["fit_hold_identity"] = 1
    refused(merge([*copies[:2], held], out), out, "different fits (the frame-free part held or fitted) (0 vs 1)", held)
    with h5py.File(copies[0], "a") as f:  # a file written before groupae wrote the attribute: a whole fit
        del f.attrs["fit_hold_identity"]
    assert merge(copies, out).exit_code == 0


def test_an_incomplete_or_overlapping_part_is_refused_and_leaves_no_file(run, tmp_path):
    parts = run["parts"]
    out = tmp_path / "merged.h5"
    cut = tmp_path / "cut.h5"
    shutil.copy(parts[1], cut)
    with h5py.File(cut, "a") as f:
        f.attrs["complete"] = False
    refused(merge([parts[0], cut, parts[2]], out), out, "cut.h5: not a complete groupae embed file")
    # all the records, labelled shard 1/3: they overlap shards 0 and 2 (found while merging)
    overlapping = tmp_path / "overlapping.h5"
    shutil.copy(run["whole"], overlapping)
    with h5py.File(overlapping, "a") as f:
        f.attrs["shard"] = "1/3"
    line = refused(merge([parts[0], overlapping, parts[2]], out), out, "both hold", "the parts overlap")
    assert "a.sdf: record 0" in line


def test_a_part_whose_failures_are_out_of_order_merges_in_input_order(run, tmp_path):
    """embed writes a failure the model meets (NaN) when its batch is done, after failures met later
    in the input: the merge puts each part's failures back in input order."""
    parts = list(run["parts"])
    shuffled = tmp_path / "shuffled.h5"
    shutil.copy(parts[1], shuffled)
    with h5py.File(shuffled, "a") as f:
        failed = f["failed"][:]
        assert len(failed) >= 2
        f["failed"][:] = failed[::-1]
    parts[1] = shuffled
    out = tmp_path / "merged.h5"
    assert merge(parts, out).exit_code == 0
    assert np.array_equal(read(out)[0]["failed"], read(run["whole"])[0]["failed"])


def test_merge_on_a_full_disk_stops_with_one_line_and_leaves_nothing(run, tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, (1 << 30) - (1 << 20), 1 << 20))
    out = tmp_path / "merged.h5"
    refused(merge(run["parts"], out), out, str(out), "No space left on device (1 MiB free")
