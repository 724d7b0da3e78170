"""The staging rehearsal in a cluster, for ``certkeeper run`` (CERTKEEPER_REHEARSAL) and for an Issuer
(``spec.acme.rehearsal``), against the real control plane and real Pebble as both CAs: "production" is
Pebble behind the ACME front, "staging" a second Pebble behind a front of its own (both count the
orders their CA created, and when), or a second Pebble that cannot validate (it connects to a port
nobody answers on).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Event, Secret
from runkit import (
    SECRET,
    certificate_manifest,
    certkeeper_run,
    condition,
    get_secret,
    issuer_manifest,
    secret_bytes,
    seed_env,
    wait_for,
)
from test_controller import apply, events_for, get, ready, start

from certkeeper.crypto import cert_info, split_pem_chain
from testbench.ari import AcmeFront, private_front
from testbench.pebble import Pebble, free_port, start_pebble

if TYPE_CHECKING:
    from conftest import Kubectl

PASSED = "rehearsal at {} passed"
FAILED = "the rehearsal at {} failed, so production was not asked"


@pytest.fixture
def blind_staging(tmp_path: Path, ari: AcmeFront) -> Iterator[Pebble]:
    """A second Pebble (its own TLS root) whose HTTP-01 validation connects where nobody answers."""
    server = start_pebble(tmp_path / "staging", http_port=free_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def staging(tmp_path: Path, ari: AcmeFront) -> Iterator[AcmeFront]:
    """A second Pebble (its own TLS root) behind a front, validating HTTP-01 where the first one does."""
    with private_front(tmp_path / "staging", http_port=ari.http_port) as front:
        yield front


def rehearsed_first(staging: AcmeFront, production: AcmeFront, names: list[str]) -> None:
    """Each name was ordered at staging, and only after that at production."""
    at_staging, at_production = staging.recorded_order_times(), production.recorded_order_times()
    for name in names:
        assert at_staging[name] < at_production[name], (name, at_staging, at_production)


def both_roots(tmp_path: Path, *cas: Pebble) -> Path:
    """One CA bundle trusting each Pebble's HTTPS, as CERTKEEPER_CA_BUNDLE takes it."""
    path = tmp_path / "bundle.pem"
    path.write_bytes(b"".join(ca.ca_bundle.read_bytes() for ca in cas))
    return path


def account_secret(client: Client, namespace: str, name: str) -> dict[str, str]:
    """The account Secret's annotations, after checking it is certkeeper's and holds a key."""
    secret = get_secret(client, namespace, name)
    assert secret is not None, f"no Secret {name}"
    assert secret.metadata is not None and secret.metadata.labels is not None
    assert secret.metadata.labels.get("app.kubernetes.io/managed-by") == "certkeeper"
    assert secret_bytes(secret, "key.pem").startswith(b"-----BEGIN")
    return dict(secret.metadata.annotations or {})


def secret_events(client: Client, namespace: str, reason: str) -> list[str]:
    return [
        e.message or ""
        for e in client.list(Event, namespace=namespace)
        if e.reason == reason and e.involvedObject.kind == "Secret"
    ]


def serial_of(secret: Secret) -> str:
    return str(cert_info(split_pem_chain(secret_bytes(secret, "proxycert"))[0]).serial)


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line or " WARNING " in line]


# -- certkeeper run --------------------------------------------------------------------------------


def test_run_rehearses_a_new_name_set_then_orders_from_production_and_a_renewal_is_not_rehearsed(
    kube_client: Client, namespace: str, kubeconfig: Path, ari: AcmeFront, staging: AcmeFront, tmp_path: Path
) -> None:
    env = seed_env(ari.pebble, namespace, kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url,
                   CERTKEEPER_REHEARSAL=staging.directory_url, RC_NAMES="",
                   CERTKEEPER_CA_BUNDLE=str(both_roots(tmp_path, ari.pebble, staging.pebble)))  # fmt: skip
    with certkeeper_run(env, tmp_path / "first.log") as run:
        first = wait_for("the Secret", lambda: get_secret(kube_client, namespace), timeout=90, run=run)
        assert run.stop() == 0
    said = [line for line in run.log.splitlines() if "rehearsal" in line]
    assert len(said) == 1 and f"example.com: {PASSED.format(staging.directory_url)}" in said[0], run.log
    assert len(staging.recorded_orders()) == len(ari.recorded_orders()) == 1
    rehearsed_first(staging, ari, ["example.com", "foo.example.com"])
    events = secret_events(kube_client, namespace, "Rehearsed")
    assert any(PASSED.format(staging.directory_url) in m for m in events), events
    # Two accounts, each in its own Secret: the production one untouched by the rehearsal.
    production = account_secret(kube_client, namespace, f"{SECRET}-acme-account")
    rehearsal = account_secret(kube_client, namespace, f"{SECRET}-acme-account-rehearsal")
    assert production["certkeeper.io/directory-url"] == ari.directory_url
    assert rehearsal["certkeeper.io/directory-url"] == staging.directory_url
    assert production["certkeeper.io/account-url"] != rehearsal["certkeeper.io/account-url"]

    # The CA asks for a renewal: the name set is held, so production is asked directly.
    ari.window_in_past()
    with certkeeper_run(env, tmp_path / "renew.log") as run:

        def renewed() -> Secret | None:
            secret = get_secret(kube_client, namespace)
            return secret if secret is not None and serial_of(secret) != serial_of(first) else None

        wait_for("the renewed certificate", renewed, timeout=90, run=run)
        assert run.stop() == 0
    assert "rehearsal" not in run.log, run.log
    assert len(ari.recorded_orders()) == 2 and len(staging.recorded_orders()) == 1


def test_run_with_a_failing_rehearsal_asks_production_nothing_and_says_so_in_one_line(
    kube_client: Client, namespace: str, kubeconfig: Path, ari: AcmeFront, blind_staging: Pebble, tmp_path: Path
) -> None:
    staging = blind_staging.directory_url
    env = seed_env(ari.pebble, namespace, kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url,
                   CERTKEEPER_REHEARSAL=staging, RC_NAMES="",
                   CERTKEEPER_CA_BUNDLE=str(both_roots(tmp_path, ari.pebble, blind_staging)))  # fmt: skip
    with certkeeper_run(env, tmp_path / "run.log") as run:
        wait_for("the failure said", lambda: FAILED.format(staging) in run.log, timeout=90, run=run)
        failed = wait_for("a Failed Event", lambda: secret_events(kube_client, namespace, "Failed"), run=run)
        assert run.stop() == 0
    lines = [line for line in error_lines(run.log) if "RC_NAMES" not in line]
    assert len(lines) == 1 and FAILED.format(staging) in lines[0], lines
    assert FAILED.format(staging) in failed[0]
    assert not ari.recorded_new_order_times() and not ari.recorded_orders()  # production never asked
    assert get_secret(kube_client, namespace) is None


# -- the controller's Issuer -----------------------------------------------------------------------


def rehearsing_issuer(ari: AcmeFront, rehearsal: dict[str, Any]) -> dict[str, Any]:
    manifest = issuer_manifest("pebble", ari.directory_url, ari.ca_bundle)
    manifest["spec"]["acme"]["rehearsal"] = rehearsal
    return manifest


@pytest.mark.usefixtures("crds")
def test_an_issuer_rehearses_new_certificates_at_staging_and_not_their_renewal(
    kube_client: Client,
    namespace: str,
    kubeconfig: Path,
    kubectl: Kubectl,
    ari: AcmeFront,
    staging: AcmeFront,
    tmp_path: Path,
) -> None:
    names = [f"reh{i}.example.com" for i in range(3)]
    bundle = base64.b64encode(staging.ca_bundle.read_bytes()).decode()
    apply(kubectl, rehearsing_issuer(ari, {"server": staging.directory_url, "caBundle": bundle}),
          *[certificate_manifest(f"reh{i}", [name]) for i, name in enumerate(names)])  # fmt: skip
    with start(kubeconfig, tmp_path, namespace, ari) as run:
        certs = [wait_for(f"reh{i} Ready", lambda i=i: ready(kubectl, f"reh{i}"), timeout=90, run=run)  # type: ignore[misc]
                 for i in range(len(names))]  # fmt: skip
        for i in range(len(names)):
            rehearsed = [e.message or "" for e in events_for(kube_client, namespace, f"reh{i}")
                         if e.reason == "Rehearsed"]  # fmt: skip
            assert len(rehearsed) == 1 and PASSED.format(staging.directory_url) in rehearsed[0], rehearsed
        assert len(staging.recorded_orders()) == len(ari.recorded_orders()) == len(names)
        rehearsed_first(staging, ari, names)
        # Rehearsed at once by the controller's workers, under one account at staging, in its own Secret.
        assert len(staging.recorded_accounts()) == 1
        rehearsal = account_secret(kube_client, namespace, "pebble-account-rehearsal")
        assert rehearsal["certkeeper.io/directory-url"] == staging.directory_url
        production = account_secret(kube_client, namespace, "pebble-account")
        assert production["certkeeper.io/directory-url"] == ari.directory_url
        # A new key type makes a held certificate due: a renewal of the same names, not rehearsed.
        kubectl("patch", "certificate.certkeeper.io", "reh0", "--type=merge", "-p",
                '{"spec": {"privateKey": {"algorithm": "RSA", "size": 2048}}}')  # fmt: skip
        generation = certs[0]["metadata"]["generation"]

        def renewal_stored() -> dict[str, Any] | None:
            found = ready(kubectl, "reh0")
            return found if found and found["metadata"]["generation"] > generation else None

        wait_for("the renewal stored", renewal_stored, timeout=90, run=run)
        assert run.stop() == 0
    assert len(ari.recorded_orders()) == len(names) + 1 and len(staging.recorded_orders()) == len(names)
    assert run.log.count("rehearsal at") == len(names), run.log
    reasons = [e.reason for e in events_for(kube_client, namespace, "reh0")]
    assert reasons.count("Rehearsed") == 1, reasons


@pytest.mark.usefixtures("crds")
def test_an_issuer_whose_rehearsal_fails_orders_nothing_from_production_and_says_why(
    kube_client: Client,
    namespace: str,
    kubeconfig: Path,
    kubectl: Kubectl,
    ari: AcmeFront,
    blind_staging: Pebble,
    tmp_path: Path,
) -> None:
    staging = blind_staging.directory_url
    bundle = base64.b64encode(blind_staging.ca_bundle.read_bytes()).decode()
    apply(kubectl, rehearsing_issuer(ari, {"server": staging, "caBundle": bundle}),
          certificate_manifest("rehbad", ["rehbad.example.com"]))  # fmt: skip
    with start(kubeconfig, tmp_path, namespace, ari) as run:

        def failed() -> dict[str, Any] | None:
            found = condition(get(kubectl, "certificate.certkeeper.io", "rehbad"))
            return found if found.get("reason") == "Failed" else None

        ready_condition = wait_for("the Certificate Failed", failed, timeout=90, run=run)
        wait_for("a Failed Event", lambda: [e for e in events_for(kube_client, namespace, "rehbad")
                                            if e.reason == "Failed"], run=run)  # fmt: skip
        assert run.stop() == 0
    assert ready_condition["status"] == "False" and FAILED.format(staging) in ready_condition["message"]
    assert not ari.recorded_new_order_times() and not ari.recorded_orders()  # production never asked
    said = [line for line in run.log.splitlines() if "rehearsal" in line]
    assert len(said) == 1 and FAILED.format(staging) in said[0], said
    assert get_secret(kube_client, namespace, "rehbad") is None
