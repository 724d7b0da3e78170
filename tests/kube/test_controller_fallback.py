"""A fallback CA for the declarative controller, against the real control plane and two Pebble instances:
the first CA (Pebble behind the ACME front) refuses as told; the second (its own Pebble, its own root)
issues; the Certificate's status says which CA issued it, and renewal goes back to the first CA.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from lightkube import Client
from runkit import certificate_manifest, condition, get_secret, issuer_manifest, wait_for
from test_controller import apply, events_for, get, ready, start, verify_secret

from testbench.ari import AcmeFront, private_front
from testbench.pebble import Pebble, start_pebble

if TYPE_CHECKING:
    from conftest import Kubectl

pytestmark = pytest.mark.usefixtures("crds")


@pytest.fixture
def second_ca(tmp_path: Path, ari: AcmeFront) -> Iterator[Pebble]:
    # Validates HTTP-01 on the same port as the first, where the controller answers challenges.
    server = start_pebble(tmp_path / "second-pebble", http_port=ari.http_port)
    try:
        yield server
    finally:
        server.stop()


def fallback_issuer(ari: AcmeFront, second: Pebble, server: str = "") -> dict[str, Any]:
    """The first CA behind ``ari``, then ``second`` (at ``server``: its URL unless it is behind a front)."""
    manifest = issuer_manifest("pebble", ari.directory_url, ari.ca_bundle)
    manifest["spec"]["acme"]["fallback"] = [
        {
            "server": server or second.directory_url,
            "privateKeySecretRef": {"name": "second-account"},
            "caBundle": base64.b64encode(second.ca_bundle.read_bytes()).decode(),
        }
    ]
    return manifest


@pytest.mark.parametrize("fault", ["rateLimited", "unavailable"])
def test_a_refusing_first_ca_falls_back_to_the_second_and_renewal_returns_to_the_first(
    fault: str,
    kube_client: Client,
    namespace: str,
    kubeconfig: Path,
    kubectl: Kubectl,
    ari: AcmeFront,
    second_ca: Pebble,
    tmp_path: Path,
) -> None:
    if fault == "rateLimited":
        ari.rate_limit_retry_after = 3
    else:
        ari.unavailable_retry_after = 3
    apply(kubectl, fallback_issuer(ari, second_ca), certificate_manifest("fb", ["fb.fallback.example.com"]))
    with start(kubeconfig, tmp_path, namespace, ari) as run:
        cert = wait_for("the Certificate Ready", lambda: ready(kubectl, "fb"), timeout=90, run=run)
        assert cert["status"]["issuedBy"] == second_ca.directory_url
        secret = get_secret(kube_client, namespace, "fb")
        assert secret is not None
        verify_secret(secret, {"fb.fallback.example.com"}, second_ca.root_pem(), tmp_path)
        assert not ari.recorded_orders()  # the first CA created none: it refused the one asked for
        asked = len(ari.recorded_new_order_times())
        assert asked == 1
        issued = [e.message or "" for e in events_for(kube_client, namespace, "fb") if e.reason == "Issued"]
        assert any(f"issued by the fallback CA {second_ca.directory_url}" in m for m in issued), issued
        # Each CA has its own account, in its own Secret.
        assert get_secret(kube_client, namespace, "second-account") is not None
        # The first CA is healthy again and its Retry-After has passed: the next order (here a new key
        # type makes the certificate due; renewal by time takes the same path) goes back to it.
        ari.reset()
        time.sleep(3.5)
        generation = cert["metadata"]["generation"]
        kubectl("patch", "certificate.certkeeper.io", "fb", "--type=merge", "-p",
                '{"spec": {"privateKey": {"algorithm": "RSA", "size": 2048}}}')  # fmt: skip

        def renewal_stored() -> dict[str, Any] | None:
            found = ready(kubectl, "fb")
            if found and found["metadata"]["generation"] > generation and found["status"]["revision"] == 2:
                return found
            return None

        renewed = wait_for("the renewal stored", renewal_stored, timeout=90, run=run)
        assert renewed["status"]["issuedBy"] == ari.directory_url
        (order,) = ari.recorded_orders()
        # No ARI ``replaces``: the first CA did not issue the certificate being replaced.
        assert "replaces" not in order, order
        secret = get_secret(kube_client, namespace, "fb")
        assert secret is not None
        verify_secret(secret, {"fb.fallback.example.com"}, ari.pebble.root_pem(), tmp_path)
        # One fallback in the log, for the first order; none for the renewal.
        assert run.log.count("ordering from the fallback CA") == 1, run.log


def test_a_wrong_fallback_list_is_refused_in_the_status_with_no_order(
    namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    manifest = issuer_manifest("pebble", ari.directory_url, ari.ca_bundle)
    # The first CA again, with its own account Secret: a fallback that would share its limits.
    manifest["spec"]["acme"]["fallback"] = [{"server": ari.directory_url, "privateKeySecretRef": {"name": "x"}}]
    apply(kubectl, manifest, certificate_manifest("fbbad", ["fbbad.example.com"]))
    with start(kubeconfig, tmp_path, namespace, ari) as run:

        def refused() -> dict[str, Any] | None:
            found = condition(get(kubectl, "certificate.certkeeper.io", "fbbad"))
            return found if found.get("reason") == "IssuerNotReady" else None

        found = wait_for("the Certificate refused", refused, timeout=30, run=run)
        assert "acme.fallback[0].server" in found["message"] and "listed twice" in found["message"], found
        issuer = condition(get(kubectl, "issuer.certkeeper.io", "pebble"))
        assert issuer["status"] == "False" and issuer["reason"] == "InvalidIssuer", issuer
        assert not ari.recorded_new_order_times()


def test_certificates_falling_back_at_once_register_one_account_at_the_second_ca(
    namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    # The second CA behind a front of its own, which counts the accounts it registered.
    with private_front(tmp_path / "second", http_port=ari.http_port) as second:
        ari.rate_limit_retry_after = 3600
        names = [f"fb{i}.together.example.com" for i in range(3)]
        apply(kubectl, fallback_issuer(ari, second.pebble, second.directory_url),
              *[certificate_manifest(f"fb{i}", [name]) for i, name in enumerate(names)])  # fmt: skip
        with start(kubeconfig, tmp_path, namespace, ari) as run:
            for i in range(len(names)):
                wait_for(f"fb{i} Ready", lambda i=i: ready(kubectl, f"fb{i}"), timeout=90, run=run)  # type: ignore[misc]
            assert run.stop() == 0
        assert len(second.recorded_orders()) == len(names)
        assert len(second.recorded_accounts()) == 1, second.recorded_accounts()
