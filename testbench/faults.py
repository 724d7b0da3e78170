"""Kill ``certkeeper`` at a chosen point of its writes to the store, for crash-consistency sweeps.

``python -m testbench.faults STORE N [TRACE] -- certkeeper-args...`` runs the real command in this
process with an audit hook (PEP 578) that counts every change certkeeper makes inside STORE: files
opened for writing, renames, links, removals, directory creation, mode changes. At the N-th one,
before it happens, the process sends itself SIGKILL: the kernel ends it at once, as a power cut
ends a process (minus the page cache, which the store's fsyncs cover). N = 0 kills nothing.
With TRACE, each counted change is appended to that file as ``N event path`` (to list the points).

Audit events fire before the operation, so "killed at N" leaves changes 1..N-1 done and N not; a
sweep over N = 1..total therefore cuts between every pair of consecutive changes.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

# The audit events that change the file system, and which argument names the path changed.
_PATH_ARG = {
    "open": 0,
    "os.rename": 1,
    "os.symlink": 1,
    "os.remove": 0,
    "os.rmdir": 0,
    "os.mkdir": 0,
    "os.chmod": 0,
    "shutil.rmtree": 0,
    "os.truncate": 0,
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _is_write(event: str, args: tuple[Any, ...]) -> bool:
    if event != "open":
        return True
    mode, flags = args[1], args[2]
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def install(store: str, kill_at: int, trace: str | None) -> None:
    root = os.path.realpath(store) + os.sep
    count = 0

    def hook(event: str, args: tuple[Any, ...]) -> None:
        nonlocal count
        index = _PATH_ARG.get(event)
        if index is None or len(args) <= index:
            return
        path = args[index]
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str) or not _is_write(event, args):
            return
        full = os.path.abspath(path)
        if not (full + os.sep).startswith(root):
            return
        count += 1
        if trace:
            with open(trace, "a", encoding="utf-8") as out:  # outside the store: not counted
                out.write(f"{count} {event} {full[len(root) :]}\n")
        if count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def main(argv: list[str]) -> None:
    split = argv.index("--")
    head, args = argv[:split], argv[split + 1 :]
    store, kill_at = head[0], int(head[1])
    install(store, kill_at, head[2] if len(head) > 2 else None)
    from certkeeper.cli import main as certkeeper

    sys.argv = ["certkeeper", *args]
    certkeeper()


if __name__ == "__main__":
    main(sys.argv[1:])
