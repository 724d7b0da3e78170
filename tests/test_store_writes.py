"""Every file of the store appears under its final name complete: written elsewhere, then renamed.

A reader (nginx, a deploy hook, ``certkeeper status``, another certkeeper) may open ``state.json``,
a key or the account at any instant. If certkeeper opened one of those names for writing, a reader
could see it empty or half written. The kernel's view settles it without timing luck: ``strace``
records every open for writing and every rename that ``certkeeper issue`` and a renewal make.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbench.command import CERTKEEPER, Env

# One traced call per line (``-f`` prefixes the thread id). A call interrupted by another thread is
# printed as "<unfinished ...>" and resumed later, but its arguments are all on the first line.
_OPEN = re.compile(r'openat\((?:AT_FDCWD|\d+<[^>]*>), "(?P<path>[^"]+)", (?P<flags>[A-Z_|]+)')
_RENAME = re.compile(
    r'rename(?:at2?)?\((?:(?:AT_FDCWD|\d+<[^>]*>), )?"(?P<src>[^"]+)", (?:(?:AT_FDCWD|\d+<[^>]*>), )?"(?P<dst>[^"]+)"'
)
_WRITING = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"}


@dataclass
class Traced:
    writes: list[tuple[str, str]]  # (path, flags) opened for writing
    renames: list[tuple[str, str]]  # (source, destination)
    result: subprocess.CompletedProcess[str]


def traced(env: Env, trace: Path, *args: str) -> Traced:
    strace = shutil.which("strace")
    assert strace, "strace is missing: scripts/debian-packages lists it; run make install"
    command = [strace, "-f", "-qq", "-s", "4096", "-o", str(trace), "-e", "trace=openat,rename,renameat,renameat2"]
    result = subprocess.run([*command, CERTKEEPER, *args], env=env, capture_output=True, text=True, timeout=120)
    writes, renames = [], []
    for line in trace.read_text().splitlines():
        if (opened := _OPEN.search(line)) and _WRITING & set(opened["flags"].split("|")):
            writes.append((opened["path"], opened["flags"]))
        elif renamed := _RENAME.search(line):
            renames.append((renamed["src"], renamed["dst"]))
    return Traced(writes, renames, result)


def final_name(path: str, store: Path) -> bool:
    """A name a reader may open: inside the store and not a temporary (dot) file or staging directory."""
    if not Path(path).is_relative_to(store):
        return False
    return not any(part.startswith(".") for part in Path(path).relative_to(store).parts)


@pytest.mark.parametrize("second", [("issue", "--force"), ("renew", "--force")], ids=["reissue", "renew"])
def test_no_final_name_is_ever_opened_for_writing(
    env: Env, store: Path, tmp_path: Path, second: tuple[str, ...]
) -> None:
    names = ("atomic.test", "www.atomic.test")
    first = traced(env, tmp_path / "first.trace", "issue", *names)
    assert first.result.returncode == 0, first.result.stderr
    again = traced(env, tmp_path / "second.trace", *second, *(names if second[0] == "issue" else ()))
    assert again.result.returncode == 0, again.result.stderr

    lineage = store / "atomic.test"
    for run in (first, again):
        in_place = [(p, f) for p, f in run.writes if final_name(p, store)]
        assert not in_place, f"written in place where a reader may see it half done: {in_place}"
        assert any(Path(p).is_relative_to(store) for p, _ in run.writes), "the trace saw no store writes at all"
        arrived = {Path(dst) for _, dst in run.renames}
        assert lineage / "state.json" in arrived, "state.json did not arrive by rename"
        assert lineage / "current" in arrived, "current was not swapped by rename"

    # The account and every version arrived under its final name by a rename too.
    account = next(p for p in (store / "accounts").iterdir() if not p.name.startswith("."))
    arrived_first = {Path(dst) for _, dst in first.renames}
    assert account in arrived_first, "the account (key and URL as one directory) was not renamed into place"
    assert {p.name for p in account.iterdir()} == {"key.pem", "account.json"}
    versions = {Path(dst) for _, dst in first.renames + again.renames if Path(dst).parent == lineage / "versions"}
    assert versions == {lineage / "versions" / "1", lineage / "versions" / "2"}, versions
