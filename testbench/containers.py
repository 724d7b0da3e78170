"""Running the built images in tests: ``buildah run --isolation chroot``, no container runtime needed.

Chroot isolation shares the host's network (so Pebble and the test cluster on 127.0.0.1 are reachable)
and process ids (so a test can see the container's processes), and runs as the image's user. Each
``Container`` is a fresh working container from an image, removed afterwards; its environment is the
image's plus what the test sets, nothing from the test's own process.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import yaml

from testbench import images


@functools.cache
def built() -> dict[str, images.Built]:
    """Both images, built once per test process (a quick no-op when ``make images`` ran first)."""
    log_path = images.cache_dir() / "build.log"
    images.cache_dir().mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        return {b.spec.name: b for b in images.build(log)}


def oci_config(reference: str) -> dict[str, Any]:
    config: dict[str, Any] = images.image_config(reference)["OCIv1"]  # type: ignore[assignment]
    return config


@dataclass(frozen=True)
class Mount:
    destination: str
    source: Path | None = None  # None: a tmpfs
    read_only: bool = False

    def option(self) -> str:
        if self.source is None:
            return f"type=tmpfs,destination={self.destination}"
        # buildah's bind mounts are read-only unless told otherwise.
        access = "ro" if self.read_only else "rw"
        return f"type=bind,source={self.source},destination={self.destination},{access}"


@dataclass
class Running:
    """A program started in a container: ``buildah run`` on the host, the program under it."""

    proc: subprocess.Popen[bytes]
    stop_signal: str

    def processes(self) -> list[psutil.Process]:
        """The program's processes (not buildah's own), the entry point's first."""
        tree = psutil.Process(self.proc.pid).children(recursive=True)
        execs = [p for p in tree if p.cmdline()[:1] == ["buildah-chroot-exec"]]
        if not execs:
            return []
        found: list[psutil.Process] = execs[0].children(recursive=True)
        return found

    def stop(self, timeout: float = 30) -> int:
        """What the kubelet does: the image's stop signal to the entry point; returns the exit code.

        Whatever of the program is still running afterwards is killed: without a PID namespace
        nothing else would end, say, nginx workers whose parent died.
        """
        processes = self.processes() if self.proc.poll() is None else []
        for process in processes[:1]:
            process.send_signal(getattr(signal, self.stop_signal))
        if not processes:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"the container did not stop within {timeout:.0f} s of {self.stop_signal}") from None
        finally:
            for process in processes:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()


@dataclass
class Container:
    reference: str
    name: str
    mounts: list[Mount] = field(default_factory=list)

    @property
    def entrypoint(self) -> list[str]:
        config = oci_config(self.reference)["config"]
        return [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]

    def set_env(self, env: Mapping[str, str]) -> None:
        args = [f"--env={k}={v}" for k, v in env.items()]
        subprocess.run([*images.buildah_command(), "config", *args, self.name], check=True, capture_output=True)

    def _run_command(self, argv: Sequence[str], user: str | None) -> list[str]:
        options = [f"--mount={m.option()}" for m in self.mounts]
        if user is not None:
            options.append(f"--user={user}")
        return [*images.buildah_command(), "run", "--isolation", "chroot", *options, self.name, "--", *argv]

    def run(
        self, argv: Sequence[str], *, user: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._run_command(argv, user), capture_output=True, text=True, timeout=timeout)

    def start(self, argv: Sequence[str], log: IO[bytes], *, user: str | None = None) -> Running:
        """Start ``argv`` in the background, its output to ``log``."""
        proc = subprocess.Popen(self._run_command(argv, user), stdout=log, stderr=subprocess.STDOUT)
        return Running(proc, oci_config(self.reference)["config"].get("StopSignal") or "SIGTERM")

    def _layer_dir(self) -> Path:
        merged = subprocess.run(
            [*images.buildah_command(), "mount", self.name], capture_output=True, text=True, check=True
        ).stdout.strip()
        return Path(merged).parent / "diff"

    def written(self) -> dict[str, str]:
        """Every path the container changed in the image's file system, with a digest of its content."""
        upper = self._layer_dir()
        try:
            found: dict[str, str] = {}
            for path in sorted(upper.rglob("*")):
                relative = "/" + str(path.relative_to(upper))
                if path.is_symlink():
                    found[relative] = "-> " + str(path.readlink())
                elif path.is_file():
                    found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    found[relative] = f"dir {oct(path.stat().st_mode)}"
            return found
        finally:
            subprocess.run([*images.buildah_command(), "umount", self.name], capture_output=True, check=False)


@contextmanager
def container(reference: str, mounts: Sequence[Mount] = ()) -> Iterator[Container]:
    name = subprocess.run(
        [*images.buildah_command(), "from", "--pull=false", reference], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield Container(reference, name, list(mounts))
    finally:
        subprocess.run([*images.buildah_command(), "rm", name], capture_output=True, check=False)


def pod_spec(manifest_path: Path) -> dict[str, Any]:
    """The pod template of the Deployment in a manifest file, as the kubelet would get it."""
    for document in yaml.safe_load_all(manifest_path.read_text()):
        if document and document.get("kind") == "Deployment":
            spec: dict[str, Any] = document["spec"]["template"]["spec"]
            return spec
    raise ValueError(f"{manifest_path} holds no Deployment")


def pod_mounts(spec: dict[str, Any], sources: Mapping[str, Path]) -> list[Mount]:
    """The first container's volumeMounts: an emptyDir becomes a tmpfs, any other volume a bind
    mount of ``sources[volume name]``."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = []
    for mount in spec["containers"][0].get("volumeMounts", []):
        if "emptyDir" in volumes[mount["name"]]:
            mounts.append(Mount(mount["mountPath"]))
        else:
            mounts.append(Mount(mount["mountPath"], sources[mount["name"]], bool(mount.get("readOnly"))))
    return mounts


def labels(reference: str) -> dict[str, str]:
    found: dict[str, str] = oci_config(reference)["config"].get("Labels") or {}
    return found


def manifest(reference: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(str(images.image_config(reference)["Manifest"]))
    return data
