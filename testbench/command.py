"""The ``certkeeper`` command the tests, benchmarks and demo run: the one installed beside this Python."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Protocol

_BESIDE_PYTHON = Path(sys.executable).with_name("certkeeper")
# A virtualenv's console script sits beside its python; otherwise whatever PATH finds.
CERTKEEPER = str(_BESIDE_PYTHON) if _BESIDE_PYTHON.exists() else (shutil.which("certkeeper") or "certkeeper")

Env = dict[str, str]


class Run(Protocol):  # the tests' ``certkeeper`` fixture: the command run with an environment
    def __call__(self, env: Env, *args: str, timeout: float = ...) -> subprocess.CompletedProcess[str]: ...


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``certkeeper: error:`` line a refused command prints (fails the test otherwise)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("certkeeper: error: ")
    return lines[0]
