"""What is in the two images: size, labels, user, version, and a Python that sees only the image."""

from __future__ import annotations

import json
import re
import sys

import pytest

from testbench import containers, images

NAMES = [spec.name for spec in images.IMAGES]
SITE = f"{images.VENV}/lib/python3.11/site-packages"

# Run inside the image: import every certkeeper module (and so everything it imports), then report
# where each module and sys.path entry came from.
_WHERE = """
import importlib, json, os, pkgutil, sys
import certkeeper
for module in pkgutil.walk_packages(certkeeper.__path__, "certkeeper."):
    importlib.import_module(module.name)
files = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
print(json.dumps({"path": sys.path, "files": files, "env": dict(os.environ), "prefix": sys.prefix}))
"""


@pytest.mark.parametrize("name", NAMES)
def test_the_image_is_small_labelled_and_runs_as_an_unprivileged_user(
    name: str, built: dict[str, images.Built]
) -> None:
    image = built[name]
    size = images.image_size(image.reference)
    assert size <= 120_000_000, f"{name} is {size / 1e6:.0f} MB uncompressed, over the 120 MB goal"
    labels = containers.labels(image.reference)
    assert labels["org.opencontainers.image.version"] == images.project_version()
    assert labels["org.opencontainers.image.revision"] == images.revision()
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", labels["org.opencontainers.image.revision"])
    config = containers.oci_config(image.reference)["config"]
    assert config["User"] == f"{images.UID}:{images.UID}"
    assert image.archive.is_file(), "make images writes an oci-archive for podman load / ctr import"


@pytest.mark.parametrize("name", NAMES)
def test_version_names_the_release_and_the_commit_it_was_built_from(name: str, built: dict[str, images.Built]) -> None:
    with containers.container(built[name].reference) as box:
        result = box.run([box.entrypoint[0], "--version"])
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"certkeeper {images.project_version()} (revision {images.revision()})"
        # --help lists the sub-commands without importing them, from the image too.
        help_text = box.run([box.entrypoint[0], "--help"])
        assert help_text.returncode == 0 and "proxy" in help_text.stdout


@pytest.mark.parametrize("name", NAMES)
def test_python_in_an_empty_environment_imports_only_from_the_image(name: str, built: dict[str, images.Built]) -> None:
    with containers.container(built[name].reference) as box:
        result = box.run(["/usr/bin/env", "-i", f"{images.VENV}/bin/python", "-c", _WHERE])
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert seen["env"] == {} or set(seen["env"]) <= {"LC_CTYPE"}, seen["env"]
        assert seen["prefix"] == images.VENV
        allowed = ("/usr/lib/python3.11", "/usr/lib/python311.zip", SITE)
        assert all(p.startswith(allowed) for p in seen["path"] if p), seen["path"]
        outside = [f for f in seen["files"] if not f.startswith(("/usr/lib/python3.11/", f"{SITE}/"))]
        assert outside == [], f"modules loaded from outside the image's Python: {outside}"
        assert any(f.startswith(f"{SITE}/certkeeper/") for f in seen["files"])
        assert any(f.startswith(f"{SITE}/cryptography/") for f in seen["files"])
        # Nothing of the host's Python is visible in there: not the tests' virtualenv, not /usr/local.
        host = box.run(["/bin/sh", "-c", f'test -e "{sys.prefix}" || ls /usr/local/lib/python3*/*-packages/*'])
        assert host.returncode != 0 and host.stdout == "", host.stdout


@pytest.mark.parametrize("name", NAMES)
def test_byte_code_is_there_for_everything_certkeeper_imports(name: str, built: dict[str, images.Built]) -> None:
    """On a read-only root nothing can be compiled and cached at start: the image must carry it."""
    with containers.container(built[name].reference) as box:
        baseline = box.run(["/bin/true"])
        assert baseline.returncode == 0
        before = box.written()
        # As root, so that Python would write any byte code that is missing.
        result = box.run([f"{images.VENV}/bin/python", "-c", _WHERE], user="0:0")
        assert result.returncode == 0, result.stderr
        changed = [path for path, digest in box.written().items() if before.get(path) != digest]
        assert [path for path in changed if path.endswith(".pyc")] == []


@pytest.mark.parametrize("name", NAMES)
def test_no_pip_caches_docs_or_build_tools_are_left_in_the_image(name: str, built: dict[str, images.Built]) -> None:
    with containers.container(built[name].reference) as box:
        patterns = {
            "docs": "/usr/share/doc/**",
            "man": "/usr/share/man/**",
            "caches": "/root/.cache/**",
            "home_cache": f"{images.STORE_DIR}/.cache/**",
            "pip": f"{SITE}/pip*/**",
            "setuptools": f"{SITE}/setuptools*/**",
            "perl": "/usr/bin/perl*",
            "tmp": "/tmp/**",
        }
        script = (
            "import glob, json, os, sys; patterns = json.loads(sys.argv[1]); print(json.dumps({k: ["
            "f for f in glob.glob(v, recursive=True) if os.path.isfile(f)] for k, v in patterns.items()}))"
        )
        result = box.run([f"{images.VENV}/bin/python", "-c", script, json.dumps(patterns)], user="0:0")
        assert result.returncode == 0, result.stderr
        found = json.loads(result.stdout)
        assert [d for d in found.pop("docs") if not d.endswith("/copyright")] == []
        assert found == {k: [] for k in found}
