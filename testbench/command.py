"""The ``certkeeper`` command the tests, benchmarks and demo run: the one installed beside this Python."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

_BESIDE_PYTHON = Path(sys.executable).with_name("certkeeper")
# A virtualenv's console script sits beside its python; otherwise whatever PATH finds.
CERTKEEPER = str(_BESIDE_PYTHON) if _BESIDE_PYTHON.exists() else (shutil.which("certkeeper") or "certkeeper")
