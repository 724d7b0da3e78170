"""Helpers for the ``certkeeper run`` tests: start it as a user would, read what it wrote, watch pods."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx2
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod, ReplicationController, Secret

from testbench.command import CERTKEEPER
from testbench.pebble import Pebble

DOMAINS = "example.com foo.example.com"
SECRET = "certs-example.com"
RC = "nginx-ssl-proxy-api"
RC_LABELS: dict[str, Any] = {"name": RC}


@dataclass
class Run:
    """One ``certkeeper run`` process and its log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"certkeeper run did not stop within {timeout:.0f} s of SIGTERM") from None


def seed_env(pebble: Pebble, namespace: str, kubeconfig: Path, **extra: str) -> dict[str, str]:
    """The post's environment for the letsencrypt container, pointed at Pebble and the test cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTKEEPER_")}
    env.update(
        EMAIL="admin@example.com",
        DOMAINS=DOMAINS,
        RC_NAMES=RC,
        LETSENCRYPT_ENDPOINT=pebble.directory_url,
        NAMESPACE=namespace,
        CERTKEEPER_CA_BUNDLE=str(pebble.ca_bundle),
        CERTKEEPER_HTTP_BIND=f"127.0.0.1:{pebble.http_port}",
        KUBECONFIG=str(kubeconfig),
    )
    env.update(extra)
    return env


@contextmanager
def certkeeper_run(env: Mapping[str, str], log_path: Path, *args: str, command: str = "run") -> Iterator[Run]:
    with log_path.open("ab") as log:
        proc = subprocess.Popen([CERTKEEPER, command, *args], env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    run = Run(proc, log_path)
    try:
        yield run
    finally:
        if run.alive():
            run.stop()


def run_to_exit(env: Mapping[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CERTKEEPER, "run"], env=dict(env), capture_output=True, text=True, timeout=timeout)


def get_secret(client: Client, namespace: str, name: str = SECRET) -> Secret | None:
    try:
        return client.get(Secret, name, namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise


def secret_bytes(secret: Secret, key: str) -> bytes:
    assert secret.data is not None and key in secret.data, f"the Secret has no {key}"
    return base64.b64decode(secret.data[key])


def make_rc(client: Client, namespace: str, replicas: int = 2) -> ReplicationController:
    rc = cast(
        ReplicationController,
        ReplicationController.from_dict(
            {
                "metadata": {"name": RC, "namespace": namespace},
                "spec": {
                    "replicas": replicas,
                    "selector": RC_LABELS,
                    "template": {
                        "metadata": {"labels": RC_LABELS},
                        "spec": {"containers": [{"name": "nginx", "image": "ployst/nginx-ssl-proxy:0.0.3"}]},
                    },
                },
            }
        ),
    )
    return client.create(rc)


def is_ready(pod: Pod) -> bool:
    if pod.metadata is None or pod.metadata.deletionTimestamp is not None or pod.status is None:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def ready_pods(client: Client, namespace: str) -> set[str]:
    pods = client.list(Pod, namespace=namespace, labels=RC_LABELS)
    return {p.metadata.name for p in pods if is_ready(p) and p.metadata and p.metadata.name}


@dataclass
class ReadyWatch:
    """Counts the RC's Ready pods after every pod event; ``minimum`` is the lowest count seen.

    ``seen`` holds every pod name that existed while watching, ``deleted`` each pod that went away."""

    client: Client
    namespace: str
    ready: dict[str, bool] = field(default_factory=dict)
    minimum: int | None = None
    events: int = 0
    version: str = ""
    seen: set[str] = field(default_factory=set)
    deleted: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: threading.Event = field(default_factory=threading.Event)

    def start(self, initial: int) -> None:
        def watch() -> None:
            listing = self.client.list(Pod, namespace=self.namespace, labels=RC_LABELS)
            pods = list(listing)
            self.version = cast(Any, listing).resourceVersion
            self.ready = {p.metadata.name: is_ready(p) for p in pods if p.metadata and p.metadata.name}
            self.seen.update(self.ready)
            self.minimum = sum(self.ready.values())
            assert self.minimum >= initial, f"only {self.minimum} Ready pods when the watch started"
            self._started.set()
            while not self._stop.is_set():
                try:
                    self._follow()
                except httpx2.HTTPError:
                    continue  # the server ended the watch; resume from the last version seen

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        assert self._started.wait(20), "the pod watch did not start"

    def _follow(self) -> None:
        for kind, pod in self.client.watch(
            Pod, namespace=self.namespace, labels=RC_LABELS, resource_version=self.version, server_timeout=2
        ):
            assert pod.metadata is not None and pod.metadata.name is not None
            self.version = pod.metadata.resourceVersion or self.version
            if kind == "DELETED":
                self.ready.pop(pod.metadata.name, None)
                self.deleted.append(pod.metadata.name)
            else:
                self.ready[pod.metadata.name] = is_ready(pod)
                self.seen.add(pod.metadata.name)
            self.events += 1
            count = sum(self.ready.values())
            self.minimum = count if self.minimum is None else min(self.minimum, count)
            if self._stop.is_set():
                return

    def stop(self) -> None:
        # lightkube's watch reconnects by itself, so the (daemon) thread ends at its next pod event,
        # at the latest when the test's namespace is deleted; the counts are final already.
        self._stop.set()
        if self._thread is not None:
            self._thread.join(0.5)


def wait_for(what: str, predicate: Any, timeout: float = 60.0, run: Run | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if run is not None and not run.alive():
            raise AssertionError(f"{what}: certkeeper run exited {run.proc.returncode}; log:\n{run.log[-3000:]}")
        if time.monotonic() > deadline:
            tail = f"; certkeeper log:\n{run.log[-3000:]}" if run is not None else ""
            raise AssertionError(f"{what}: not reached after {timeout:.0f} s{tail}")
        time.sleep(0.1)


# -- certkeeper controller ---------------------------------------------------------------------------


def controller_env(kubeconfig: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTKEEPER_")}
    env["KUBECONFIG"] = str(kubeconfig)
    return env


def controller_args(namespace: str, http_port: int, *extra: str) -> list[str]:
    """The controller confined to the test's namespace, answering HTTP-01 where Pebble validates."""
    return [
        f"--namespace={namespace}",
        f"--watch-namespace={namespace}",
        f"--http-bind=127.0.0.1:{http_port}",
        "--lease-duration=4",
        *extra,
    ]


@contextmanager
def certkeeper_controller(kubeconfig: Path, log_path: Path, *args: str) -> Iterator[Run]:
    with certkeeper_run(controller_env(kubeconfig), log_path, *args, command="controller") as run:
        yield run


def issuer_manifest(name: str, directory_url: str, ca_bundle: Path, kind: str = "Issuer") -> dict[str, Any]:
    return {
        "apiVersion": "certkeeper.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            "acme": {
                "server": directory_url,
                "email": "admin@example.com",
                "privateKeySecretRef": {"name": f"{name}-account"},
                "caBundle": base64.b64encode(ca_bundle.read_bytes()).decode(),
                "solvers": [{"http01": {}}],
            }
        },
    }


def certificate_manifest(name: str, names: list[str], issuer: str = "pebble", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "certkeeper.io/v1",
        "kind": "Certificate",
        "metadata": {"name": name},
        "spec": {"secretName": name, "dnsNames": names, "issuerRef": {"name": issuer, "kind": "Issuer"}, **spec},
    }


def condition(obj: Mapping[str, Any], kind: str = "Ready") -> dict[str, Any]:
    for item in (obj.get("status") or {}).get("conditions") or ():
        if item.get("type") == kind:
            return dict(item)
    return {}
