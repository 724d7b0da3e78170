"""The controller and the cluster's rate-limit ledger (Secret certkeeper-rate-limits): an order the ledger
holds back is named in the Certificate's conditions (which limit, until when), nothing reaches the CA, and
/metrics shows the headroom per registered domain."""

from __future__ import annotations

import base64
import datetime
import json
import time
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret
from promtext import value
from runkit import certificate_manifest, certkeeper_controller, controller_args, issuer_manifest, wait_for
from test_controller_metrics import apply, scrape

from certkeeper.kube.ledger_secret import PLAIN_KEY, SECRET_NAME
from testbench.ari import AcmeFront

pytestmark = pytest.mark.usefixtures("crds")
DOMAIN = {"limit": "certificates_per_registered_domain", "registered_domain": "example.com"}
WEEK = 7 * 86400


def ledger_secret(namespace: str, at: list[float]) -> Secret:
    events = [{"kind": "cert", "at": t, "account": "", "names": [f"n{i}.example.com"], "domains": ["example.com"]}
              for i, t in enumerate(at)]  # fmt: skip
    document = json.dumps({"version": 1, "events": events}).encode()
    return Secret(metadata=ObjectMeta(name=SECRET_NAME, namespace=namespace),
                  data={PLAIN_KEY: base64.b64encode(document).decode()})  # fmt: skip  # as written before gzip


def conditions(kubectl: Any, name: str) -> dict[str, dict[str, Any]]:
    result = kubectl("get", "certificate.certkeeper.io", name, "-o", "json", check=False)
    found = json.loads(result.stdout).get("status", {}).get("conditions", []) if result.returncode == 0 else []
    return {c["type"]: c for c in found}


def test_an_order_the_ledger_holds_back_says_which_limit_and_until_when(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Any, ari: AcmeFront, tmp_path: Path
) -> None:
    now = time.time()
    # Two certificates for example.com in the last week, the oldest 2 days ago: the limit (2 / 7 days)
    # has room again 5 days from now.
    kube_client.create(ledger_secret(namespace, [now - 2 * 86400, now - 3600]))
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    apply(kubectl, certificate_manifest("held", ["held.example.com"]))
    args = controller_args(namespace, ari.http_port, "--rate-limits=per-domain=2/7d")
    with certkeeper_controller(kubeconfig, tmp_path / "controller.log", *args) as run:

        def held() -> dict[str, dict[str, Any]] | None:
            found = conditions(kubectl, "held")
            return found if "Issuing" in found and found["Issuing"]["status"] == "False" else None

        found = wait_for("the held order in the Certificate's status", held, timeout=60, run=run)
        free_at = datetime.datetime.fromtimestamp(now - 2 * 86400 + WEEK, datetime.UTC).strftime("%Y-%m-%d %H:%M")
        for kind in ("Ready", "Issuing"):
            message = found[kind]["message"]
            assert found[kind]["status"] == "False", found
            assert "certificates per registered domain" in message and "example.com" in message, message
            assert "2 of 2 in 7 days" in message and f"headroom returns at {free_at} UTC" in message, message
        assert not [p for m, p in ari.recorded_requests() if m == "POST" and "order-plz" in p]

        samples = wait_for("headroom in /metrics", lambda: scrape(ari.http_port), timeout=30, run=run)
        assert value(samples, "certkeeper_ratelimit_limit", **DOMAIN) == 2.0
        assert value(samples, "certkeeper_ratelimit_remaining", **DOMAIN) == 0.0
        reset = value(samples, "certkeeper_ratelimit_reset_seconds", **DOMAIN)
        assert reset is not None and 5 * 86400 - 120 <= reset <= 5 * 86400
        assert run.stop() == 0
