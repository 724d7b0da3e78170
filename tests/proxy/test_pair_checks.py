"""The proxy's certificate checks in process: which pair is found, and each reason a pair is refused.

The proxy tests beside this one run nginx with real handshakes; these pin every refusal's line and
the files the proxy reads, fast enough to run under mutation testing (``make mutate``).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519

from certkeeper.kube.secret_store import FFDHE2048_PEM
from certkeeper.proxy import certs
from certkeeper.proxy.certs import (
    CLOCK_SKEW,
    MAX_FILE_BYTES,
    CertPair,
    PairRefused,
    check_pair,
    dh_parameters_ok,
    digest,
    find_pair,
    openssl_loads,
    read_pair,
    source_dir,
)
from testbench.pki import TestCA, key_pem

_CA = TestCA("proxy checks test CA")
NAMES = ("proxycert", "proxykey")
NOW = datetime.datetime.now(datetime.UTC)


def pair(**issue: object) -> tuple[bytes, bytes, x509.Certificate]:
    leaf = _CA.issue(["proxy.test", "www.proxy.test"], **issue)  # type: ignore[arg-type]
    return leaf.cert_pem + _CA.cert_pem, leaf.key_pem, leaf.cert


def refusal(raw: tuple[bytes, bytes], now: datetime.datetime | None = None) -> str:
    with pytest.raises(PairRefused) as caught:
        check_pair(raw, NAMES, now)
    return str(caught.value)


def test_a_good_pair_is_returned_as_nginx_will_load_it() -> None:
    chain, key, leaf = pair()
    checked = check_pair((chain, key), NAMES)
    assert checked.chain_pem == chain, "the chain is re-serialised, leaf first"
    loaded = serialization.load_pem_private_key(checked.key_pem, password=None)
    assert checked.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    assert loaded.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert checked.serial == leaf.serial_number
    assert checked.names == ("proxy.test", "www.proxy.test")
    assert checked.not_after == leaf.not_valid_after_utc
    expected = f"serial {leaf.serial_number:x} for proxy.test, www.proxy.test, valid until "
    assert checked.describe() == expected + f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    assert "PRIVATE" not in repr(checked)


def test_refusals_name_the_file_and_the_reason() -> None:
    chain, key, _ = pair()
    assert refusal((b"nothing here", key)) == "proxycert holds no PEM certificate"
    encrypted = serialization.load_pem_private_key(key, password=None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    assert refusal((chain, encrypted)) == "proxykey is encrypted; nginx needs an unencrypted key"
    garbage = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBtYXRlcmlhbA==\n-----END PRIVATE KEY-----\n"
    line = refusal((chain, garbage))
    assert line == "proxykey holds no readable PEM private key"
    other = key_pem(ec.generate_private_key(ec.SECP256R1()))
    assert refusal((chain, other)) == "proxykey does not match the certificate in proxycert (a mismatched pair)"
    dsa_key = dsa.generate_private_key(2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert refusal((chain, dsa_key)) == "proxykey is a DSAPrivateKey; use an RSA, ECDSA or Ed25519 key"


def test_the_names_in_messages_are_the_files_read() -> None:
    chain, key, _ = pair()
    with pytest.raises(PairRefused, match=r"^tls\.crt holds no PEM certificate$"):
        check_pair((b"", key), ("tls.crt", "tls.key"))
    with pytest.raises(PairRefused, match=r"^tls\.key holds no readable PEM private key$"):
        check_pair((chain, b"junk"), ("tls.crt", "tls.key"))


def test_an_expired_certificate_is_refused_from_its_last_second() -> None:
    chain, key, leaf = pair()
    end = leaf.not_valid_after_utc
    expected = f"the certificate in proxycert expired on {end:%Y-%m-%d %H:%M} UTC"
    assert refusal((chain, key), end) == expected
    assert check_pair((chain, key), NAMES, end - datetime.timedelta(seconds=1)).serial == leaf.serial_number
    past = pair(not_before=NOW - datetime.timedelta(days=60), not_after=NOW - datetime.timedelta(days=1))
    assert "expired on" in refusal(past[:2]), "the default 'now' is the current time"


def test_an_ed25519_pair_without_names_is_served() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(_CA.name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .sign(_CA.key, hashes.SHA256())
    )
    raw_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    checked = check_pair((cert.public_bytes(serialization.Encoding.PEM), raw_key), NAMES)
    assert checked.names == ()
    assert checked.describe().startswith("serial 7 for (no names), valid until ")


def write(directory: Path, **files: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name.replace("_", ".")).write_bytes(data)


def test_the_seed_names_come_first_then_tls_names(tmp_path: Path) -> None:
    assert find_pair(tmp_path) is None
    write(tmp_path, tls_crt=b"c", tls_key=b"k")
    assert find_pair(tmp_path) == (tmp_path / "tls.crt", tmp_path / "tls.key")
    (tmp_path / "proxycert").write_bytes(b"c")
    assert find_pair(tmp_path) == (tmp_path / "tls.crt", tmp_path / "tls.key"), "a certificate without its key"
    (tmp_path / "proxykey").write_bytes(b"k")
    assert find_pair(tmp_path) == (tmp_path / "proxycert", tmp_path / "proxykey")
    (tmp_path / "tls.key").unlink()
    (tmp_path / "tls.key").mkdir()
    assert find_pair(tmp_path) == (tmp_path / "proxycert", tmp_path / "proxykey")


def test_a_secret_volume_is_read_from_one_data_version(tmp_path: Path) -> None:
    # The kubelet's layout: ..2026_01_01/ holds the files, ..data -> it, and top-level links into ..data.
    write(tmp_path / "..2026_01_01", proxycert=b"c", proxykey=b"k")
    os.symlink("..2026_01_01", tmp_path / "..data")
    for name in ("proxycert", "proxykey"):
        os.symlink(f"..data/{name}", tmp_path / name)
    pinned = tmp_path / "..2026_01_01"
    assert source_dir(tmp_path) == pinned
    assert find_pair(tmp_path) == (pinned / "proxycert", pinned / "proxykey")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert source_dir(plain) == plain


def test_files_are_read_whole_up_to_one_mebibyte(tmp_path: Path) -> None:
    write(tmp_path, proxycert=b"c" * MAX_FILE_BYTES, proxykey=b"k")
    assert read_pair((tmp_path / "proxycert", tmp_path / "proxykey")) == (b"c" * MAX_FILE_BYTES, b"k")
    (tmp_path / "proxykey").write_bytes(b"k" * (MAX_FILE_BYTES + 1))
    with pytest.raises(PairRefused) as caught:
        read_pair((tmp_path / "proxycert", tmp_path / "proxykey"))
    assert str(caught.value) == "proxykey is larger than 1 MiB, which no certificate or key is"


def test_the_digest_tells_pairs_apart() -> None:
    assert digest((b"ab", b"c")) == hashlib.sha256(b"ab\0c").hexdigest()
    assert digest((b"ab", b"c")) != digest((b"a", b"bc"))


def test_cert_pair_is_a_plain_value() -> None:
    at = datetime.datetime(2030, 1, 1, 12, 30, tzinfo=datetime.UTC)
    value = CertPair(b"chain", b"key", 255, ("a.test",), at)
    assert value.describe() == "serial ff for a.test, valid until 2030-01-01 12:30 UTC"


# -- certificates a CA should never have issued: refused with the file and which certificate ----------


def patched(der_from: bytes, der_to: bytes, *, serial: int = 1) -> bytes:
    """A certificate (PEM) whose DER has ``der_from`` replaced by ``der_to``: damage the builder refuses to make."""
    leaf = _CA.issue(["odd.test"], serial=serial).cert.public_bytes(serialization.Encoding.DER)
    assert leaf.count(der_from) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography warns about a serial that is not positive
        return x509.load_der_x509_certificate(leaf.replace(der_from, der_to)).public_bytes(serialization.Encoding.PEM)


SERIAL_ONE = bytes.fromhex("020101")
SAN_OID, AKI_OID = bytes.fromhex("0603551d11"), bytes.fromhex("0603551d23")
EC_KEY_OID = bytes.fromhex("06072a8648ce3d0201")


@pytest.mark.parametrize(
    ("serial_der", "which"),
    [(bytes.fromhex("020100"), "zero"), (bytes.fromhex("0201ff"), "negative")],
    ids=["zero", "negative"],
)
def test_a_serial_number_that_is_not_positive_is_refused(serial_der: bytes, which: str) -> None:
    chain, key, _ = pair()
    bad = patched(SERIAL_ONE, serial_der)
    assert refusal((chain + bad, key)) == (
        "certificate 3 in proxycert has a serial number that is not positive, which RFC 5280 forbids"
    ), which
    leaf_only = pair(serial=1)  # serial 1 is the smallest allowed
    assert check_pair(leaf_only[:2], NAMES).serial == 1


def test_duplicate_extensions_are_refused_naming_the_certificate() -> None:
    chain, key, _ = pair()
    twice = patched(AKI_OID, SAN_OID)  # two subjectAltName extensions
    assert refusal((chain + twice, key)) == "certificate 3 in proxycert has malformed or duplicate extensions"
    with pytest.raises(PairRefused) as caught:
        check_pair((twice, key), ("tls.crt", "tls.key"))
    assert str(caught.value) == "the certificate in tls.crt has malformed or duplicate extensions"


def test_a_public_key_of_an_unknown_kind_is_refused() -> None:
    _, key, _ = pair()
    unknown = patched(EC_KEY_OID, bytes.fromhex("06072a8648ce3d0209"))  # an EC OID no library knows
    assert refusal((unknown, key)) == "the certificate in proxycert has a public key of an unknown kind"


def test_a_damaged_pem_certificate_is_called_malformed() -> None:
    _, key, _ = pair()
    damaged = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    assert refusal((damaged, key)) == "proxycert holds a malformed certificate"


def test_a_certificate_from_the_future_is_served_only_within_the_clock_skew() -> None:
    start = NOW.replace(microsecond=0) + datetime.timedelta(hours=1)
    chain, key, _ = pair(not_before=start)
    assert check_pair((chain, key), NAMES, start - CLOCK_SKEW).not_after > start, "5 minutes early is fine"
    assert refusal((chain, key), start - CLOCK_SKEW - datetime.timedelta(seconds=1)) == (
        f"the certificate in proxycert is not valid before {start:%Y-%m-%d %H:%M} UTC"
        " (check the clock of the machine that issued it, or wait)"
    )


def test_a_parser_surprise_is_one_line_that_never_quotes_the_input(monkeypatch: pytest.MonkeyPatch) -> None:
    chain, key, _ = pair()

    def surprise(*args: object) -> None:
        raise ValueError(key.decode())  # a parser's message may quote what it read

    monkeypatch.setattr(certs, "_check_fields", surprise)
    assert refusal((chain, key)) == "proxycert or proxykey is malformed and cannot be checked"


def test_what_is_not_a_regular_file_is_refused_without_hanging(tmp_path: Path) -> None:
    write(tmp_path, proxykey=b"k")
    os.mkfifo(tmp_path / "proxycert")  # opened without blocking although nobody writes to it
    with pytest.raises(PairRefused) as caught:
        read_pair((tmp_path / "proxycert", tmp_path / "proxykey"))
    assert str(caught.value) == "proxycert is not a regular file"
    with pytest.raises(PairRefused) as caught:
        read_pair((tmp_path / "tls.crt", tmp_path / "proxykey"))
    assert str(caught.value) == "cannot read tls.crt: No such file or directory"


def test_openssl_must_load_the_pair_as_nginx_will(tmp_path: Path) -> None:
    chain, key, _ = pair()
    write(tmp_path, proxycert=chain, proxykey=key)
    openssl_loads(tmp_path / "proxycert", tmp_path / "proxykey")
    (tmp_path / "proxykey").write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(PairRefused) as caught:
        openssl_loads(tmp_path / "proxycert", tmp_path / "proxykey")
    assert str(caught.value) == "OpenSSL, which nginx uses, cannot load the pair (KEY_VALUES_MISMATCH)"
    (tmp_path / "proxycert").write_bytes(b"junk")
    with pytest.raises(PairRefused) as caught:
        openssl_loads(tmp_path / "proxycert", tmp_path / "proxykey")
    assert str(caught.value) == "OpenSSL, which nginx uses, cannot load the pair (no reason given)"


def test_dh_parameters_are_checked() -> None:
    assert dh_parameters_ok(FFDHE2048_PEM) is True
    assert dh_parameters_ok(b"-----BEGIN DH PARAMETERS-----\nAAAA\n-----END DH PARAMETERS-----\n") is False
    assert dh_parameters_ok(b"") is False
