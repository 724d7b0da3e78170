"""Finding and checking a certificate/key pair in the mounted secrets directory.

Nothing here ever puts key material into a message: refusals name the file and the reason only.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import stat
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

# The seed's names first; tls.* is what kubernetes.io/tls Secrets (and later seed versions) use.
PAIR_NAMES = (("proxycert", "proxykey"), ("tls.crt", "tls.key"))
MAX_FILE_BYTES = 1 << 20
# A certificate issued a moment ago by a CA whose clock runs a little ahead is still served.
CLOCK_SKEW = timedelta(minutes=5)


class PairRefused(Exception):
    """A pair that must not be served; ``str()`` is one line naming the file and the reason."""


@dataclass(frozen=True)
class CertPair:
    chain_pem: bytes
    key_pem: bytes = field(repr=False)
    serial: int
    names: tuple[str, ...]
    not_after: datetime

    def describe(self) -> str:
        names = ", ".join(self.names) or "(no names)"
        return f"serial {self.serial:x} for {names}, valid until {self.not_after:%Y-%m-%d %H:%M} UTC"


def source_dir(secrets_dir: Path) -> Path:
    """Pin one version of a Kubernetes Secret volume, so cert and key come from the same ``..data`` swap."""
    data = secrets_dir / "..data"
    return Path(os.path.realpath(data)) if data.is_symlink() else secrets_dir


def find_pair(secrets_dir: Path) -> tuple[Path, Path] | None:
    base = source_dir(secrets_dir)
    for cert_name, key_name in PAIR_NAMES:
        cert, key = base / cert_name, base / key_name
        if cert.is_file() and key.is_file():
            return cert, key
    return None


def read_pair(paths: tuple[Path, Path]) -> tuple[bytes, bytes]:
    """Both files' bytes; a file that cannot be read, or is too large to be a certificate, is a refusal."""
    cert_path, key_path = paths
    return _read(cert_path), _read(key_path)


def digest(raw: tuple[bytes, bytes]) -> str:
    return hashlib.sha256(raw[0] + b"\0" + raw[1]).hexdigest()


def _read(path: Path) -> bytes:
    try:
        # O_NONBLOCK: a FIFO swapped in after find_pair looked must not hang the poll loop forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise PairRefused(f"{path.name} is not a regular file")
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise PairRefused(f"cannot read {path.name}: {e.strerror or type(e).__name__}") from None
    if len(data) > MAX_FILE_BYTES:
        raise PairRefused(f"{path.name} is larger than 1 MiB, which no certificate or key is")
    return data


def check_pair(raw: tuple[bytes, bytes], names: tuple[str, str], now: datetime | None = None) -> CertPair:
    """Parse and match the pair; return it re-serialised so nginx loads exactly what was checked.

    Whatever the bytes hold, the only exception is PairRefused: a parser's surprise (a field that only
    fails when read, an algorithm it does not know) must never take the proxy down.
    """
    cert_name, key_name = names
    try:
        with warnings.catch_warnings():
            # cryptography warns about (and still parses) some RFC 5280 violations; they are refused below.
            warnings.simplefilter("ignore")
            return _check(raw, names, now or datetime.now(UTC))
    except PairRefused:
        raise
    except Exception:
        # The parser's own message may quote the input; never repeat it.
        raise PairRefused(f"{cert_name} or {key_name} is malformed and cannot be checked") from None


def _check(raw: tuple[bytes, bytes], names: tuple[str, str], now: datetime) -> CertPair:
    cert_name, key_name = names
    chain_raw, key_raw = raw
    try:
        chain = x509.load_pem_x509_certificates(chain_raw)
    except Exception:
        if b"-----BEGIN CERTIFICATE-----" in chain_raw:
            raise PairRefused(f"{cert_name} holds a malformed certificate") from None
        raise PairRefused(f"{cert_name} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_raw, password=None)
    except TypeError:
        raise PairRefused(f"{key_name} is encrypted; nginx needs an unencrypted key") from None
    except Exception:
        raise PairRefused(f"{key_name} holds no readable PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise PairRefused(f"{key_name} is a {type(key).__name__}; use an RSA, ECDSA or Ed25519 key")
    for index, cert in enumerate(chain):
        _check_fields(cert, "the certificate" if index == 0 else f"certificate {index + 1}", cert_name)
    leaf = chain[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    try:
        leaf_public = leaf.public_key().public_bytes(der, spki)
    except Exception:
        raise PairRefused(f"the certificate in {cert_name} has a public key of an unknown kind") from None
    if leaf_public != key.public_key().public_bytes(der, spki):
        raise PairRefused(f"{key_name} does not match the certificate in {cert_name} (a mismatched pair)")
    if leaf.not_valid_after_utc <= now:
        raise PairRefused(f"the certificate in {cert_name} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > now + CLOCK_SKEW:
        raise PairRefused(
            f"the certificate in {cert_name} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            " (check the clock of the machine that issued it, or wait)"
        )
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names_in_cert = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names_in_cert = ()
    pem = serialization.Encoding.PEM
    return CertPair(
        chain_pem=b"".join(c.public_bytes(pem) for c in chain),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        serial=leaf.serial_number,
        names=names_in_cert,
        not_after=leaf.not_valid_after_utc,
    )


def _check_fields(cert: x509.Certificate, which: str, cert_name: str) -> None:
    """Read every field now: cryptography parses some lazily, and a bad one must be a refusal here."""
    where = f"{which} in {cert_name}"
    try:
        cert.extensions  # noqa: B018 - parsing them is the point
    except Exception:
        raise PairRefused(f"{where} has malformed or duplicate extensions") from None
    try:
        serial = cert.serial_number
        cert.not_valid_before_utc  # noqa: B018
        cert.not_valid_after_utc  # noqa: B018
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
    except Exception:
        raise PairRefused(f"{where} has a malformed serial number, validity or name") from None
    if serial <= 0:
        raise PairRefused(f"{where} has a serial number that is not positive, which RFC 5280 forbids")


def openssl_loads(cert: Path, key: Path) -> None:
    """Refuse files that the OpenSSL nginx links against would reject at every handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        # Only OpenSSL's reason code: a fixed word, never the file's content.
        reason = e.reason or "no reason given"
        raise PairRefused(f"OpenSSL, which nginx uses, cannot load the pair ({reason})") from None


def dh_parameters_ok(data: bytes) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cryptography's deprecation of finite-field DH; nginx still uses it
            serialization.load_pem_parameters(data)
    except Exception:
        return False
    return True
