import os
from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # tests run in a worker per core: one thread each (and in the commands they start), or
    # OpenMP threads of the workers spin against each other (set before anything imports torch)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def sample() -> Path:
    return SAMPLE


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20221130)


def split(items):
    """(structures, failures) of a reader's output, order kept."""
    from groupae_cli.io import Failure

    items = list(items)
    return [i for i in items if not isinstance(i, Failure)], [i for i in items if isinstance(i, Failure)]


def same_geometry(path) -> int:
    """Reading `path` with geometry_only gives the full read's records (elements, positions to the
    bit, names, places) without their bonds, charges, features and SD properties, and the same
    failures in the same places; returns the number of records."""
    from groupae_cli.errors import Failure
    from groupae_cli.io import read_structures
    from groupae_cli.io.records import Structure

    full, lean = list(read_structures(path)), list(read_structures(path, geometry_only=True))
    assert len(full) == len(lean)
    for a, b in zip(full, lean):
        assert type(a) is type(b)
        if isinstance(a, Failure):
            assert a == b
            continue
        assert (a.name, a.source, a.index) == (b.name, b.source, b.index)
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.positions, b.positions)
        assert b.bonds is None and b.charges is None and b.features is None and not b.properties
    return sum(isinstance(a, Structure) for a in full)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A checkpoint of an untrained tiny model (the symmetry contract holds without training)."""
    import torch

    from groupae_cli.io.checkpoint import save_checkpoint
    from groupae_cli.models import GroupAE, preset

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.ckpt"
    save_checkpoint(path, GroupAE(preset("tiny")))
    return path


@pytest.fixture(scope="session", autouse=True)
def quick_model_builds():
    """Models built in the tests skip e3nn's search for einsum contraction orders, as models loaded
    for inference do (`quick_build`): the search costs about 0.3 s of a tiny model's 0.6 s build,
    and it changes only the order in which torch contracts, not what is computed."""
    from groupae_cli.models._startup import quick_build

    with quick_build():
        yield
