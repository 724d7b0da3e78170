"""The controller's Issuer solvers in cert-manager's shape: DNS-01 over RFC 2136 at the bench's real bind9
(TSIG key from a Secret) for a wildcard, TLS-ALPN-01 and IP addresses, and the refusals before any order."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from lightkube import Client
from runkit import condition, get_secret, issuer_manifest, secret_bytes, wait_for
from test_controller import apply, get, ready, start, verify_secret

from certkeeper.crypto import cert_info, split_pem_chain
from testbench.ari import AcmeFront
from testbench.bind import KEY_NAME, Bind
from testbench.pebble import Pebble

if TYPE_CHECKING:
    from conftest import Kubectl

pytestmark = pytest.mark.usefixtures("crds")


def with_solvers(issuer: dict[str, Any], solvers: list[dict[str, Any]]) -> dict[str, Any]:
    issuer["spec"]["acme"]["solvers"] = solvers
    return issuer


def certificate(name: str, issuer: str, dns_names: list[str], ip_addresses: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"secretName": name, "dnsNames": dns_names, "issuerRef": {"name": issuer}}
    if ip_addresses:
        spec["ipAddresses"] = ip_addresses
    return {"apiVersion": "certkeeper.io/v1", "kind": "Certificate", "metadata": {"name": name}, "spec": spec}


def tsig_secret(bind: Bind) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "tsig"},
        "type": "Opaque",
        "data": {"tsig-secret-key": base64.b64encode(bind.key_secret.encode()).decode()},
    }


def rfc2136(bind: Bind, secret: str = "tsig", zones: list[str] | None = None) -> dict[str, Any]:
    solver: dict[str, Any] = {
        "dns01": {
            "rfc2136": {
                "nameserver": bind.server,
                "tsigKeyName": KEY_NAME,
                "tsigAlgorithm": "HMACSHA256",
                "tsigSecretSecretRef": {"name": secret, "key": "tsig-secret-key"},
            }
        }
    }
    if zones:
        solver["selector"] = {"dnsZones": zones}
    return solver


def test_wildcard_and_apex_over_rfc2136_with_the_tsig_key_from_a_secret(
    kube_client: Client,
    namespace: str,
    kubeconfig: Path,
    kubectl: Kubectl,
    dns_pebble: Pebble,
    bind: Bind,
    tmp_path: Path,
) -> None:
    names = ["*.ctl.example.test", "ctl.example.test"]
    issuer = with_solvers(
        issuer_manifest("dns", dns_pebble.directory_url, dns_pebble.ca_bundle),
        [{"http01": {}}, rfc2136(bind, zones=["example.test"])],
    )
    apply(kubectl, tsig_secret(bind), issuer, certificate("wild", "dns", names))
    state = tmp_path / "dns-state"
    with start(kubeconfig, tmp_path, namespace, dns_pebble, f"--dns-state-dir={state}") as run:  # type: ignore[arg-type]
        wait_for("the wildcard Certificate Ready", lambda: ready(kubectl, "wild"), timeout=90, run=run)
        secret = get_secret(kube_client, namespace, "wild")
        assert secret is not None
        verify_secret(secret, set(names), dns_pebble.root_pem(), tmp_path)

        # The TSIG Secret rotated (here: to a key the server does not know) is read at the next full
        # check, without a restart: the next order's update is signed with it and refused.
        wrong = base64.b64encode(base64.b64encode(b"not the key on the server, 32 b!")).decode()
        kubectl("patch", "secret", "tsig", "--type=merge", "-p", json.dumps({"data": {"tsig-secret-key": wrong}}))
        kubectl("patch", "certificate.certkeeper.io", "wild", "--type=merge",
                "-p", json.dumps({"spec": {"dnsNames": [*names, "more.ctl.example.test"]}}))  # fmt: skip

        def refused_key() -> dict[str, Any] | None:
            issuing = condition(get(kubectl, "certificate.certkeeper.io", "wild"), "Issuing")
            return issuing if "refused the TSIG key" in issuing.get("message", "") else None

        wait_for("the rotated key used and refused", refused_key, timeout=60, run=run)
        assert run.stop() == 0
    assert [r for r in bind.txt("example.test") if r[2] != '"not-ours"'] == [], "a TXT record was left"
    assert not any(state.rglob("*.json")), "a presented record was left in the journal"
    assert bind.key_secret not in run.log


def test_names_no_solver_covers_and_missing_solver_secrets_are_refused_before_any_order(
    namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, bind: Bind, tmp_path: Path
) -> None:
    http_only = issuer_manifest("http", ari.directory_url, ari.ca_bundle)
    other_zone = with_solvers(
        issuer_manifest("other-zone", ari.directory_url, ari.ca_bundle), [rfc2136(bind, zones=["other.test"])]
    )
    no_secret = with_solvers(issuer_manifest("no-secret", ari.directory_url, ari.ca_bundle), [rfc2136(bind, "absent")])
    cloudflare = [{"dns01": {"cloudflare": {"apiTokenSecretRef": {}}}}]  # cert-manager's, not certkeeper's
    unknown = with_solvers(issuer_manifest("unknown", ari.directory_url, ari.ca_bundle), cloudflare)
    bad = {
        "wild": (certificate("wild", "http", ["*.a.example.com"]), "WildcardNeedsDNS01",
                 "no dns01 solver of Issuer http"),
        "uncovered": (certificate("uncovered", "other-zone", ["b.example.com"]), "NoSolver", "b.example.com"),
        "ip-dns": (certificate("ip-dns", "other-zone", [], ["192.0.2.7"]), "NoSolver", "IP address 192.0.2.7"),
        "no-secret": (certificate("no-secret", "no-secret", ["c.example.com"]), "IssuerNotReady",
                      f"Secret {namespace}/absent not found"),
        "unknown": (certificate("unknown", "unknown", ["d.example.com"]), "IssuerNotReady",
                    "dns01 cloudflare is not supported"),
        "bad-ip": (certificate("bad-ip", "http", [], ["300.1.1.1"]), "InvalidName", "'300.1.1.1'"),
    }  # fmt: skip
    apply(kubectl, http_only, other_zone, no_secret, unknown, *(manifest for manifest, _, _ in bad.values()))
    orders = len(ari.recorded_orders())
    with start(kubeconfig, tmp_path, namespace, ari) as run:
        for name, (_, reason, text) in bad.items():

            def refused(name: str = name, reason: str = reason) -> dict[str, Any] | None:
                found = condition(get(kubectl, "certificate.certkeeper.io", name))
                return found if found.get("status") == "False" and found.get("reason") == reason else None

            found = wait_for(f"{name} refused with {reason}", refused, timeout=30, run=run)
            assert text in found["message"], found
        assert condition(get(kubectl, "issuer.certkeeper.io", "no-secret"))["reason"] == "InvalidSolver"
        assert len(ari.recorded_orders()) == orders, "an order was placed for a name no solver can prove"
        assert run.stop() == 0


def test_ip_addresses_and_a_name_over_tls_alpn01(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    issuer = with_solvers(issuer_manifest("alpn", ari.directory_url, ari.ca_bundle), [{"tlsAlpn01": {}}])
    http = issuer_manifest("http", ari.directory_url, ari.ca_bundle)
    apply(
        kubectl,
        issuer,
        http,
        certificate("alpn", "alpn", ["alpn-ctl.test"], ["127.0.0.1"]),
        certificate("ip", "http", [], ["127.0.0.1"]),
    )
    alpn_bind = f"--tls-alpn-bind=127.0.0.1:{ari.pebble.tls_port}"
    with start(kubeconfig, tmp_path, namespace, ari, alpn_bind) as run:
        for name, expected in (("alpn", {"alpn-ctl.test", "127.0.0.1"}), ("ip", {"127.0.0.1"})):
            wait_for(f"Certificate {name} Ready", lambda name=name: ready(kubectl, name), timeout=90, run=run)
            secret = get_secret(kube_client, namespace, name)
            assert secret is not None
            leaf = split_pem_chain(secret_bytes(secret, "tls.crt"))[0]
            assert set(cert_info(leaf).names) == expected
        assert run.stop() == 0


def test_wildcard_over_lexicon_with_provider_options_from_a_secret(
    kube_client: Client,
    namespace: str,
    kubeconfig: Path,
    kubectl: Kubectl,
    dns_pebble: Pebble,
    bind: Bind,
    tmp_path: Path,
) -> None:
    names = ["*.ctl.lexzone.com", "ctl.lexzone.com"]
    # lexicon's zone-file provider takes the file as its option: given here the way a token would be.
    credentials = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "provider"},
        "type": "Opaque",
        "data": {"filename": base64.b64encode(str(bind.zone_file("lexzone.com")).encode()).decode()},
    }
    lexicon = {"provider": "localzone", "nameserver": bind.server, "credentialsSecretRef": {"name": "provider"}}
    issuer = with_solvers(
        issuer_manifest("hosted", dns_pebble.directory_url, dns_pebble.ca_bundle), [{"dns01": {"lexicon": lexicon}}]
    )
    apply(kubectl, credentials, issuer, certificate("hosted", "hosted", names))
    with (
        bind.reloading_on_change("lexzone.com"),
        start(kubeconfig, tmp_path, namespace, dns_pebble, f"--dns-state-dir={tmp_path / 'dns'}") as run,  # type: ignore[arg-type]
    ):
        wait_for("the lexicon Certificate Ready", lambda: ready(kubectl, "hosted"), timeout=90, run=run)
        secret = get_secret(kube_client, namespace, "hosted")
        assert secret is not None
        verify_secret(secret, set(names), dns_pebble.root_pem(), tmp_path)
        assert run.stop() == 0
    assert "TXT" not in bind.zone_file("lexzone.com").read_text()
    assert bind.txt("lexzone.com") == []
