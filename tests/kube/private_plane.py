"""Helpers for tests that run the controller on a private control plane (tests that restart kube-apiserver
or freeze the controller, which must not disturb the shared cluster): kubectl in namespace ``ctl``, the
CRDs and the Pebble Issuer installed, a Certificate's readiness."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runkit import condition, issuer_manifest

from testbench import cluster as bench
from testbench.ari import AcmeFront

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "ctl"


def running_plane(workdir: Path) -> Iterator[bench.Cluster]:
    """A private control plane for one fixture (whatever scope it has)."""
    bench.build()
    with bench.running(workdir) as running:
        yield running


def kubectl(cluster: bench.Cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run(
        [str(cluster.kubectl), f"--namespace={NAMESPACE}", *args], env=env, input=stdin, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip


def apply(cluster: bench.Cluster, manifest: dict[str, Any]) -> None:
    result = kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(manifest))
    assert result.returncode == 0, result.stderr


def install_controller_resources(cluster: bench.Cluster, ari: AcmeFront) -> None:
    """certkeeper's CRDs, namespace ``ctl`` and an Issuer for the ACME front's Pebble."""
    assert kubectl(cluster, "apply", "-k", str(ROOT / "deploy" / "crds")).returncode == 0
    for name in ("certificates", "issuers", "clusterissuers"):
        kubectl(cluster, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}.certkeeper.io")
    assert kubectl(cluster, "create", "namespace", NAMESPACE).returncode == 0
    apply(cluster, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))


def ready(cluster: bench.Cluster, name: str) -> bool:
    """The Certificate is Ready for its current generation."""
    result = kubectl(cluster, "get", "certificate.certkeeper.io", name, "-o", "json")
    if result.returncode != 0:
        return False
    cert = json.loads(result.stdout)
    found = condition(cert)
    return found.get("status") == "True" and found.get("observedGeneration") == cert["metadata"]["generation"]


class Outage:
    """kube-apiserver stopped at the first newOrder request the ACME front receives (or ``at`` another path)
    before it reaches the CA, so the order is placed while the API is down; started again with the same
    arguments by ``end()``."""

    def __init__(
        self,
        cluster: bench.Cluster,
        ari: AcmeFront,
        *,
        hold_authorizations: bool = False,
        at: str = "",
        hold_request: bool = False,
    ) -> None:
        self.cluster = cluster
        # The request that stopped the API server waits for release() too (it is still in flight after the outage).
        self.hold_request = hold_request
        self._released = threading.Event()
        # Fetching an authorization waits for the API server to be back: the client placing the order can be
        # killed before it presents any challenge (a challenge only it could answer would fail the order).
        self.hold_authorizations = hold_authorizations
        self.down = threading.Event()
        self._resume = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        ari.before_request = self._at_request
        self._at = at or ari.new_order_path

    def _restart(self) -> None:
        def while_down() -> None:
            self.down.set()
            self._resume.wait(300)

        try:
            self.cluster.restart("kube-apiserver", while_down=while_down)
        except BaseException as failure:  # re-raised in the test by end()
            self._failure = failure
            self.down.set()

    def _at_request(self, method: str, path: str) -> None:
        # On the front's event loop: the newOrder request waits here until the API server is down.
        if method == "POST" and path == self._at and self._thread is None:
            self._thread = threading.Thread(target=self._restart, name="apiserver-outage", daemon=True)
            self._thread.start()
            self.down.wait(60)
            if self.hold_request:
                self._released.wait(300)
        elif self.hold_authorizations and method == "POST" and "/authZ/" in path and self.down.is_set():
            self._resume.wait(300)

    def release(self) -> None:
        """Let the held request go on to the CA."""
        self._released.set()

    def end(self) -> None:
        """Start kube-apiserver again; return once it is ready."""
        self._resume.set()
        if self._thread is not None:
            self._thread.join(120)
        if self._failure is not None:
            raise self._failure
