"""``certkeeper --version``: the release and the source revision (written into images at build time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from certkeeper import __version__

CERTKEEPER = str(Path(sys.executable).with_name("certkeeper"))


def test_version_from_a_source_checkout_says_the_revision_is_unknown() -> None:
    result = subprocess.run([CERTKEEPER, "--version"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    # The image build writes certkeeper/_build.py into the wheel it builds, never into the checkout.
    assert result.stdout.strip() == f"certkeeper {__version__} (revision unknown)"
