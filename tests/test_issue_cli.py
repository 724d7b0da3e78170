"""`certkeeper issue` against a real Pebble, driven as a user would: files, chains, keys, hooks, status."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from testbench.ari import AcmeFront
from testbench.command import Env, Run
from testbench.pebble import Pebble


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def dns_names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


def spki(public_key: Any) -> bytes:
    data: bytes = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return data


def load_key(path: Path) -> Any:
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def openssl_verify(root_pem: bytes, lineage: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    root = workdir / "root.pem"
    root.write_bytes(root_pem)
    command = ["openssl", "verify", "-CAfile", str(root), "-untrusted", str(lineage / "chain.pem")]
    return subprocess.run([*command, str(lineage / "cert.pem")], capture_output=True, text=True)


def versions(lineage: Path) -> list[str]:
    return sorted(p.name for p in (lineage / "versions").iterdir() if not p.name.startswith("."))


def test_issue_with_sans_chains_to_pebble_root(
    pebble: Pebble, env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    result = certkeeper(env, "issue", "san.test", "www.san.test", "Api.San.Test.")
    assert result.returncode == 0, result.stderr
    lineage = store / "san.test"
    assert result.stdout.startswith("issued san.test www.san.test api.san.test: serial ")
    assert str(lineage) in result.stdout

    cert = load_cert(lineage / "cert.pem")
    assert dns_names(cert) == {"san.test", "www.san.test", "api.san.test"}
    verified = openssl_verify(pebble.root_pem(), lineage, tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # The chain does not verify against an unrelated root: the check above means something.
    other_root = pebble.tls.ca_pem.read_bytes()
    assert openssl_verify(other_root, lineage, tmp_path).returncode != 0

    assert (lineage / "fullchain.pem").read_bytes() == (lineage / "cert.pem").read_bytes() + (
        lineage / "chain.pem"
    ).read_bytes()
    assert spki(load_key(lineage / "privkey.pem").public_key()) == spki(cert.public_key())
    assert stat.S_IMODE(os.stat(lineage / "privkey.pem").st_mode) == 0o600
    account_keys = list((store / "accounts").glob("*/key.pem"))
    assert len(account_keys) == 1
    assert stat.S_IMODE(account_keys[0].stat().st_mode) == 0o600


def test_rerun_with_good_certificate_makes_no_order(ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run) -> None:
    first = certkeeper(ari_env, "issue", "rerun.test", "www.rerun.test")
    assert first.returncode == 0, first.stderr
    assert len(ari.recorded_orders()) == 1
    lineage = store / "rerun.test"
    serial = load_cert(lineage / "cert.pem").serial_number

    again = certkeeper(ari_env, "issue", "rerun.test", "www.rerun.test")
    assert again.returncode == 0, again.stderr
    assert "still good" in again.stdout
    assert len(ari.recorded_orders()) == 1, "a still-good certificate must not be ordered again"
    assert load_cert(lineage / "cert.pem").serial_number == serial
    assert versions(lineage) == ["1"]


def test_rerun_without_ari_keeps_the_certificate(env: Env, store: Path, certkeeper: Run) -> None:
    """Against plain Pebble (no ARI) the lifetime rule decides: a fresh certificate is left alone."""
    assert certkeeper(env, "issue", "plain-rerun.test").returncode == 0
    lineage = store / "plain-rerun.test"
    before = (lineage / "cert.pem").read_bytes()
    again = certkeeper(env, "issue", "plain-rerun.test")
    assert again.returncode == 0, again.stderr
    assert "still good" in again.stdout
    assert (lineage / "cert.pem").read_bytes() == before
    assert versions(lineage) == ["1"]


@pytest.mark.parametrize(
    ("key_type", "kind", "size"),
    [
        ("ec-p256", "ec", "secp256r1"),
        ("ec-p384", "ec", "secp384r1"),
        ("rsa-2048", "rsa", 2048),
        ("rsa-3072", "rsa", 3072),
        ("rsa-4096", "rsa", 4096),
    ],
)
def test_each_key_type(key_type: str, kind: str, size: str | int, env: Env, store: Path, certkeeper: Run) -> None:
    name = f"{key_type}.keys.test"
    result = certkeeper(env, "issue", "--key-type", key_type, name)
    assert result.returncode == 0, result.stderr
    key = load_key(store / name / "privkey.pem")
    if kind == "ec":
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == size
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        assert key.key_size == size
    cert = load_cert(store / name / "cert.pem")
    assert spki(cert.public_key()) == spki(key.public_key())
    meta = json.loads((store / name / "meta.json").read_text())
    assert meta["key_type"] == key_type


def test_key_type_change_orders_a_new_key(env: Env, store: Path, certkeeper: Run) -> None:
    assert certkeeper(env, "issue", "switch.keys.test").returncode == 0
    switched = certkeeper(env, "issue", "--key-type", "rsa-2048", "switch.keys.test")
    assert switched.returncode == 0, switched.stderr
    assert switched.stdout.startswith("renewed switch.keys.test")
    assert isinstance(load_key(store / "switch.keys.test" / "privkey.pem"), rsa.RSAPrivateKey)
    assert versions(store / "switch.keys.test") == ["1", "2"]


def test_names_change_orders_a_certificate_covering_them(env: Env, store: Path, certkeeper: Run) -> None:
    assert certkeeper(env, "issue", "grow.test").returncode == 0
    grown = certkeeper(env, "issue", "grow.test", "www.grow.test")
    assert grown.returncode == 0, grown.stderr
    assert dns_names(load_cert(store / "grow.test" / "cert.pem")) == {"grow.test", "www.grow.test"}


def test_deploy_hook_runs_only_when_the_certificate_changed(
    env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    calls = tmp_path / "hook-calls"
    hook = f'printf "%s|%s\\n" "$RENEWED_LINEAGE" "$RENEWED_DOMAINS" >> {calls}'
    args = ("issue", "--deploy-hook", hook, "hook.test", "www.hook.test")
    expected = f"{store / 'hook.test'}|hook.test www.hook.test"

    assert certkeeper(env, *args).returncode == 0
    assert calls.read_text().splitlines() == [expected]
    unchanged = certkeeper(env, *args)
    assert unchanged.returncode == 0 and "still good" in unchanged.stdout
    assert calls.read_text().splitlines() == [expected], "the hook ran although nothing changed"
    assert certkeeper(env, *args, "--force").returncode == 0
    assert calls.read_text().splitlines() == [expected, expected]


def test_failing_deploy_hook_is_reported_and_the_certificate_kept(env: Env, store: Path, certkeeper: Run) -> None:
    result = certkeeper(env, "issue", "--deploy-hook", "echo reload failed >&2; exit 3", "badhook.test")
    assert result.returncode != 0
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1
    assert "deploy hook exited 3" in errors[0] and "reload failed" in errors[0]
    assert dns_names(load_cert(store / "badhook.test" / "cert.pem")) == {"badhook.test"}


def test_status_json_describes_each_certificate(env: Env, store: Path, certkeeper: Run) -> None:
    assert certkeeper(env, "issue", "--key-type", "ec-p384", "status.test", "www.status.test").returncode == 0
    result = certkeeper(env, "status", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["lineage"] for r in rows] == ["status.test"]
    row = rows[0]
    cert = load_cert(store / "status.test" / "cert.pem")
    assert set(row["names"]) == {"status.test", "www.status.test"}
    assert row["key_type"] == "ec-p384"
    assert row["serial"] == format(cert.serial_number, "x")
    assert row["issuer"] == cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert row["not_after"] == cert.not_valid_after_utc.isoformat()
    lifetime_days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert lifetime_days - 1 <= row["days_left"] <= lifetime_days + 1
    assert row["renew_at"] is not None and row["renew_at"] < row["not_after"]
    assert row["next_check"] is not None
    assert row["problem"] is None and row["last_error"] is None
    assert row["path"] == str(store / "status.test")

    table = certkeeper(env, "status")
    assert table.returncode == 0
    assert "status.test" in table.stdout and "ec-p384" in table.stdout


def test_failed_validation_is_reported_and_shown_by_status(
    pebble: Pebble, make_env: Any, store: Path, certkeeper: Run
) -> None:
    """The responder listens where the CA does not look: the CA's problem reaches the user."""
    from testbench.pebble import free_port

    wrong = make_env(pebble.directory_url, pebble.ca_bundle, free_port(), store)
    result = certkeeper(wrong, "issue", "unreachable-responder.test")
    assert result.returncode != 0
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1
    assert errors[0].startswith("certkeeper: error: unreachable-responder.test: CA error connection")
    assert not (store / "unreachable-responder.test" / "cert.pem").exists()
    rows = json.loads(certkeeper(wrong, "status", "--json").stdout)
    assert rows[0]["lineage"] == "unreachable-responder.test"
    assert "connection" in rows[0]["last_error"]

    # Straight away again: the failure backs off (1 minute) instead of burning another authorization.
    again = certkeeper(wrong, "issue", "unreachable-responder.test")
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "not ordered" in lines[0] and "backing off after 1 failure" in lines[0]
    assert "CA error connection" in lines[0] and "--force tries now" in lines[0]


def test_private_key_never_appears_in_output(ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run) -> None:
    runs = [certkeeper(ari_env, "issue", "-vv", "secret.test", "www.secret.test")]
    ari.window_in_past()
    runs.append(certkeeper(ari_env, "renew", "-vv"))
    runs.append(certkeeper(ari_env, "status"))
    runs.append(certkeeper(ari_env, "status", "--json"))
    assert [r.returncode for r in runs] == [0, 0, 0, 0], [r.stderr for r in runs]
    assert "DEBUG" in runs[0].stderr, "-vv must actually log at debug level for this test to mean anything"
    assert "renewed secret.test" in runs[1].stdout
    key_files = [*store.glob("secret.test/versions/*/privkey.pem"), *store.glob("accounts/*/key.pem")]
    assert len(key_files) == 3  # the first and the renewed certificate's keys, and the account key
    key_lines = [line for path in key_files for line in path.read_text().splitlines() if "-----" not in line]
    for run in runs:
        output = run.stdout + run.stderr
        assert "PRIVATE KEY" not in output
        assert not [line for line in key_lines if line in output]
