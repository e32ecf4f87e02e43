"""`groupae embed`'s first encoding worker, forked as the command starts (`start_for_command_line`,
from `groupae_cli.app.main`), what deciding that needs, and what every worker does first
(`become_worker`). Nothing heavy is imported here (no numpy, no torch): the module is imported
before the command line is parsed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

#: Messages of records a worker may have waiting (per worker)
QUEUE_DEPTH = 8


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
        import groupae_cli.embed  # torch
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
