"""``certkeeper controller`` through an API server restart, on a private control plane (so the restart
cannot disturb the other tests' cluster)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Secret
from runkit import certificate_manifest, certkeeper_controller, condition, controller_args, issuer_manifest, wait_for

from testbench import cluster as bench
from testbench.ari import AcmeFront

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[bench.Cluster]:
    bench.build()
    with bench.running(tmp_path / "kube") as running:
        yield running


def kubectl(cluster: bench.Cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run(
        [str(cluster.kubectl), "--namespace=ctl", *args], env=env, input=stdin, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def apply(cluster: bench.Cluster, manifest: dict[str, Any]) -> None:
    result = kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(manifest))
    assert result.returncode == 0, result.stderr


def ready(cluster: bench.Cluster, name: str) -> bool:
    result = kubectl(cluster, "get", "certificate.certkeeper.io", name, "-o", "json")
    if result.returncode != 0:
        return False
    cert = json.loads(result.stdout)
    found = condition(cert)
    return found.get("status") == "True" and found.get("observedGeneration") == cert["metadata"]["generation"]


def test_api_server_restart_is_survived_with_no_duplicate_order(
    private_cluster: bench.Cluster, ari: AcmeFront, tmp_path: Path
) -> None:
    cluster = private_cluster
    assert kubectl(cluster, "apply", "-k", str(ROOT / "deploy" / "crds")).returncode == 0
    for name in ("certificates", "issuers", "clusterissuers"):
        kubectl(cluster, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}.certkeeper.io")
    assert kubectl(cluster, "create", "namespace", "ctl").returncode == 0
    apply(cluster, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    apply(cluster, certificate_manifest("before", ["before.example.com"]))
    client = Client(KubeConfig.from_file(cluster.kubeconfig), namespace="ctl")
    args = controller_args("ctl", ari.http_port)
    with certkeeper_controller(cluster.kubeconfig, tmp_path / "controller.log", *args) as run:
        wait_for("the first Certificate Ready", lambda: ready(cluster, "before"), timeout=60, run=run)
        assert len(ari.recorded_orders()) == 1

        cluster.restart("kube-apiserver", down_s=3.0)
        # Right after the restart: a Secret deleted (the watch must list again to see it) and a new Certificate.
        client.delete(Secret, "before", namespace="ctl")
        apply(cluster, certificate_manifest("after", ["after.example.com"]))
        wait_for("the new Certificate Ready", lambda: ready(cluster, "after"), timeout=90, run=run)

        def restored() -> bool:
            try:
                return client.get(Secret, "before", namespace="ctl") is not None and ready(cluster, "before")
            except Exception:
                return False

        wait_for("the deleted Secret issued again", restored, timeout=60, run=run)
        # One order each for: the first issuance, the new Certificate, the deleted Secret. None twice.
        orders = [sorted(i["value"] for i in o.get("identifiers", [])) for o in ari.recorded_orders()]
        assert sorted(orders) == [["after.example.com"], ["before.example.com"], ["before.example.com"]], orders
        assert "listing" in run.log  # the caches listed again after the outage
        assert run.stop() == 0
    client.close()
