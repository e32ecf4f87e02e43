"""Records parsed (and, on CPU, encoded) in worker processes, handed back in input order.

Items (records and failures, numbered in input order over every input file: see `read_items`)
are dealt to W workers like cards: worker w parses the items whose number k has k % (N W) =
i + N w, where i/N is the shard (1 shard: N = 1). Every worker cuts the whole text into records
(cheap) and parses only its own; each sends its items in order, so taking one item from each
worker in turn gives exactly the shard's items in input order, as a single reader would give them.

Workers start with the stream (before the model is loaded, so the first records are parsed while
it loads; `groupae embed`'s first encoding worker even before, as the command starts:
`groupae_cli.early_worker`), send chunks of records through bounded queues (memory stays flat),
ignore Ctrl-C (the main process stops them), and are stopped by `close()`. A worker that dies
(killed, or crashed by a C library on a malformed record) is one line naming the file it was
reading, never a hang.
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_module
import sys
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from groupae_cli.early_worker import (
    QUEUE_DEPTH,
    become_worker,
    complete_torch,
    gpu_wanted,
    import_torch_lean,
    release_early_worker,
    take_early_worker,
    usable_cpus,
)
from groupae_cli.errors import Failure, GroupaeError, UsageError
from groupae_cli.io import read_items, resolve_inputs
from groupae_cli.io.formats import STDIN
from groupae_cli.io.records import Structure

Item = tuple[int, Structure | Failure]  # (file number, record or failure)
#: Records per message from a worker (QUEUE_DEPTH: messages a worker may have waiting)
CHUNK = 32
_POLL_S = 0.5


def parse_shard(text: str) -> tuple[int, int]:
    """'i/N' -> (i, N) with 0 <= i < N."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/N (e.g. 0/4), not {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < N")
    return i, n


def default_workers(paths: list[str], device: str = "cpu", cpus: int | None = None) -> int:
    """Worker processes for a run: none for standard input (one reader only) or on one core. On a
    GPU they parse, the model runs in the main process: all cores but one, up to 8. On CPU they
    parse and encode, one torch thread each: one per core, up to 8 (each holds a model), and no
    more than one per MiB of input. In a process that has loaded torch already (a Python session,
    a test) workers would have to start as fresh interpreters, which costs more than small inputs
    gain: none there unless asked for."""
    cpus = cpus or usable_cpus()
    if STDIN in paths or cpus < 2 or "torch" in sys.modules:
        return 0
    if gpu_wanted(device):
        return max(1, min(8, cpus - 1))
    # each CPU worker pays the start-up (torch, the model) of about 2,000 small records' parsing and a
    # few hundred records' encoding: one per MiB of input (about 300 drug-like SDF records), so a small
    # input does not wait for workers that would have little to do
    size = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
    return max(1, min(8, cpus, size >> 20))


def keep_freed_memory() -> None:
    """Have glibc keep freed blocks for reuse instead of returning every large one to the system:
    a float64 batch's tensors are tens of MB, above glibc's mmap threshold, so each batch would
    page-fault its memory in afresh (measured: 10-35% of CPU encode time). Memory stays bounded
    by the largest batch. Nothing is done off glibc."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _encoded(items, encoder: dict, out):
    """The worker's items through the model (`encoder`: model path, batch size, torch threads,
    fit steps, and the device: the CPU unless it names a GPU)."""
    if not gpu_wanted(encoder.get("device", "cpu")):  # measured and tested on the CPU
        import_torch_lean()  # (`_work` completes torch once the first records are out)
    import torch

    from groupae_cli.device import resolve_device
    from groupae_cli.embed import encode_items, set_fit
    from groupae_cli.io.checkpoint import load_model

    torch.set_num_threads(encoder["threads"])
    keep_freed_memory()
    device = resolve_device(encoder.get("device", "cpu"))
    model = load_model(encoder["model"], device)
    set_fit(model, encoder.get("fit_steps", 0), encoder.get("fit_hold_identity", False), encoder["model"])
    if model.fit_steps:  # the fit differentiates through the decoder (torch.func): with the whole of torch
        complete_torch()
    out.put(("ready", {"embedding_dim": model.config.embedding_dim,
                       "embedding_identity": model.config.embedding_identity}, None))
    pairs = (((k, number), item) for k, number, item in items)
    for (k, number), item in encode_items(pairs, model, device, encoder["batch_size"]):
        yield k, number, item


def _packed(batch: list) -> tuple:
    """A chunk of geometry-only items, (item number, file number, record or failure), as a few lists
    and arrays (the records' elements and positions concatenated): it pickles and unpickles in about
    a third of the time of the Structures themselves (11.9 -> 4.4 µs per record in the main process,
    chunks of 32), and unpickling is most of what the main process does per record on a GPU."""
    records = [item for _, _, item in batch if isinstance(item, Structure)]
    return ([k for k, _, _ in batch], [number for _, number, _ in batch],
            [None if isinstance(item, Structure) else item for _, _, item in batch],  # failures in their places
            np.array([len(s) for s in records], dtype=np.int64),
            np.concatenate([s.numbers for s in records]) if records else np.zeros(0, dtype=np.int64),
            np.concatenate([s.positions for s in records]) if records else np.zeros((0, 3)),
            [(s.name, s.source, s.index) for s in records])


def _unpacked(packed: tuple) -> list:
    """`_packed`'s items again; each record's arrays are views of the chunk's."""
    ks, files, failures, sizes, numbers, positions, places = packed
    ends = np.cumsum(sizes).tolist()
    records = iter([Structure(numbers[a:b], positions[a:b], *place)
                    for a, b, place in zip([0, *ends[:-1]], ends, places)])
    return [(k, number, next(records) if item is None else item) for k, number, item in zip(ks, files, failures)]


def _work(out, paths: list[str], fmt: str | None, residue: int, modulus: int, chunk: int,
          encoder: dict | None = None, geometry_only: bool = False) -> None:
    """A worker: every item numbered residue modulo `modulus` (through the model, with `encoder`;
    read for its geometry alone with `geometry_only` or `encoder`), sent in chunks, then ("done",)."""
    become_worker()
    position: list = [None]

    def on_bytes(number: int, n: int) -> None:
        position[0] = (number, n)

    pack = geometry_only and encoder is None

    def send(batch: list) -> None:
        out.put(("packed", _packed(batch), position[0]) if pack else ("items", batch, position[0]))

    try:
        batch: list = []
        items = read_items(paths, fmt, on_bytes, select=lambda k: k % modulus == residue,
                           geometry_only=geometry_only or encoder is not None)  # embedding reads no more
        if encoder is not None:
            items = _encoded(items, encoder, out)
        for k, number, item in items:
            batch.append((k, number, item))
            if len(batch) >= chunk:
                send(batch)
                batch = []
                complete_torch()  # the first records are out (`import_torch_lean`)
        send(batch)
        out.put(("done", None, None))
    except GroupaeError as exc:  # e.g. a checkpoint that cannot be loaded: the main process says it
        out.put(("usage" if isinstance(exc, UsageError) else "error", str(exc), position[0]))
    except BaseException as exc:  # noqa: BLE001 - reported to the main process as one line
        out.put(("error", f"{type(exc).__name__}: {exc}", position[0]))


class RecordStream:
    """The (file number, record or failure) items of shard `shard` (i, N) of the inputs, in order,
    parsed by `workers` processes (0: in this process, as they are consumed).

    With `encoder` ({"model": checkpoint path, "batch_size": n, "threads": torch threads per
    worker, and optionally "device": "cuda[:i]"}) the workers also run the model (on the CPU, or
    each on the GPU with a CUDA context of its own), and the items are `Encoded` records or
    failures: parsing and encoding then scale over processes, each with its own torch threads
    (several single-threaded processes outrun one multi-threaded one on these small batches, and
    torch threads do not fight a parser for the cores). `model_info` then holds the model's
    embedding_dim and embedding_identity once the first item is in. With `geometry_only` (and with
    `encoder`) records are read for their elements, positions, name and place alone (what embedding
    reads), not their bonds, charges, features or SD properties: that reads an SDF record in about
    three quarters of the time, and pickles it in a third.

    Iterate it once; `close()` (or leaving a `with` block) stops the workers. `on_bytes(file
    number, bytes read)`, if set before iterating, follows each file's progress."""

    def __init__(self, paths: list[str], fmt: str | None = None, workers: int = 0, shard: tuple[int, int] = (0, 1),
                 on_bytes: Callable[[int, int], None] | None = None, encoder: dict | None = None,
                 geometry_only: bool = False):
        self.paths = resolve_inputs(paths, fmt)
        self.fmt = fmt
        self.shard = shard
        self.on_bytes = on_bytes
        self.workers = 0 if STDIN in self.paths else workers
        if encoder is not None and not self.workers:
            raise ValueError("encoder needs worker processes")
        self.encoder = encoder
        self.geometry_only = geometry_only
        self.model_info: dict | None = None
        self._procs: list = []
        self._queues: list = []
        if self.workers:
            self._start()
        release_early_worker()  # not taken: the model runs in this process

    def _start(self) -> None:
        import multiprocessing

        # fork is instant; where torch is loaded already (its thread pools do not survive a fork
        # safely) start clean interpreters instead
        ctx = multiprocessing.get_context("spawn" if "torch" in sys.modules else "fork")
        i, n = self.shard
        for w in range(self.workers):
            share = (self.paths, self.fmt, i + n * w, n * self.workers, CHUNK, self.encoder, self.geometry_only)
            taken = take_early_worker(share) if w == 0 and self.encoder is not None else None
            if taken:
                proc, out = taken
            else:
                out = ctx.Queue(QUEUE_DEPTH)
                proc = ctx.Process(target=_work, args=(out, *share), daemon=True, name=f"groupae-reader-{w}")
                proc.start()
            self._procs.append(proc)
            self._queues.append(out)

    def __iter__(self) -> Iterator[Item]:
        i, n = self.shard
        if not self.workers:
            for _, number, item in read_items(self.paths, self.fmt, self.on_bytes,
                                              select=None if n == 1 else (lambda k: k % n == i),
                                              geometry_only=self.geometry_only):
                yield number, item
            return
        buffers: list[deque] = [deque() for _ in self._procs]
        j = 0  # the shard's j-th item is worker j % W's next
        try:
            while True:
                w = j % self.workers
                while not buffers[w]:
                    kind, payload, position = self._receive(w)
                    if kind == "done":
                        return
                    buffers[w].extend(_unpacked(payload) if kind == "packed" else payload)
                    if position is not None and self.on_bytes is not None:
                        self.on_bytes(*position)
                k, number, item = buffers[w].popleft()
                if k != i + n * j:  # cannot happen while every worker cuts the same text
                    raise GroupaeError(f"parser workers disagree on the record order (item {k}, expected {i + n * j})")
                yield number, item
                j += 1
        finally:
            self.close()

    def _receive(self, w: int):
        proc, out = self._procs[w], self._queues[w]
        while True:
            try:
                kind, payload, position = out.get(timeout=_POLL_S)
            except queue_module.Empty:
                if proc.is_alive():
                    continue
                try:  # it may have finished just after the timeout
                    kind, payload, position = out.get(timeout=_POLL_S)
                except queue_module.Empty:
                    raise GroupaeError(f"a worker process died (exit code {proc.exitcode}) while reading "
                                       f"{self._where(None)}; run with --workers 0 to see the record") from None
            if kind == "ready":
                self.model_info = self.model_info or payload
                continue
            if kind == "usage":
                raise UsageError(payload)
            if kind == "error":
                raise GroupaeError(f"a worker process failed while reading {self._where(position)}: {payload}")
            return kind, payload, position

    def _where(self, position) -> str:
        return self.paths[position[0]] if position else ", ".join(Path(p).name for p in self.paths)

    def close(self) -> None:
        """Stop the workers (at once: their remaining output is not needed)."""
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(timeout=5)
        for out in self._queues:
            with contextlib.suppress(Exception):
                out.cancel_join_thread()
                out.close()
        self._procs, self._queues = [], []

    def __enter__(self) -> RecordStream:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["RecordStream", "default_workers", "gpu_wanted", "keep_freed_memory", "parse_shard", "usable_cpus"]
