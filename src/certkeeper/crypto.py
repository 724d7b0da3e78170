"""Keys, CSRs and certificate facts; the one place that touches ``cryptography`` for them."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtensionOID, NameOID

from certkeeper.errors import CertkeeperError, ConfigError
from certkeeper.model import CertInfo
from certkeeper.spec import KeyType, ip_of

_CURVES = {KeyType.EC_P256: ec.SECP256R1, KeyType.EC_P384: ec.SECP384R1}
_RSA_BITS = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}


def generate_key(key_type: KeyType) -> bytes:
    """A new private key as PKCS#8 PEM."""
    key: CertificateIssuerPrivateKeyTypes
    if key_type in _CURVES:
        key = ec.generate_private_key(_CURVES[key_type]())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(key_pem: bytes) -> CertificateIssuerPrivateKeyTypes:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        # The message must not echo the key material.
        raise CertkeeperError("the private key is not a readable unencrypted PEM key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertkeeperError("the private key is neither ECDSA nor RSA")
    return key


def key_type_of(key_pem: bytes) -> KeyType | None:
    key = load_key(key_pem)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": KeyType.EC_P256, "secp384r1": KeyType.EC_P384}.get(key.curve.name)
    assert isinstance(key, rsa.RSAPrivateKey)
    return {2048: KeyType.RSA_2048, 3072: KeyType.RSA_3072, 4096: KeyType.RSA_4096}.get(key.key_size)


# RFC 5280's upper bound for a common name; DNS names run to 253 characters.
MAX_COMMON_NAME = 64


def general_name(name: str) -> x509.GeneralName:
    """A SAN entry: an iPAddress for an IP address (RFC 8738), else a dNSName."""
    address = ip_of(name)
    return x509.IPAddress(ipaddress.ip_address(address)) if address else x509.DNSName(name)


def make_csr(key_pem: bytes, names: tuple[str, ...]) -> bytes:
    """A CSR for ``names``; the common name is the first name when it fits, else left out.

    Clients and CAs go by the SANs; Let's Encrypt itself leaves the common name out when the first
    name is too long for it, so a long first name is no reason to refuse the certificate.
    """
    key = load_key(key_pem)
    # The common name is the first DNS name when it fits; addresses only, or too long: an empty subject.
    dns = [n for n in names if ip_of(n) is None]
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, dns[0])] if dns and len(dns[0]) <= MAX_COMMON_NAME else []
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .add_extension(x509.SubjectAlternativeName([general_name(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def check_ca_bundle(path: str) -> None:
    """Refuse a --ca-bundle that holds no PEM certificate, before it turns into a TLS error later."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        problem = f"cannot read --ca-bundle {path} ({error.strerror})"
        raise ConfigError(problem, "check the path and its permissions") from None
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        # Not echoing the content: a private key given by mistake must stay out of the message.
        raise ConfigError(
            f"--ca-bundle {path} holds no PEM certificate",
            "give the CA's root certificate as PEM (a file with -----BEGIN CERTIFICATE-----)",
        ) from None


def load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    return x509.load_pem_x509_csr(csr_pem)


def split_pem_chain(fullchain_pem: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    parts = [p.strip() + b"\n" for p in fullchain_pem.split(marker) if p.strip()]
    return [p.replace(b"\n\n", b"\n").rstrip(b"\n") + b"\n" + marker + b"\n" for p in parts]


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def cert_info(cert_pem: bytes) -> CertInfo:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CertkeeperError("the certificate is not readable PEM") from None
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        addresses = san.get_values_for_type(x509.IPAddress)  # type: ignore[attr-defined]
        names = tuple(san.get_values_for_type(x509.DNSName)) + tuple(str(ip) for ip in addresses)  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        names = ()
    ari_id = None
    try:
        aki = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
        if aki.key_identifier:  # type: ignore[attr-defined]
            serial = cert.serial_number
            serial_der = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
            ari_id = _b64url(aki.key_identifier) + "." + _b64url(serial_der)  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        pass
    issuer_cn = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertInfo(
        names=names,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=format(cert.serial_number, "x"),
        issuer=str(issuer_cn[0].value) if issuer_cn else cert.issuer.rfc4514_string(),
        ari_id=ari_id,
        fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )


def chain_issuer_names(fullchain_pem: bytes) -> list[str]:
    """Issuer common names along a chain, leaf first (used to pick a preferred chain)."""
    out = []
    for pem in split_pem_chain(fullchain_pem):
        cert = x509.load_pem_x509_certificate(pem)
        cn = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        out.append(str(cn[0].value) if cn else cert.issuer.rfc4514_string())
    return out


def key_matches_cert(key_pem: bytes, cert_pem: bytes) -> bool:
    key = load_key(key_pem)
    cert = x509.load_pem_x509_certificate(cert_pem)
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(serialization.Encoding.DER, fmt) == cert.public_key().public_bytes(
        serialization.Encoding.DER, fmt
    )


# RFC 8737 §3: id-pe-acmeIdentifier, a critical extension holding SHA-256(key authorization).
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def tls_alpn_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): the self-signed TLS-ALPN-01 validation certificate for ``name``."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certkeeper tls-alpn-01")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([general_name(name)]), critical=False)
        # The extension's value is the DER OCTET STRING of the digest: tag 4, length 32.
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
