"""kube-apiserver restarted three times while the controller issues 20 certificates, on a private control
plane: every certificate ends Ready with its own key, with one order each (none twice, so no Secret can
be overwritten with an older certificate), and the rate-limit ledger Secret counted them."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Secret
from private_plane import apply, install_controller_resources, ready
from runkit import certificate_manifest, certkeeper_controller, controller_args, secret_bytes, wait_for
from test_controller_outage import private_cluster

from certkeeper.crypto import key_matches_cert, split_pem_chain
from testbench import cluster as bench
from testbench.ari import AcmeFront

__all__ = ["private_cluster"]  # the fixture, shared with the outage test
CERTS, RESTARTS = 20, 3


def test_three_api_server_restarts_mid_run_cause_no_duplicate_order(
    private_cluster: bench.Cluster, ari: AcmeFront, tmp_path: Path
) -> None:
    cluster = private_cluster
    install_controller_resources(cluster, ari)
    ari.post_delay_s = 0.05  # spread the orders over the restarts
    started = time.monotonic()
    args = controller_args("ctl", ari.http_port, "--concurrency=4")
    with certkeeper_controller(cluster.kubeconfig, tmp_path / "controller.log", *args) as run:
        for i in range(CERTS):
            apply(cluster, certificate_manifest(f"r{i}", [f"r{i}.restart.example.com"]))
        for mark in (3, 8, 13)[:RESTARTS]:
            wait_for(f"{mark} orders", lambda m=mark: len(ari.recorded_orders()) >= m, timeout=120, run=run)
            cluster.restart("kube-apiserver", down_s=1.0)
        for i in range(CERTS):
            wait_for(f"r{i} Ready", lambda i=i: ready(cluster, f"r{i}"), timeout=180, run=run)
        assert run.stop() == 0
    orders = sorted(o["identifiers"][0]["value"] for o in ari.recorded_orders())
    client = Client(KubeConfig.from_file(cluster.kubeconfig), namespace="ctl")
    mismatches = 0
    for i in range(CERTS):
        secret = client.get(Secret, f"r{i}", namespace="ctl")
        leaf = split_pem_chain(secret_bytes(secret, "tls.crt"))[0]
        mismatches += not key_matches_cert(secret_bytes(secret, "tls.key"), leaf)
    ledger = client.get(Secret, "certkeeper-rate-limits", namespace="ctl")
    assert ledger.data is not None
    counted = sum(
        1 for e in json.loads(base64.b64decode(ledger.data["ratelimits.json"]))["events"] if e["kind"] == "order"
    )
    client.close()
    print(f"kube-apiserver restarts: {RESTARTS}, {CERTS} certificates, {len(orders)} orders, ledger {counted}, "
          f"{mismatches} key mismatches, {time.monotonic() - started:.0f} s")  # fmt: skip
    assert orders == sorted(f"r{i}.restart.example.com" for i in range(CERTS)), "an order was placed twice"
    assert mismatches == 0
    assert counted >= len(orders)
