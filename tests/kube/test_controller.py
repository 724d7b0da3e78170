"""``certkeeper controller`` against the real control plane and Pebble (behind the ACME front, which
counts the orders the CA created)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Event, Secret
from runkit import (
    Run,
    certificate_manifest,
    certkeeper_controller,
    condition,
    controller_args,
    get_secret,
    issuer_manifest,
    secret_bytes,
    wait_for,
)

from certkeeper.crypto import cert_info, key_matches_cert, split_pem_chain
from testbench.ari import AcmeFront

if TYPE_CHECKING:
    from conftest import Kubectl

pytestmark = pytest.mark.usefixtures("crds")


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


def test_certificate_ready_then_names_changed(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    apply(kubectl, certificate_manifest("web", ["web.example.com", "www.example.com"]))
    run: Run
    with start(kubeconfig, tmp_path, namespace, ari) as run:
        cert = wait_for("the Certificate Ready", lambda: ready(kubectl, "web"), timeout=60, run=run)
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
        assert run.stop() == 0
    assert "PRIVATE KEY" not in run.log
