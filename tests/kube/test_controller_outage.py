"""``certkeeper controller`` through an API server restart, on a private control plane (so the restart
cannot disturb the other tests' cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Secret
from private_plane import apply, install_controller_resources, ready, running_plane
from runkit import certificate_manifest, certkeeper_controller, controller_args, wait_for

from testbench import cluster as bench
from testbench.ari import AcmeFront


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[bench.Cluster]:
    yield from running_plane(tmp_path / "kube")


def test_api_server_restart_is_survived_with_no_duplicate_order(
    private_cluster: bench.Cluster, ari: AcmeFront, tmp_path: Path
) -> None:
    cluster = private_cluster
    install_controller_resources(cluster, ari)
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
