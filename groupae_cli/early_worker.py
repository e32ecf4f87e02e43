"""`groupae embed`'s first encoding worker, forked as the command starts (`start_for_command_line`,
from the console script `console_main` before anything else is imported), what deciding that needs,
what every worker does first (`become_worker`), and how a process that encodes on the CPU imports
torch (`import_torch_lean`, `complete_torch`). Nothing heavy is imported here (no numpy, no torch):
the module is imported before the command line is parsed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

#: Messages of records a worker may have waiting (per worker)
QUEUE_DEPTH = 8

#: torch releases (major, minor) whose `import torch` is known to complete with its meta-kernel
#: registrations held back (`import_torch_lean`); the tests check the release they run on
LEAN_TORCH_RELEASES = {(2, 13)}
_META = "torch._meta_registrations"
#: whether this process imported torch without `_META` and has not imported it since
_held_back = False


def gpu_wanted(device: str) -> bool:
    """Whether --device asks for a GPU: cuda[:i], or auto where an NVIDIA driver is loaded (asked
    without importing torch)."""
    return device.startswith("cuda") or (device == "auto" and os.path.exists("/proc/driver/nvidia/version"))


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def become_worker() -> None:
    """A worker process's first step: ignore Ctrl-C (the main process stops its workers), and have
    the kernel end it (SIGTERM) when the process that started it ends, however that ends (Linux;
    strictly, when the thread that started it does: the stream's). A main process killed outright
    otherwise left its workers blocked for good on a full queue, each holding a model."""
    import multiprocessing

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if not sys.platform.startswith("linux") or parent is None:
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent.pid:  # it ended before the call
        os._exit(1)


def _torch_release() -> tuple[int, int] | None:
    """(major, minor) of the installed torch, read from its version.py without importing it."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return None
    try:
        with open(os.path.join(os.path.dirname(spec.origin), "version.py")) as f:
            found = re.search(r"""^__version__\s*=\s*['"](\d+)\.(\d+)""", f.read(), re.MULTILINE)
    except OSError:
        return None
    return (int(found[1]), int(found[2])) if found else None


def import_torch_lean() -> None:
    """Import torch, in a process that has not yet, without its meta-kernel registrations
    (`torch._meta_registrations` and the decompositions, references and primitives it imports: a
    quarter to a third of `import torch`, 0.2-0.3 s on 2 cores). Those kernels serve tensors on the
    meta device and torch's tracers (torch.compile, torch.export, fake tensors); eager inference on
    the CPU or a GPU never calls them, and the embeddings are the same to the bit (tests). So the
    first records come that much sooner, and `complete_torch` imports them once the first are out,
    before anything else runs: the rest of the work runs under the whole of torch. Only for torch
    releases in `LEAN_TORCH_RELEASES`, where `import torch` is known to complete without them;
    elsewhere, and where torch is loaded already, the plain import. (Used where the model runs on
    the CPU without a fit, where it was measured and is tested: in the workers, and in `groupae
    embed`'s own process where it reads standard input or has no workers.)"""
    import types

    global _held_back
    if "torch" in sys.modules or _META in sys.modules or _torch_release() not in LEAN_TORCH_RELEASES:
        import torch
        return
    sys.modules[_META] = types.ModuleType(_META, "held back while torch is imported (groupae_cli.early_worker)")
    try:
        import torch  # noqa: F401
    finally:
        del sys.modules[_META]
    _held_back = True


def complete_torch() -> None:
    """Import what `import_torch_lean` held back, if it did (then this process's torch is whole)."""
    global _held_back
    if _held_back:
        _held_back = False
        import importlib

        importlib.import_module(_META)


def completing_torch(items, after: int):
    """`items`, with `complete_torch` called before the one after the first `after` is handed on: in
    a pipeline that encodes `after` records at a time, once its first batch is encoded."""
    for i, item in enumerate(items):
        if i == after:
            complete_torch()
        yield item


#: The first encoding worker of a `groupae embed`, forked as the command starts
#: (`start_early_worker`), until a RecordStream takes it: {"process", "out" (its queue), "send" (the
#: pipe its share of the work comes through)}
_EARLY: dict = {}


def start_early_worker() -> None:
    """Fork now the process the first RecordStream that encodes in workers will take as its first
    worker (`groupae_cli.io.parallel`). It imports torch and the model's modules (about a second)
    while this process parses the command line and opens the inputs, then waits for its share of
    the work: the first record comes that much sooner (bench/RESULTS.md, "Time to the first
    record"). Only where encoding workers would be forked (Linux, two cores or more, torch not
    loaded here, no GPU present: there the model runs in the main process). One not taken is
    stopped by the first RecordStream, or ends with this process."""
    if (_EARLY or not sys.platform.startswith("linux") or "torch" in sys.modules or usable_cpus() < 2
            or gpu_wanted("auto")):
        return
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue(QUEUE_DEPTH)
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_wait_for_share, args=(receive, send, out), daemon=True, name="groupae-reader-0")
    process.start()
    receive.close()
    _EARLY.update(process=process, out=out, send=send)


def _wait_for_share(receive, send, out) -> None:
    send.close()  # the main process's end: with it closed here, the main process's exit is an EOF
    become_worker()  # (`_work` says it again, to no effect)
    with contextlib.suppress(Exception):  # a failure comes again, and is reported, in `_work`
        import_torch_lean()
        import groupae_cli.embed
        import groupae_cli.io.checkpoint
        import groupae_cli.models  # noqa: F401  # e3nn
    try:
        share = receive.recv()
    except EOFError:  # not taken
        return
    from groupae_cli.io.parallel import _work

    _work(out, *share)


def take_early_worker(share: tuple):
    """(process, its queue) of the early worker, sent `share` (the arguments of
    `groupae_cli.io.parallel._work` after the queue); None where there is none or it has died."""
    if not _EARLY:
        return None
    try:
        _EARLY["send"].send(share)
        _EARLY["send"].close()
    except OSError:  # its end is closed: it died
        release_early_worker()
        return None
    taken = _EARLY["process"], _EARLY["out"]
    _EARLY.clear()
    return taken


def release_early_worker() -> None:
    """Stop the early worker if no RecordStream took it."""
    if _EARLY:
        process = _EARLY["process"]
        _EARLY.clear()
        process.terminate()
        process.join(timeout=5)


def start_for_command_line(argv: list[str]) -> None:
    """`start_early_worker` for an `embed` command line, unless it asks for help or reads stdin."""
    if argv[1:2] == ["embed"] and argv[2:] and not {"-h", "--help", "-"} & set(argv[2:]):
        start_early_worker()


def console_main() -> None:
    """The `groupae` console script: embed's first worker forked before the command line's own
    imports (typer and every command's module, about 50 ms), then the Typer app."""
    start_for_command_line(sys.argv)
    from groupae_cli.app import main

    main()
