"""Renewal through the ARI front: due when the CA's window says so, with ``replaces`` = the old cert's id."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography import x509

from testbench.ari import AcmeFront
from testbench.command import Env, Run


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ari_cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 §4.1: base64url(AKI keyIdentifier) "." base64url(DER INTEGER contents of the serial)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki is not None
    serial = cert.serial_number.to_bytes(max(1, (cert.serial_number.bit_length() + 7) // 8), "big")
    if serial[0] & 0x80:
        serial = b"\0" + serial  # positive INTEGER: a leading zero octet keeps the sign bit clear

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    return f"{b64(aki)}.{b64(serial)}"


def test_renewal_when_due_sends_replaces(ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run) -> None:
    assert certkeeper(ari_env, "issue", "ari.test", "www.ari.test").returncode == 0
    lineage = store / "ari.test"
    old = load_cert(lineage / "cert.pem")
    old_key = (lineage / "privkey.pem").read_bytes()
    assert "replaces" not in ari.recorded_orders()[0], "a first issuance replaces nothing"

    ari.window_in_past()
    result = certkeeper(ari_env, "renew")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("renewed ari.test www.ari.test")
    orders = ari.recorded_orders()
    assert len(orders) == 2
    assert orders[1]["replaces"] == ari_cert_id(old)
    assert ari_cert_id(old) in ari.recorded_renewal_info_queries()
    assert {i["value"] for i in orders[1]["identifiers"]} == {"ari.test", "www.ari.test"}

    new = load_cert(lineage / "cert.pem")
    assert new.serial_number != old.serial_number
    assert (lineage / "privkey.pem").read_bytes() != old_key, "a renewal gets a new key unless --reuse-key"
    meta = json.loads((lineage / "meta.json").read_text())
    assert meta["replaces"] == ari_cert_id(old)


def test_renew_renews_only_what_is_due(ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run) -> None:
    assert certkeeper(ari_env, "issue", "due.test").returncode == 0
    assert certkeeper(ari_env, "issue", "notdue.test").returncode == 0
    due_old = load_cert(store / "due.test" / "cert.pem")
    notdue_old = load_cert(store / "notdue.test" / "cert.pem")

    # Every window in the future: nothing to do, nothing ordered.
    quiet = certkeeper(ari_env, "renew")
    assert quiet.returncode == 0, quiet.stderr
    assert len(ari.recorded_orders()) == 2
    assert load_cert(store / "due.test" / "cert.pem").serial_number == due_old.serial_number
    assert load_cert(store / "notdue.test" / "cert.pem").serial_number == notdue_old.serial_number

    # One certificate's window has passed: only that one is renewed.
    ari.window_in_past(ari_cert_id(due_old))
    result = certkeeper(ari_env, "renew")
    assert result.returncode == 0, result.stderr
    orders = ari.recorded_orders()
    assert len(orders) == 3
    assert orders[2]["replaces"] == ari_cert_id(due_old)
    assert [i["value"] for i in orders[2]["identifiers"]] == ["due.test"]
    assert load_cert(store / "due.test" / "cert.pem").serial_number != due_old.serial_number
    assert load_cert(store / "notdue.test" / "cert.pem").serial_number == notdue_old.serial_number


def test_renew_force_renews_everything_with_replaces(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run
) -> None:
    for name in ("force-a.test", "force-b.test"):
        assert certkeeper(ari_env, "issue", "--key-type", "ec-p384", name).returncode == 0
    old = {name: load_cert(store / name / "cert.pem") for name in ("force-a.test", "force-b.test")}
    result = certkeeper(ari_env, "renew", "--force")
    assert result.returncode == 0, result.stderr
    renewals = ari.recorded_orders()[2:]
    assert sorted(o["replaces"] for o in renewals) == sorted(ari_cert_id(c) for c in old.values())
    for name, cert in old.items():
        assert load_cert(store / name / "cert.pem").serial_number != cert.serial_number
    # The key type it was issued with is kept.
    assert "ec-p384" in certkeeper(ari_env, "status").stdout


def test_renew_with_empty_store_says_so(ari_env: Env, store: Path, certkeeper: Run) -> None:
    result = certkeeper(ari_env, "renew")
    assert result.returncode == 0
    assert "no certificates" in result.stdout and "certkeeper issue" in result.stdout
