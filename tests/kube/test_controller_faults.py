"""The controller SIGKILLed at random moments while it issues many certificates, against the real control
plane and Pebble behind the ACME front: every certificate ends valid with its own key, few orders beyond
one per certificate, and the cluster's rate-limit ledger (Secret certkeeper-rate-limits) counted them.

``make test`` runs 20 certificates and 3 kills; ``make faults-long`` (CERTKEEPER_FAULTS_LONG=1) 100 and 10.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from lightkube import Client
from runkit import certificate_manifest, get_secret, issuer_manifest, secret_bytes, wait_for
from test_controller import apply, ready, start

from certkeeper.crypto import cert_info, key_matches_cert, split_pem_chain
from certkeeper.kube.ledger_secret import events_of
from testbench.ari import AcmeFront

if TYPE_CHECKING:
    from conftest import Kubectl

pytestmark = pytest.mark.usefixtures("crds")
LONG = os.environ.get("CERTKEEPER_FAULTS_LONG") == "1"
CERTS, KILLS = (100, 10) if LONG else (20, 3)


def test_controller_killed_at_random_moments_ends_with_every_certificate_valid_and_few_extra_orders(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    apply(kubectl, *[certificate_manifest(f"k{i}", [f"k{i}.kill.example.com"]) for i in range(CERTS)])
    chance = random.Random(11)
    # Kill moments: after a random number of orders the CA has created, spread over the run.
    marks = sorted(chance.sample(range(1, CERTS), KILLS))
    started = time.monotonic()
    for number, mark in enumerate(marks):
        with start(kubeconfig, tmp_path, namespace, ari, "--concurrency=8", log=f"c{number}") as run:
            wait_for(f"{mark} orders", lambda m=mark: len(ari.recorded_orders()) >= m, timeout=120, run=run)
            time.sleep(chance.uniform(0, 0.3))  # somewhere inside the next orders
            run.proc.kill()
            run.proc.wait(10)
    with start(kubeconfig, tmp_path, namespace, ari, "--concurrency=8", log="last") as run:
        for i in range(CERTS):
            wait_for(f"k{i} Ready", lambda i=i: ready(kubectl, f"k{i}"), timeout=180, run=run)
        assert run.stop() == 0
    orders = len(ari.recorded_orders())
    mismatches = 0
    for i in range(CERTS):
        secret = get_secret(kube_client, namespace, f"k{i}")
        assert secret is not None
        leaf = split_pem_chain(secret_bytes(secret, "tls.crt"))[0]
        mismatches += not key_matches_cert(secret_bytes(secret, "tls.key"), leaf)
        assert cert_info(leaf).names == (f"k{i}.kill.example.com",)
    ledger = get_secret(kube_client, namespace, "certkeeper-rate-limits")
    assert ledger is not None and ledger.data is not None
    events = events_of(ledger)
    counted = sum(1 for e in events if e["kind"] == "order")
    print(f"controller SIGKILL: {KILLS} kills, {CERTS} certificates, {orders} orders, ledger {counted} orders, "
          f"{mismatches} key mismatches, {time.monotonic() - started:.0f} s")  # fmt: skip
    assert mismatches == 0
    assert orders <= 1.2 * CERTS
    # Reserved in the ledger before it is sent: every order the CA created is counted (a killed one too).
    assert counted >= orders
