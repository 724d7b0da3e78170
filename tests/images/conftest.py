"""Fixtures for the image tests: the two images (built once, cached), run with ``buildah run``.

- ``built`` (session): name -> ``testbench.images.Built`` for ``certkeeper`` and ``certkeeper-proxy``.
- ``owned_dir()``: a new directory owned by the images' user (65532), for a bind mount it writes to.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbench import containers, images


@pytest.fixture(scope="session")
def built() -> dict[str, images.Built]:
    return containers.built()


@pytest.fixture
def owned_dir() -> Iterator[Callable[[], Path]]:
    made: list[Path] = []

    def make() -> Path:
        path = Path(tempfile.mkdtemp(prefix="ckimage-"))
        os.chown(path, images.UID, images.UID)
        path.chmod(0o700)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
