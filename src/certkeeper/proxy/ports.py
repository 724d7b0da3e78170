"""Who holds a listening TCP port: read from /proc, to name the process in a clear error line."""

from __future__ import annotations

import contextlib
from pathlib import Path

LISTEN = "0A"


def holders(port: int) -> list[tuple[int, str]]:
    """``(pid, command line)`` of the processes listening on ``port`` (their children left out)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return []
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if fd.readlink().name in inodes:
                        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").strip()
                        found.append((int(proc.name), cmdline.decode(errors="replace")))
                        break
    # A master's workers share its socket: name the process that owns it, not each child.
    pids = {pid for pid, _ in found}
    return sorted((pid, cmd) for pid, cmd in found if _parent(pid) not in pids)


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    return inodes
