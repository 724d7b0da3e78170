"""``certkeeper run`` renews: the CA's window (ARI) has passed, so it orders with ``replaces``, records a
Renewed Event and rolls the pods again, one at a time."""

from __future__ import annotations

from pathlib import Path

from lightkube import Client
from lightkube.resources.core_v1 import Event, Secret
from runkit import (
    DOMAINS,
    RC,
    SECRET,
    ReadyWatch,
    certkeeper_run,
    get_secret,
    make_rc,
    ready_pods,
    secret_bytes,
    seed_env,
    wait_for,
)

from certkeeper.crypto import cert_info, key_matches_cert, split_pem_chain
from certkeeper.kube.secret_store import SecretStore
from certkeeper.model import CertInfo, PendingOrder
from testbench.ari import AcmeFront


def leaf_of(secret: Secret) -> CertInfo:
    return cert_info(split_pem_chain(secret_bytes(secret, "proxycert"))[0])


def rollout_done(client: Client, namespace: str) -> bool:
    secret = get_secret(client, namespace)
    annotations = (secret.metadata.annotations if secret and secret.metadata else None) or {}
    return annotations.get("certkeeper.io/rollout") == "done"


def events(client: Client, namespace: str) -> list[tuple[str, str]]:
    return [(e.reason or "", e.message or "") for e in client.list(Event, namespace=namespace)]


def two_ready(client: Client, namespace: str, not_among: set[str]) -> set[str] | None:
    pods = ready_pods(client, namespace)
    return pods if len(pods) == 2 and not pods & not_among else None


def test_run_renews_when_the_ari_window_has_passed_and_rolls_out_again(
    kube_client: Client, namespace: str, kubeconfig: Path, ari: AcmeFront, tmp_path: Path
) -> None:
    make_rc(kube_client, namespace, replicas=2)
    first_pods = wait_for("2 Ready pods", lambda: two_ready(kube_client, namespace, set()))
    env = seed_env(ari.pebble, namespace, kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url)

    with certkeeper_run(env, tmp_path / "issue.log") as run:
        wait_for("the first rollout recorded", lambda: rollout_done(kube_client, namespace), timeout=90, run=run)
        assert run.stop() == 0
    issued = get_secret(kube_client, namespace)
    assert issued is not None
    old = leaf_of(issued)
    assert old.ari_id
    issued_pods = wait_for("the pods after issuance", lambda: two_ready(kube_client, namespace, first_pods))
    assert [o.get("replaces") for o in ari.recorded_orders()] == [None], "a first issuance replaces nothing"

    # The CA says this certificate should have been renewed yesterday.
    ari.window_in_past(old.ari_id)
    watch = ReadyWatch(kube_client, namespace)
    watch.start(initial=2)
    try:
        with certkeeper_run(env, tmp_path / "renew.log") as run:

            def renewed() -> Secret | None:
                secret = get_secret(kube_client, namespace)
                return secret if secret is not None and leaf_of(secret).serial != old.serial else None

            secret = wait_for("the renewed certificate in the Secret", renewed, timeout=90, run=run)
            renewed_pods = wait_for(
                "every pod replaced after the renewal",
                lambda: two_ready(kube_client, namespace, issued_pods),
                timeout=90,
                run=run,
            )
            wait_for("the renewal's rollout recorded", lambda: rollout_done(kube_client, namespace), run=run)
            wait_for("the rollout logged", lambda: f"pod(s) of replicationcontroller/{RC}" in run.log, run=run)
            assert run.stop() == 0
    finally:
        watch.stop()
    assert watch.minimum is not None and watch.minimum >= 1, f"the RC dropped to {watch.minimum} Ready pods"

    orders = ari.recorded_orders()
    assert len(orders) == 2
    assert orders[1]["replaces"] == old.ari_id, "the renewal did not name the certificate it replaces"
    assert old.ari_id in ari.recorded_renewal_info_queries()
    new = leaf_of(secret)
    assert set(new.names) == set(old.names)
    assert key_matches_cert(secret_bytes(secret, "proxykey"), split_pem_chain(secret_bytes(secret, "proxycert"))[0])
    assert renewed_pods and not renewed_pods & issued_pods
    reasons = [reason for reason, _ in events(kube_client, namespace)]
    assert reasons.count("Issued") == 1 and reasons.count("Renewed") == 1, reasons
    assert reasons.count("Rolled") == 2, reasons
    renewed_message = next(m for r, m in events(kube_client, namespace) if r == "Renewed")
    assert new.serial in renewed_message


def test_a_stored_order_whose_record_was_left_behind_does_not_stop_the_renewal(
    kube_client: Client, namespace: str, kubeconfig: Path, ari: AcmeFront, tmp_path: Path
) -> None:
    """A run stopped after storing its certificate but before deleting the order's record leaves a record of a
    valid order. When the renewal is due, resuming that order gives back the stored certificate: the record
    must go and a new order be placed at once (it used to end the check "already held", renewing nothing)."""
    env = seed_env(ari.pebble, namespace, kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url, RC_NAMES="")
    with certkeeper_run(env, tmp_path / "issue.log") as run:
        issued = wait_for("the Secret", lambda: get_secret(kube_client, namespace), timeout=90, run=run)
        assert run.stop() == 0
    old = leaf_of(issued)
    assert len(ari.recorded_orders()) == len(ari.order_urls) == 1
    # The record as the first run wrote it before its order, with the URL the CA gave.
    store = SecretStore(kube_client, namespace, SECRET)
    store.save_order(
        DOMAINS.split()[0], PendingOrder(ari.order_urls[0], tuple(old.names), secret_bytes(issued, "proxykey"))
    )

    ari.window_in_past(old.ari_id)
    with certkeeper_run(env, tmp_path / "renew.log") as run:

        def renewed() -> Secret | None:
            secret = get_secret(kube_client, namespace)
            return secret if secret is not None and leaf_of(secret).serial != old.serial else None

        secret = wait_for("the renewed certificate in the Secret", renewed, timeout=60, run=run)
        assert run.stop() == 0
    assert f"the order {ari.order_urls[0]} was stored already: placing a new one" in run.log, run.log
    assert len(ari.recorded_orders()) == 2
    assert ari.recorded_orders()[1].get("replaces") == old.ari_id
    assert key_matches_cert(secret_bytes(secret, "proxykey"), split_pem_chain(secret_bytes(secret, "proxycert"))[0])
    assert store.load_order(DOMAINS.split()[0]) is None, "the stale record is left"
