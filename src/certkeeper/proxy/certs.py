"""Finding and checking a certificate/key pair in the mounted secrets directory.

Nothing here ever puts key material into a message: refusals name the file and the reason only.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

# The seed's names first; tls.* is what kubernetes.io/tls Secrets (and later seed versions) use.
PAIR_NAMES = (("proxycert", "proxykey"), ("tls.crt", "tls.key"))
MAX_FILE_BYTES = 1 << 20


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
    cert_path, key_path = paths
    return _read(cert_path), _read(key_path)


def digest(raw: tuple[bytes, bytes]) -> str:
    return hashlib.sha256(raw[0] + b"\0" + raw[1]).hexdigest()


def _read(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise PairRefused(f"{path.name} is larger than 1 MiB, which no certificate or key is")
    return data


def check_pair(raw: tuple[bytes, bytes], names: tuple[str, str], now: datetime | None = None) -> CertPair:
    """Parse and match the pair; return it re-serialised so nginx loads exactly what was checked."""
    cert_name, key_name = names
    chain_raw, key_raw = raw
    try:
        chain = x509.load_pem_x509_certificates(chain_raw)
    except ValueError:
        raise PairRefused(f"{cert_name} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_raw, password=None)
    except TypeError:
        raise PairRefused(f"{key_name} is encrypted; nginx needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        # The parser's own message may quote the input; never repeat it.
        raise PairRefused(f"{key_name} holds no readable PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise PairRefused(f"{key_name} is a {type(key).__name__}; use an RSA, ECDSA or Ed25519 key")
    leaf = chain[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if leaf.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise PairRefused(f"{key_name} does not match the certificate in {cert_name} (a mismatched pair)")
    now = now or datetime.now(UTC)
    if leaf.not_valid_after_utc <= now:
        raise PairRefused(f"the certificate in {cert_name} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
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
