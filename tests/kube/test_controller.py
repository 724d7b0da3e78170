"""``certkeeper controller`` against the real control plane and Pebble (behind the ACME front, which
counts the orders the CA created)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tempfile
import urllib.request
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Event, Secret
from runkit import (
    CERTKEEPER,
    Run,
    certificate_manifest,
    certkeeper_controller,
    condition,
    controller_args,
    controller_env,
    get_secret,
    issuer_manifest,
    secret_bytes,
    wait_for,
)

from certkeeper.crypto import cert_info, key_matches_cert, split_pem_chain
from testbench import cluster as bench
from testbench.ari import AcmeFront

if TYPE_CHECKING:
    from conftest import Kubectl

pytestmark = pytest.mark.usefixtures("crds")
ROOT = Path(__file__).resolve().parents[2]


def apply(kubectl: Kubectl, *manifests: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        for number, manifest in enumerate(manifests):
            path = Path(scratch) / f"{number}.json"
            path.write_text(json.dumps(manifest))
            kubectl("apply", "-f", str(path))


def get(kubectl: Kubectl, kind: str, name: str) -> dict[str, Any]:
    result = kubectl("get", kind, name, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def ready(kubectl: Kubectl, name: str) -> dict[str, Any] | None:
    cert = get(kubectl, "certificate.certkeeper.io", name)
    found = condition(cert, "Ready")
    generation = (cert.get("metadata") or {}).get("generation")
    if found.get("status") == "True" and found.get("observedGeneration") == generation:
        return cert
    return None


def verify_secret(secret: Secret, names: set[str], root_pem: bytes, tmp_path: Path) -> str:
    """The Secret's chain verifies against the CA's root, covers ``names``, and its key matches; returns the serial."""
    chain = secret_bytes(secret, "tls.crt")
    key = secret_bytes(secret, "tls.key")
    parts = split_pem_chain(chain)
    assert len(parts) >= 2, "tls.crt is not a full chain"
    (tmp_path / "root.pem").write_bytes(root_pem)
    (tmp_path / "chain.pem").write_bytes(b"".join(parts[1:]))
    (tmp_path / "leaf.pem").write_bytes(parts[0])
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"), "-untrusted", str(tmp_path / "chain.pem"),
         str(tmp_path / "leaf.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    info = cert_info(parts[0])
    assert set(info.names) == names
    assert key_matches_cert(key, parts[0])
    return info.serial


def events_for(client: Client, namespace: str, name: str) -> list[Event]:
    return [
        e
        for e in client.list(Event, namespace=namespace)
        if e.involvedObject.kind == "Certificate" and e.involvedObject.name == name
    ]


def start(
    kubeconfig: Path, tmp_path: Path, namespace: str, ari: AcmeFront, *extra: str, log: str = "controller"
) -> AbstractContextManager[Run]:
    return certkeeper_controller(
        kubeconfig, tmp_path / f"{log}.log", *controller_args(namespace, ari.http_port, *extra)
    )


def restarted_at(kubectl: Kubectl, name: str) -> str | None:
    template = get(kubectl, "deployment", name)["spec"]["template"]
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    found = annotations.get("kubectl.kubernetes.io/restartedAt")
    return str(found) if found else None


def test_certificate_ready_then_names_changed(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    kubectl("create", "deployment", "web", "--image=nginx")
    apply(kubectl, certificate_manifest("web", ["web.example.com", "www.example.com"], rollout=["deployment/web"]))
    run: Run
    with start(kubeconfig, tmp_path, namespace, ari, "--log-format=json") as run:
        cert = wait_for("the Certificate Ready", lambda: ready(kubectl, "web"), timeout=60, run=run)
        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{ari.http_port}{path}", timeout=5) as answer:
                assert answer.status == 200
        issuer = get(kubectl, "issuer.certkeeper.io", "pebble")
        assert condition(issuer)["status"] == "True"
        assert issuer["status"]["acme"]["uri"].startswith("https://")
        secret = get_secret(kube_client, namespace, "web")
        assert secret is not None and secret.type == "kubernetes.io/tls"
        serial = verify_secret(secret, {"web.example.com", "www.example.com"}, ari.pebble.root_pem(), tmp_path)
        status = cert["status"]
        info = cert_info(split_pem_chain(secret_bytes(secret, "tls.crt"))[0])
        assert status["notAfter"] == info.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert status["notBefore"] and status["renewalTime"] and status["revision"] == 1
        assert "failedIssuanceAttempts" not in status
        issuing = condition(cert, "Issuing")
        assert issuing["status"] == "False" and issuing["observedGeneration"] == 1
        assert condition(cert)["lastTransitionTime"]
        assert len(ari.recorded_orders()) == 1
        wait_for(
            "an Issued Event", lambda: any(e.reason == "Issued" for e in events_for(kube_client, namespace, "web"))
        )
        restarted = wait_for("the Deployment restarted", lambda: restarted_at(kubectl, "web"), run=run)
        printed = kubectl("get", "certificate.certkeeper.io", "web").stdout
        assert "READY" in printed and "SECRET" in printed and "NOTAFTER" in printed and "True" in printed

        # A new name: reissued for all three, Ready follows the new generation.
        kubectl(
            "patch", "certificate.certkeeper.io", "web", "--type=merge",
            "-p", json.dumps({"spec": {"dnsNames": ["web.example.com", "www.example.com", "api.example.com"]}}),
        )  # fmt: skip
        cert = wait_for("Ready for generation 2", lambda: ready(kubectl, "web"), timeout=60, run=run)
        assert cert["metadata"]["generation"] == 2
        secret = get_secret(kube_client, namespace, "web")
        assert secret is not None
        new_serial = verify_secret(
            secret, {"web.example.com", "www.example.com", "api.example.com"}, ari.pebble.root_pem(), tmp_path
        )
        assert new_serial != serial and cert["status"]["revision"] == 2
        assert len(ari.recorded_orders()) == 2
        rolled = lambda: [e for e in events_for(kube_client, namespace, "web") if e.reason == "Rolled"]  # noqa: E731
        wait_for("a Rolled Event per new certificate", lambda: len(rolled()) == 2, timeout=30, run=run)
        assert (restarted_at(kubectl, "web") or "") >= restarted
        assert run.stop() == 0
    assert "PRIVATE KEY" not in run.log
    lines = [json.loads(line) for line in run.log.splitlines()]
    assert any("issued a certificate" in line["message"] for line in lines)


def test_valid_secret_adopted_without_an_order_and_recreated_when_deleted(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    # A certificate issued elsewhere (here by `certkeeper issue`), stored as a TLS Secret by hand.
    store = tmp_path / "store"
    env = controller_env(kubeconfig)
    env.update(
        CERTKEEPER_SERVER=ari.directory_url,
        CERTKEEPER_CA_BUNDLE=str(ari.ca_bundle),
        CERTKEEPER_HTTP_BIND=f"127.0.0.1:{ari.http_port}",
        CERTKEEPER_STORE=str(store),
    )
    issued = subprocess.run([CERTKEEPER, "issue", "shop.example.com"], env=env, capture_output=True, text=True)
    assert issued.returncode == 0, issued.stderr
    lineage = store / "shop.example.com"
    kubectl(
        "create", "secret", "tls", "shop",
        f"--cert={lineage / 'fullchain.pem'}", f"--key={lineage / 'privkey.pem'}",
    )  # fmt: skip
    before = get_secret(kube_client, namespace, "shop")
    assert before is not None and before.data is not None
    orders = len(ari.recorded_orders())
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    apply(kubectl, certificate_manifest("shop", ["shop.example.com"]))
    with start(kubeconfig, tmp_path, namespace, ari) as run:
        cert = wait_for("the Certificate Ready", lambda: ready(kubectl, "shop"), timeout=60, run=run)
        assert len(ari.recorded_orders()) == orders, "an order was placed for a Secret that was already good"
        after = get_secret(kube_client, namespace, "shop")
        assert after is not None and after.data is not None and after.metadata is not None
        assert after.data["tls.crt"] == before.data["tls.crt"] and after.data["tls.key"] == before.data["tls.key"]
        assert (after.metadata.labels or {}).get("app.kubernetes.io/managed-by") == "certkeeper"
        assert cert["status"]["revision"] == 1 and cert["status"]["notAfter"]

        # Deleted by hand: issued again and stored, without waiting for the next check.
        kube_client.delete(Secret, "shop", namespace=namespace)
        again = wait_for(
            "the Secret re-created", lambda: get_secret(kube_client, namespace, "shop"), timeout=60, run=run
        )
        verify_secret(again, {"shop.example.com"}, ari.pebble.root_pem(), tmp_path)
        assert len(ari.recorded_orders()) == orders + 1
        assert run.stop() == 0


def test_bad_input_is_refused_in_the_status_with_no_order_and_nothing_overwritten(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    kubectl("create", "configmap", "owner")
    owner_uid = get(kubectl, "configmap", "owner")["metadata"]["uid"]
    taken = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "taken",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid, "controller": True}
            ],
        },
        "type": "Opaque",
        "stringData": {"tls.crt": "someone else's", "password": "keep me"},
    }
    apply(kubectl, taken, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    taken_before = get_secret(kube_client, namespace, "taken")
    assert taken_before is not None
    bad = {
        "no-names": (certificate_manifest("no-names", []), "InvalidSpec", "dnsNames"),
        "bad-name": (certificate_manifest("bad-name", ["bad..example.com"]), "InvalidName", "bad..example.com"),
        "no-issuer": (certificate_manifest("no-issuer", ["a.example.com"], issuer="missing"), "IssuerNotFound",
                      "missing"),
        "taken": (certificate_manifest("taken", ["taken.example.com"]), "SecretInUse", "ConfigMap owner"),
        "wild": (certificate_manifest("wild", ["*.example.com"]), "WildcardNeedsDNS01", "DNS-01"),
        "cm-field": (certificate_manifest("cm-field", ["c.example.com"], commonName="c.example.com"),
                     "UnsupportedField", "spec.commonName"),
    }  # fmt: skip
    apply(kubectl, *(manifest for manifest, _, _ in bad.values()))
    apply(kubectl, certificate_manifest("good", ["good.example.com"]))
    with start(kubeconfig, tmp_path, namespace, ari) as run:
        wait_for("the good Certificate Ready", lambda: ready(kubectl, "good"), timeout=60, run=run)
        for name, (_, reason, text) in bad.items():

            def refused(name: str = name, reason: str = reason) -> dict[str, Any] | None:
                found = condition(get(kubectl, "certificate.certkeeper.io", name))
                return found if found.get("status") == "False" and found.get("reason") == reason else None

            found = wait_for(f"{name} refused with {reason}", refused, timeout=30, run=run)
            assert text in found["message"], found
            assert condition(get(kubectl, "certificate.certkeeper.io", name), "Issuing")["status"] == "False"
            assert get_secret(kube_client, namespace, name) is None or name == "taken"
        warnings = {e.reason for e in kube_client.list(Event, namespace=namespace) if e.type == "Warning"}
        assert {reason for _, reason, _ in bad.values()} <= warnings
        assert len(ari.recorded_orders()) == 1, "an order was placed for bad input"
        taken_after = get_secret(kube_client, namespace, "taken")
        assert taken_after is not None and taken_after.data == taken_before.data
        assert (
            taken_after.metadata is not None and taken_after.metadata.annotations == taken_before.metadata.annotations
        )
        assert run.stop() == 0


def ingress(name: str, annotations: dict[str, str], tls: list[dict[str, Any]]) -> dict[str, Any]:
    backend = {"service": {"name": "web", "port": {"number": 80}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "tls": tls,
            "rules": [
                {"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}
                for entry in tls
                for host in entry["hosts"]
            ],
        },
    }


def test_annotated_ingresses_get_certificates_that_go_with_them(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    cluster_issuer = f"pebble-{namespace}"
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    apply(
        kubectl,
        ingress(
            "lego", {"kubernetes.io/tls-acme": "true"}, [{"hosts": ["lego.example.com"], "secretName": "lego-tls"}]
        ),
        ingress(
            "cm",
            {"cert-manager.io/issuer": "pebble"},
            [{"hosts": ["cm.example.com", "www.cm.example.com"], "secretName": "cm-tls"}],
        ),
        ingress("plain", {}, [{"hosts": ["plain.example.com"], "secretName": "plain-tls"}]),
        issuer_manifest(cluster_issuer, ari.directory_url, ari.ca_bundle, kind="ClusterIssuer"),
        ingress(
            "cluster",
            {"cert-manager.io/cluster-issuer": cluster_issuer},
            [{"hosts": ["cluster.example.com"], "secretName": "cluster-tls"}],
        ),
    )
    with start(kubeconfig, tmp_path, namespace, ari, "--default-issuer=Issuer/pebble") as run:
        wanted = (
            ("lego-tls", {"lego.example.com"}),
            ("cm-tls", {"cm.example.com", "www.cm.example.com"}),
            ("cluster-tls", {"cluster.example.com"}),
        )
        for name, names in wanted:
            cert = wait_for(f"Certificate {name} Ready", lambda n=name: ready(kubectl, n), timeout=60, run=run)
            assert cert["metadata"]["ownerReferences"][0]["kind"] == "Ingress"
            secret = get_secret(kube_client, namespace, name)
            assert secret is not None
            verify_secret(secret, names, ari.pebble.root_pem(), tmp_path)
        assert not get(kubectl, "certificate.certkeeper.io", "plain-tls"), "an Ingress without annotation got one"
        assert len(ari.recorded_orders()) == 3

        # The Ingress goes: the controller-manager's garbage collector removes its Certificate.
        kubectl("delete", "ingress", "lego")
        wait_for("Certificate lego-tls garbage-collected", lambda: not get(kubectl, "certificate.certkeeper.io",
                 "lego-tls"), timeout=90, run=run)  # fmt: skip
        assert get(kubectl, "certificate.certkeeper.io", "cm-tls")
        assert run.stop() == 0
    kubectl("delete", "clusterissuer.certkeeper.io", cluster_issuer)


def lease_holder(kubectl: Kubectl) -> str:
    return str((get(kubectl, "lease", "certkeeper-controller").get("spec") or {}).get("holderIdentity") or "")


def test_two_replicas_one_orders_and_the_other_takes_over(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    names = ["ha.example.com", "www.ha.example.com", "api.ha.example.com", "cdn.ha.example.com"]
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    apply(kubectl, certificate_manifest("ha", names))
    # Both replicas listen on the port Pebble validates (SO_REUSEPORT): the kernel hands each validation
    # request to either, as a Service would, so the follower must answer the leader's tokens too.
    with (
        start(kubeconfig, tmp_path, namespace, ari, log="a") as first,
        start(kubeconfig, tmp_path, namespace, ari, log="b") as second,
    ):
        wait_for("the Certificate Ready", lambda: ready(kubectl, "ha"), timeout=60, run=first)
        assert len(ari.recorded_orders()) == 1
        holder = lease_holder(kubectl)
        leader, follower = (first, second) if holder.endswith(f"-{first.proc.pid}") else (second, first)
        assert holder.endswith(f"-{leader.proc.pid}")
        assert "ordering " in leader.log and "ordering " not in follower.log
        secret = get_secret(kube_client, namespace, "ha")
        assert secret is not None
        verify_secret(secret, set(names), ari.pebble.root_pem(), tmp_path)

        # The four tokens the leader published for the follower leave the shared Secret once done with
        # (with the next token published, or after 2 s).
        def shared_tokens() -> dict[str, str]:
            shared = get_secret(kube_client, namespace, "certkeeper-http01")
            return dict(shared.data or {}) if shared is not None else {}

        wait_for("the finished tokens removed from the shared Secret", lambda: not shared_tokens(), timeout=10,
                 run=leader)  # fmt: skip

        leader.proc.kill()
        leader.proc.wait(10)
        apply(kubectl, certificate_manifest("ha2", ["ha2.example.com"]))
        wait_for("the other replica leads", lambda: lease_holder(kubectl).endswith(f"-{follower.proc.pid}"),
                 timeout=30, run=follower)  # fmt: skip
        wait_for("the new Certificate Ready", lambda: ready(kubectl, "ha2"), timeout=60, run=follower)
        assert len(ari.recorded_orders()) == 2, "the new leader ordered again what was already issued"
        assert follower.stop() == 0


def test_leader_killed_mid_order_the_other_resumes_it_with_no_second_order(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    # The CA takes its time to finalize: the leader is killed while it waits.
    ari.hold_finalize_s = 3.0
    with start(kubeconfig, tmp_path, namespace, ari, log="a") as first:
        wait_for("the first replica leads", lambda: lease_holder(kubectl).endswith(f"-{first.proc.pid}"), run=first)
        with start(kubeconfig, tmp_path, namespace, ari, log="b") as second:
            wait_for("the second replica's caches", lambda: "caches synced" in second.log, run=second)
            apply(kubectl, certificate_manifest("resume", ["resume.example.com"]))

            def in_flight() -> str | None:
                order = (get(kubectl, "certificate.certkeeper.io", "resume").get("status") or {}).get("order") or {}
                return order.get("url")

            url = wait_for("the order in flight recorded in the status", in_flight, timeout=30, run=first)
            assert condition(get(kubectl, "certificate.certkeeper.io", "resume"), "Issuing")["status"] == "True"
            finalizing = lambda: any("/finalize-order/" in path for _, path in ari.recorded_requests())  # noqa: E731
            wait_for("the leader finalizing the order", finalizing, timeout=30, run=first)
            first.proc.kill()
            first.proc.wait(10)
            ari.hold_finalize_s = 0.0
            cert = wait_for("Ready, finished by the other replica", lambda: ready(kubectl, "resume"), timeout=60,
                            run=second)  # fmt: skip
            assert "order" not in cert["status"], "the finished order is still recorded"
            assert f"resuming the order {url}" in second.log
            assert len(ari.recorded_orders()) == 1, "the new leader placed a second order"
            secret = get_secret(kube_client, namespace, "resume")
            assert secret is not None
            verify_secret(secret, {"resume.example.com"}, ari.pebble.root_pem(), tmp_path)
            assert get_secret(kube_client, namespace, "resume-order") is None
            assert second.stop() == 0


def test_restart_trusts_good_status_and_repairs_a_secret_edited_meanwhile(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    apply(kubectl, certificate_manifest("kept", ["kept.example.com"]))
    apply(kubectl, certificate_manifest("edited", ["edited.example.com"]))
    with start(kubeconfig, tmp_path, namespace, ari, log="first") as run:
        wait_for("both Ready", lambda: ready(kubectl, "kept") and ready(kubectl, "edited"), timeout=60, run=run)
        assert run.stop() == 0
    assert len(ari.recorded_orders()) == 2
    kept_before = get_secret(kube_client, namespace, "kept")
    # While no controller runs, someone puts another certificate into one Secret.
    other = get_secret(kube_client, namespace, "kept")
    assert other is not None and other.data is not None and kept_before is not None
    kubectl("patch", "secret", "edited", "--type=merge", "-p",
            json.dumps({"data": {"tls.crt": other.data["tls.crt"], "tls.key": other.data["tls.key"]}}))  # fmt: skip
    with start(kubeconfig, tmp_path, namespace, ari, "-v", log="second") as run:
        wait_for("the kept one trusted from its status", lambda: "test" in run.log and "kept: status and Secret agree"
                 in run.log, run=run)  # fmt: skip

        def repaired() -> bool:
            secret = get_secret(kube_client, namespace, "edited")
            if secret is None:
                return False
            names = cert_info(split_pem_chain(secret_bytes(secret, "tls.crt"))[0]).names
            return names == ("edited.example.com",)

        wait_for("the edited Secret repaired", repaired, timeout=60, run=run)
        assert len(ari.recorded_orders()) == 3, "the untouched certificate was ordered again"
        kept_after = get_secret(kube_client, namespace, "kept")
        assert kept_after is not None and kept_after.data == kept_before.data
        assert run.stop() == 0


def test_the_shipped_rbac_is_enough_for_a_cluster_issuer_certificate(
    cluster: bench.Cluster, kube_client: Client, namespace: str, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    sa_config = shipped_rbac_kubeconfig(cluster, kubectl, tmp_path / "sa-kubeconfig")
    issuer_name = f"pebble-{namespace}"
    apply(kubectl, issuer_manifest(issuer_name, ari.directory_url, ari.ca_bundle, kind="ClusterIssuer"))
    cert = certificate_manifest("rbac", ["rbac.example.com"], issuer=issuer_name)
    cert["spec"]["issuerRef"]["kind"] = "ClusterIssuer"
    apply(kubectl, cert)
    args = [f"--watch-namespace={namespace}", "--namespace=certkeeper", f"--http-bind=127.0.0.1:{ari.http_port}"]
    try:
        with certkeeper_controller(sa_config, tmp_path / "controller.log", *args) as run:
            wait_for("Ready as the ServiceAccount", lambda: ready(kubectl, "rbac"), timeout=60, run=run)
            secret = get_secret(kube_client, namespace, "rbac")
            assert secret is not None
            verify_secret(secret, {"rbac.example.com"}, ari.pebble.root_pem(), tmp_path)
            # The ClusterIssuer's account lives in the controller's namespace.
            assert get_secret(kube_client, "certkeeper", f"{issuer_name}-account") is not None
            assert not re.search(r"\b403\b", run.log) and "Forbidden" not in run.log, run.log
            assert run.stop() == 0
    finally:
        kubectl("delete", "clusterissuer.certkeeper.io", issuer_name, check=False)


def test_a_failing_certificate_backs_off_across_changes_without_a_secret(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    """Before its Secret exists, a Certificate's failures live in its status; a later reconcile (here
    caused by an edit) still honours the backoff instead of asking the CA again at once."""
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    ari.rate_limit_retry_after = 3600
    apply(kubectl, certificate_manifest("limited", ["limited.example.com"]))

    def new_orders() -> int:
        return sum(1 for method, path in ari.recorded_requests() if method == "POST" and "order-plz" in path)

    def failed() -> dict[str, Any] | None:
        cert = get(kubectl, "certificate.certkeeper.io", "limited")
        status = cert.get("status") or {}
        return cert if status.get("failedIssuanceAttempts") == 1 and status.get("lastFailureTime") else None

    with start(kubeconfig, tmp_path, namespace, ari) as run:
        cert = wait_for("the failure recorded in the status", failed, timeout=60, run=run)
        assert condition(cert)["status"] == "False" and "rate" in condition(cert)["message"].lower()
        assert new_orders() == 1
        names = ["limited.example.com", "www.limited.example.com"]
        kubectl("patch", "certificate.certkeeper.io", "limited", "--type=merge",
                "-p", json.dumps({"spec": {"dnsNames": names}}))  # fmt: skip

        def looked_again() -> dict[str, Any] | None:
            found = get(kubectl, "certificate.certkeeper.io", "limited")
            return found if condition(found).get("observedGeneration") == 2 else None

        cert = wait_for("the edit looked at", looked_again, timeout=30, run=run)
        assert new_orders() == 1, "the CA was asked again inside the backoff"
        assert condition(cert)["status"] == "False" and get_secret(kube_client, namespace, "limited") is None
        assert run.stop() == 0


def test_a_certificate_the_secret_write_refused_is_stored_later_without_a_second_order(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    existing = len(json.loads(kubectl("get", "secrets", "-o", "json").stdout)["items"])
    # Room for the ACME account, the rate-limit ledger and the order record, not for the certificate's Secret.
    kubectl("create", "quota", "secrets", f"--hard=count/secrets={existing + 3}")
    wait_for("the quota counted", lambda: (get(kubectl, "resourcequota", "secrets").get("status") or {}).get("used"))
    apply(kubectl, certificate_manifest("quota", ["quota.example.com"]))
    with start(kubeconfig, tmp_path, namespace, ari) as run:

        def refused() -> dict[str, Any] | None:
            found = condition(get(kubectl, "certificate.certkeeper.io", "quota"))
            return found if "issued, but not stored" in found.get("message", "") else None

        found = wait_for("the refused write reported", refused, timeout=60, run=run)
        assert "without a new order" in found["message"] and found["status"] == "False"
        assert len(ari.recorded_orders()) == 1
        kubectl("delete", "quota", "secrets")
        wait_for("Ready once the write succeeds", lambda: ready(kubectl, "quota"), timeout=60, run=run)
        secret = get_secret(kube_client, namespace, "quota")
        assert secret is not None
        verify_secret(secret, {"quota.example.com"}, ari.pebble.root_pem(), tmp_path)
        assert len(ari.recorded_orders()) == 1, "the certificate was ordered again"
        # Kept in memory since the refused write (or, after a restart, fetched again from its order).
        assert "storing the certificate issued at an earlier run" in run.log or "resuming the order" in run.log
        assert run.stop() == 0


def shipped_rbac_kubeconfig(cluster: bench.Cluster, kubectl: Kubectl, path: Path) -> Path:
    """deploy/controller's namespace, ServiceAccount and RBAC applied; a kubeconfig acting as that ServiceAccount."""
    deploy = ROOT / "deploy" / "controller"
    kubectl("apply", "-f", str(deploy / "namespace.yaml"))
    kubectl(
        "apply", "--namespace=certkeeper", "-f", str(deploy / "serviceaccount.yaml"), "-f", str(deploy / "rbac.yaml")
    )

    def token() -> str | None:
        found = kubectl("get", "secrets", "--namespace=certkeeper", "-o", "json").stdout
        for item in json.loads(found)["items"]:
            annotations = item["metadata"].get("annotations") or {}
            if annotations.get("kubernetes.io/service-account.name") == "certkeeper-controller":
                return base64.b64decode(item["data"]["token"]).decode()
        return None

    bench.write_kubeconfig(path, cluster.server, cluster.ca_file, "certkeeper-controller",
                           wait_for("the ServiceAccount's token", token))  # fmt: skip
    return path
