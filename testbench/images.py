"""The two container images, built and cached without any image registry.

``certkeeper`` (``run``, ``issue``, ``renew``, ``status``) and ``certkeeper-proxy`` (the same plus
nginx) are assembled in three steps:

1. a Debian root filesystem from ``mmdebstrap`` (the essential set plus python3 and ca-certificates,
   plus nginx-light for the proxy), from the machine's own Debian sources, without documentation,
   manual pages, locales, ``__pycache__``, perl or the package tools' caches: one layer, cached as a
   base image keyed by the package list and the sources;
2. certkeeper's wheel and its dependencies at the versions pinned in ``requirements.lock`` (wheels
   from the host's pip cache or PyPI), installed with the image's own Python into a virtualenv at
   ``/opt/certkeeper``, and byte-compiled only for the modules certkeeper imports; ``buildah`` sets
   the user (65532), entry point, ports and OCI labels: the second layer;
3. the git revision in ``certkeeper/_build.py`` and the revision label: a last layer of a few kB;
   ``buildah`` commits the image and writes an ``oci-archive`` beside the cache.

Everything lives in ``~/.cache/certkeeper/images`` (or under ``$XDG_CACHE_HOME``): a private
containers-storage (``storage/``), and ``NAME-VERSION.oci.tar``. An image is rebuilt only when its
inputs change (the lock, the source, the package list, this file; the git revision is a last, tiny
layer of its own); concurrent builds wait for one another.

    python -m testbench.images build     # both images; a no-op when cached
    python -m testbench.images info      # tags, sizes, archives
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from testbench import aptsources

ROOT = Path(__file__).resolve().parent.parent
UID = 65532
VENV = "/opt/certkeeper"
STORE_DIR = "/var/lib/certkeeper"
PROXY_RUN_DIR = "/run/certkeeper-proxy"
PATH = f"{VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Builds younger than this stay in the cache (other checkouts of the machine may be testing them).
KEEP_SECONDS = 86400
# Bump to rebuild every base image (for a change the mmdebstrap options do not show).
BASE_RECIPE = 1

# What a running image never uses; dpkg skips these paths while unpacking.
_EXCLUDED_PATHS = (
    "/usr/share/man/*",
    "/usr/share/locale/*",
    "/usr/share/doc/*",
    "/usr/share/info/*",
    "/usr/share/lintian/*",
    "/usr/share/bash-completion/*",
    # iconv modules: Python's codecs are its own.
    "/usr/lib/x86_64-linux-gnu/gconv/*",
    "/usr/lib/aarch64-linux-gnu/gconv/*",
)
_KEPT_PATHS = ("/usr/share/locale/locale.alias", "/usr/share/doc/*/copyright")
# Needed to install and configure packages, not to run certkeeper: removed once everything is set up
# (dpkg's database says so, for scanners). dash, coreutils, grep and sed stay for deploy hooks and
# `kubectl exec`.
# Two dpkg runs: the PAM packages' scripts still need perl and debconf; dpkg checks for tar and diff
# only when it starts.
_PURGED = (
    ("libpam-modules", "libpam-modules-bin", "libpam-runtime", "login"),
    (
        "util-linux",
        "tar",
        "diffutils",
        "findutils",
        "ncurses-bin",
        "sysvinit-utils",
        "hostname",
        "bsdutils",
        "perl-base",
        "debconf",
    ),
)


@dataclass(frozen=True)
class ImageSpec:
    name: str
    packages: tuple[str, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    ports: tuple[int, ...]
    stop_signal: str
    description: str
    extra_dirs: tuple[str, ...] = ()


IMAGES = (
    ImageSpec(
        name="certkeeper",
        packages=("python3", "ca-certificates"),
        entrypoint=("certkeeper",),
        cmd=("run",),
        ports=(80,),
        stop_signal="SIGTERM",
        description="certkeeper: ACME certificates issued and renewed, on hosts and in Kubernetes",
    ),
    ImageSpec(
        name="certkeeper-proxy",
        # libnginx-mod-stream: ssl_preread, the TLS-ALPN-01 front (TLS_ALPN_SERVICE).
        packages=("python3", "ca-certificates", "nginx-light", "libnginx-mod-stream"),
        entrypoint=("certkeeper", "proxy"),
        cmd=(),
        ports=(80, 443),
        # Passed on to nginx: SIGQUIT is its graceful shutdown (in-flight requests finish).
        stop_signal="SIGQUIT",
        description="certkeeper proxy: nginx terminating TLS with certificates that hot-reload",
        extra_dirs=(PROXY_RUN_DIR,),
    ),
)


class ImageError(RuntimeError):
    """An image could not be built; the message says which step and why."""


# ------------------------------------------------------------------------------------------ places


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "certkeeper" / "images"


def buildah_command() -> list[str]:
    """``buildah`` with the private store: every call (the tests' too) goes through this."""
    cache = cache_dir()
    return [
        "buildah",
        "--root",
        str(cache / "storage"),
        "--runroot",
        str(cache / "run"),
        "--storage-driver",
        "overlay",
    ]


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def tag(spec: ImageSpec) -> str:
    return f"localhost/{spec.name}:{project_version()}"


def archive(spec: ImageSpec) -> Path:
    return cache_dir() / f"{spec.name}-{project_version()}.oci.tar"


def spec_named(name: str) -> ImageSpec:
    return next(spec for spec in IMAGES if spec.name == name)


# -------------------------------------------------------------------------------------------- keys


def _git(*args: str) -> str:
    result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def revision() -> str:
    """The git commit, ``-dirty`` when the packaged files differ from it; "unknown" outside a checkout."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return "unknown"
    dirty = _git("status", "--porcelain", "--", "src", "pyproject.toml", "requirements.lock", "README.md")
    return f"{commit}-dirty" if dirty else commit


def _source_files() -> list[Path]:
    files = [ROOT / "pyproject.toml", ROOT / "README.md", ROOT / "requirements.lock"]
    for path in sorted((ROOT / "src").rglob("*")):
        parts = path.relative_to(ROOT).parts
        generated = "__pycache__" in parts or any(p.endswith(".egg-info") for p in parts) or path.name == "_build.py"
        if path.is_file() and not generated:
            files.append(path)
    return files


def _digest(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(hashlib.sha256(chunk).digest())
    return h.hexdigest()


def codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.partition("=")[2].strip().strip('"')
    raise ImageError("/etc/os-release names no VERSION_CODENAME: the image's Debian release must match the host's")


def _sources_text() -> str:
    stanzas = aptsources.for_release(aptsources.binary_sources(), codename())
    if not stanzas:
        raise ImageError(f"no Debian {codename()} package source in /etc/apt: mmdebstrap has nowhere to download from")
    return aptsources.render(stanzas)


def base_key(spec: ImageSpec, sources: str) -> str:
    recipe = json.dumps([BASE_RECIPE, _mmdebstrap_options(spec)])
    return _digest(recipe.encode(), sources.encode(), codename().encode())


def app_key(spec: ImageSpec, base: str) -> str:
    inputs = [base.encode(), Path(__file__).read_bytes(), spec.name.encode()]
    for path in _source_files():
        inputs += [str(path.relative_to(ROOT)).encode(), path.read_bytes()]
    return _digest(*inputs)


# ---------------------------------------------------------------------------------------- commands


def _run(cmd: Sequence[str | os.PathLike[str]], log: TextIO, *, capture: bool = False, what: str = "") -> str:
    log.write(f"+ [{time.strftime('%H:%M:%S')}] {' '.join(map(str, cmd))}\n")
    log.flush()
    result = subprocess.run(
        list(map(str, cmd)),
        stdout=subprocess.PIPE if capture else log,
        stderr=log,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        what = what or f"{Path(str(cmd[0])).name} {cmd[1] if len(cmd) > 1 else ''}"
        raise ImageError(f"{what} failed (exit {result.returncode})")
    return result.stdout.strip() if capture else ""


def _buildah(log: TextIO, *args: str | os.PathLike[str], capture: bool = False) -> str:
    return _run([*buildah_command(), *args], log, capture=capture, what=f"buildah {args[0]}")


def image_exists(reference: str) -> bool:
    result = subprocess.run(
        [*buildah_command(), "inspect", "--type", "image", reference], capture_output=True, check=False
    )
    return result.returncode == 0


def image_config(reference: str) -> dict[str, object]:
    out = subprocess.run(
        [*buildah_command(), "inspect", "--type", "image", reference], capture_output=True, text=True, check=True
    ).stdout
    data: dict[str, object] = json.loads(out)
    return data


def image_size(reference: str) -> int:
    """Uncompressed size in bytes: the sum of the layers' tar sizes (buildah keeps them uncompressed)."""
    manifest = json.loads(str(image_config(reference)["Manifest"]))
    return sum(int(layer["size"]) for layer in manifest["layers"])


# ------------------------------------------------------------------------------------------- steps


def _mmdebstrap_options(spec: ImageSpec) -> list[str]:
    """Everything mmdebstrap is told but where to write and read from: the base image's key hashes it."""
    dirs = " ".join(f'"$1{d}"' for d in (STORE_DIR, *spec.extra_dirs))
    hooks = [
        *(f'chroot "$1" dpkg --purge --force-remove-essential --force-depends {" ".join(p)}' for p in _PURGED),
        # Byte code is added later for what certkeeper imports; the postinst's full compile is not kept.
        'find "$1/usr" -name __pycache__ -prune -exec rm -rf {} +',
        'rm -rf "$1"/var/cache/* "$1"/var/log/* "$1"/var/lib/dpkg/*-old',
        f"echo 'certkeeper:x:{UID}:{UID}:certkeeper:{STORE_DIR}:/usr/sbin/nologin' >> \"$1/etc/passwd\"",
        f"echo 'certkeeper:x:{UID}:' >> \"$1/etc/group\"",
        f"mkdir -p {dirs} && chown {UID}:{UID} {dirs} && chmod 0700 {dirs}",
    ]
    return [
        "--variant=essential",
        f"--include={','.join(spec.packages)}",
        # usr-is-merged set up by mmdebstrap itself: the usrmerge package would pull in perl.
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        *(f"--dpkgopt=path-exclude={p}" for p in _EXCLUDED_PATHS),
        *(f"--dpkgopt=path-include={p}" for p in _KEPT_PATHS),
        *(f"--customize-hook={h}" for h in hooks),
    ]


def _build_base(spec: ImageSpec, sources: str, reference: str, work: Path, log: TextIO) -> None:
    sources_file = work / "debian.sources"
    sources_file.write_text(sources)
    rootfs = work / f"{spec.name}-rootfs.tar"
    mode = "--mode=root" if os.geteuid() == 0 else "--mode=unshare"
    cmd: list[str | os.PathLike[str]] = [
        "mmdebstrap",
        mode,
        *_mmdebstrap_options(spec),
        codename(),
        rootfs,
        sources_file,
    ]
    _run(cmd, log)
    container = _buildah(log, "from", "scratch", capture=True)
    try:
        _buildah(log, "add", container, rootfs, "/")
        _buildah(log, "commit", "--format", "oci", "--quiet", container, reference, capture=True)
    finally:
        subprocess.run([*buildah_command(), "rm", container], capture_output=True, check=False)


_TARGET = """
import platform, sys
print(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.libc_ver()[1], platform.machine())
"""


def _wheel_tags(base_ref: str, log: TextIO) -> list[str]:
    """pip options selecting wheels for the image's Python and C library, whatever runs this build."""
    container = _buildah(log, "from", "--pull=false", base_ref, capture=True)
    try:
        out = _buildah(
            log, "run", "--isolation", "chroot", container, "--", "/usr/bin/python3", "-c", _TARGET, capture=True
        )
    finally:
        subprocess.run([*buildah_command(), "rm", container], capture_output=True, check=False)
    version, glibc, machine = out.split()
    glibc_minor = int(glibc.split(".")[1])
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(glibc_minor, 4, -1)]
    platforms += [f"manylinux{name}_{machine}" for name in ("2014", "2010", "1")] + [f"linux_{machine}"]
    abi = "cp" + version.replace(".", "")
    return [
        f"--python-version={version}",
        "--implementation=cp",
        *(f"--abi={a}" for a in (abi, "abi3", "none")),
        *(f"--platform={p}" for p in platforms),
    ]


def _wheelhouse(work: Path, target: list[str], log: TextIO) -> Path:
    """certkeeper's wheel, the locked dependencies' wheels for ``target``, and pip's own."""
    wheels = work / "wheels"
    wheels.mkdir()
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "_build.py")
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    _run([*pip, "wheel", "--no-deps", "--wheel-dir", wheels, source], log)
    built = sorted(wheels.glob("certkeeper-*.whl"))
    if len(built) != 1:
        raise ImageError(f"pip wheel left {len(built)} certkeeper wheels in {wheels}")
    lock = ROOT / "requirements.lock"
    _run([*pip, "download", "--only-binary=:all:", *target, "--dest", wheels, "--constraint", lock, built[0]], log)
    pip_version = subprocess.run([*pip, "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    _run([*pip, "download", "--no-deps", "--dest", wheels, f"pip=={pip_version}"], log)
    return built[0]


_COMPILE = """
import importlib, pkgutil, certkeeper
for module in pkgutil.walk_packages(certkeeper.__path__, "certkeeper."):
    importlib.import_module(module.name)
"""


def _build_app(spec: ImageSpec, base_ref: str, wheel: Path, reference: str, log: TextIO) -> None:
    wheels = wheel.parent
    pip_wheel = next(wheels.glob("pip-*.whl"))
    container = _buildah(log, "from", "--pull=false", base_ref, capture=True)
    try:
        mount = f"type=bind,source={wheels},destination=/tmp/wheels,ro"
        run = [
            "run",
            "--isolation",
            "chroot",
            "--mount",
            mount,
            container,
            "--",
            "/usr/bin/env",
            "-i",
            f"PATH={PATH}",
        ]
        install = (
            f"/usr/bin/python3 -m venv --without-pip {VENV}"
            f" && {VENV}/bin/python /tmp/wheels/{pip_wheel.name}/pip install --no-index --find-links /tmp/wheels"
            " --no-cache-dir --no-compile --disable-pip-version-check --no-warn-script-location --quiet"
            f" /tmp/wheels/{wheel.name}"
            f" && rm -f {VENV}/bin/Activate.ps1 {VENV}/bin/activate*"
        )
        _buildah(log, *run, "PYTHONDONTWRITEBYTECODE=1", "/bin/sh", "-c", install)
        # Byte code for exactly what certkeeper imports (the image's root is read-only at run time, so
        # without it every start would compile these modules again; the rest would be dead weight).
        _buildah(log, *run, f"{VENV}/bin/python", "-c", _COMPILE)
        _buildah(log, *run, f"{VENV}/bin/certkeeper", "--version")
        root = _buildah(log, "mount", container, capture=True)
        try:
            for leftover in ("tmp/wheels", "etc/hosts", "etc/resolv.conf"):
                path = Path(root) / leftover
                if path.is_dir():
                    path.rmdir()
                elif path.exists() and path.stat().st_size == 0:
                    path.unlink()
        finally:
            _buildah(log, "umount", container, capture=True)
        config = [
            "config",
            f"--user={UID}:{UID}",
            "--workingdir=/",
            f"--env=PATH={PATH}",
            f"--env=CERTKEEPER_STORE={STORE_DIR}",
            f"--entrypoint={json.dumps(list(spec.entrypoint))}",
            f"--cmd={' '.join(spec.cmd)}" if spec.cmd else "--cmd=",
            f"--stop-signal={spec.stop_signal}",
            *(f"--port={p}" for p in spec.ports),
            f"--label=org.opencontainers.image.title={spec.name}",
            f"--label=org.opencontainers.image.description={spec.description}",
            f"--label=org.opencontainers.image.version={project_version()}",
            "--label=org.opencontainers.image.licenses=Apache-2.0",
            "--label=org.opencontainers.image.base.name=debian:" + codename(),
            container,
        ]
        _buildah(log, *config)
        _buildah(log, "commit", "--format", "oci", "--quiet", container, reference, capture=True)
    finally:
        subprocess.run([*buildah_command(), "rm", container], capture_output=True, check=False)


_STAMP = """
import pathlib, py_compile, sys, certkeeper
build = pathlib.Path(certkeeper.__file__).with_name("_build.py")
build.write_text('\"\"\"Written by the image build.\"\"\"\\n\\nREVISION = %r\\n' % sys.argv[1])
py_compile.compile(str(build), doraise=True)
"""


def _stamp_revision(app_ref: str, rev: str, reference: str, log: TextIO) -> None:
    """The last, tiny layer: the git revision in ``certkeeper/_build.py`` and the labels that change
    with every commit, so that a commit leaving the packaged files alone rebuilds nothing else."""
    container = _buildah(log, "from", "--pull=false", app_ref, capture=True)
    try:
        _buildah(
            log, "run", "--isolation", "chroot", "--user=0:0", container, "--", f"{VENV}/bin/python", "-c", _STAMP, rev
        )
        root = _buildah(log, "mount", container, capture=True)
        try:
            for leftover in ("etc/hosts", "etc/resolv.conf"):
                path = Path(root) / leftover
                if path.exists() and path.stat().st_size == 0:
                    path.unlink()
        finally:
            _buildah(log, "umount", container, capture=True)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        labels = [
            f"--label=org.opencontainers.image.revision={rev}",
            f"--label=org.opencontainers.image.created={created}",
        ]
        _buildah(log, "config", *labels, container)
        _buildah(log, "commit", "--format", "oci", "--quiet", container, reference, capture=True)
    finally:
        subprocess.run([*buildah_command(), "rm", container], capture_output=True, check=False)


# ------------------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class Built:
    spec: ImageSpec
    tag: str  # NAME:VERSION, what deploy/ names; the latest build on this machine
    reference: str  # NAME:build-KEY: this build, whatever other checkouts build meanwhile
    archive: Path
    revision: str
    seconds: float
    cached: bool


def _check_tools() -> None:
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("buildah", "buildah")):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} not found: run scripts/install (it installs the Debian package {package})")


def build(log: TextIO = sys.stderr) -> list[Built]:
    """Build both images unless cached; tag them NAME:VERSION and write their oci-archives."""
    _check_tools()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sources = _sources_text()
        rev = revision()
        results: list[Built] = []
        keep: set[str] = set()
        with tempfile.TemporaryDirectory(prefix="build-", dir=cache) as tmp:
            work = Path(tmp)
            wheel: Path | None = None
            for spec in IMAGES:
                started = time.monotonic()
                base = base_key(spec, sources)
                base_ref = f"localhost/{spec.name}-base:{base[:16]}"
                app = app_key(spec, base)
                app_ref = f"localhost/{spec.name}-app:{app[:16]}"
                key_ref = f"localhost/{spec.name}:build-{_digest(app.encode(), rev.encode())[:16]}"
                cached = image_exists(key_ref)
                if not cached:
                    if not image_exists(app_ref):
                        if not image_exists(base_ref):
                            log.write(f"images: {spec.name}: Debian root filesystem (mmdebstrap)\n")
                            _build_base(spec, sources, base_ref, work, log)
                        if wheel is None:
                            wheel = _wheelhouse(work, _wheel_tags(base_ref, log), log)
                        log.write(f"images: {spec.name}: certkeeper and its locked dependencies\n")
                        _build_app(spec, base_ref, wheel, app_ref, log)
                    _stamp_revision(app_ref, rev, key_ref, log)
                _buildah(log, "tag", key_ref, tag(spec))
                _export(spec, key_ref, log)
                results.append(Built(spec, tag(spec), key_ref, archive(spec), rev, time.monotonic() - started, cached))
                keep |= {base_ref, app_ref, key_ref}
        forget_old_builds(keep, log)
        return results


def _export(spec: ImageSpec, key_ref: str, log: TextIO) -> None:
    """``NAME-VERSION.oci.tar`` for ``podman load`` / ``ctr images import``; rewritten when the image changed."""
    target = archive(spec)
    stamp = target.with_suffix(".key")
    if target.exists() and stamp.exists() and stamp.read_text() == key_ref:
        return
    partial = target.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    _buildah(log, "push", "--quiet", key_ref, f"oci-archive:{partial}:{tag(spec).removeprefix('localhost/')}")
    partial.rename(target)
    stamp.write_text(key_ref)


def forget_old_builds(keep: set[str], log: TextIO) -> None:
    """Untag this machine's builds and bases older than a day, then delete what no tag points at.

    Other checkouts on the machine (and their test runs) use their own recent builds, so those stay.
    """
    listing = json.loads(_buildah(log, "images", "--json", capture=True) or "[]")
    ours = {f"localhost/{spec.name}{part}" for spec in IMAGES for part in ("", "-base", "-app")}
    for image in listing:
        if time.time() - int(image.get("created", 0)) < KEEP_SECONDS:
            continue
        for name in image.get("names") or []:
            repo, _, version = name.rpartition(":")
            if repo in ours and name not in keep and version != project_version():
                _buildah(log, "rmi", name, capture=True)
    _buildah(log, "rmi", "--prune", capture=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/images", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build both images (a no-op when cached) and print what was built")
    commands.add_parser("info", help="print the images' tags, sizes and archives")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            log_path = cache_dir() / "build.log"
            cache_dir().mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as log:
                try:
                    results = build(log)
                except ImageError as error:
                    print(f"images: {error} (log: {log_path})", file=sys.stderr)
                    return 1
            for built in results:
                how = "cached" if built.cached else f"built in {built.seconds:.0f} s"
                size = image_size(built.reference) / 1e6
                print(f"{built.tag}  {size:.0f} MB  {how}  revision {built.revision}  archive {built.archive}")
            return 0
        for spec in IMAGES:
            if image_exists(tag(spec)):
                print(f"{tag(spec)}  {image_size(tag(spec)) / 1e6:.0f} MB  archive {archive(spec)}")
            else:
                print(f"{tag(spec)}  not built (make images)")
        return 0
    except ImageError as error:
        print(f"images: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
