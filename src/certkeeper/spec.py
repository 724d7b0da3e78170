"""What the user wants, validated: certificate names, key types and the CA to ask.

Everything here is a plain frozen value. Bad input raises ``ConfigError`` with one line
that says what is wrong and how to fix it, before any network traffic.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from certkeeper.errors import ConfigError

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
SERVER_ALIASES = {"letsencrypt": LETSENCRYPT, "letsencrypt-staging": LETSENCRYPT_STAGING}

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class KeyType(enum.StrEnum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"

    @classmethod
    def parse(cls, text: str) -> KeyType:
        canonical = text.strip().lower().replace("_", "-")
        aliases = {"ecdsa": "ec-p256", "p256": "ec-p256", "p384": "ec-p384", "rsa": "rsa-2048"}
        canonical = aliases.get(canonical, canonical)
        canonical = re.sub(r"^(rsa|ec)(?=\d|p)", r"\1-", canonical)
        try:
            return cls(canonical)
        except ValueError:
            choices = ", ".join(k.value for k in cls)
            raise ConfigError(f"unknown key type {text!r}", f"use one of {choices}") from None


def ip_of(name: str) -> str | None:
    """The canonical text of ``name`` if it is an IPv4 or IPv6 address (``[...]`` allowed), else None."""
    try:
        return str(ipaddress.ip_address(name.strip().strip("[]")))
    except ValueError:
        return None


def normalize_name(raw: str, *, allow_wildcard: bool = False) -> str:
    """One DNS name (lower-cased, in ASCII/IDNA) or IP address, or a ConfigError saying why not."""
    name = raw.strip().rstrip(".").lower()
    if not name:
        raise ConfigError("an empty name was given", "give DNS names like example.com")
    address = ip_of(name)
    if address is not None:
        # RFC 8738: an IP-address identifier, in its canonical text form (IPv6 compressed, lower case).
        return address
    if not name.isascii() or "xn--" in name:
        name = _to_a_labels(raw, name)
    wildcard = name.startswith("*.")
    if wildcard:
        if not allow_wildcard:
            raise ConfigError(
                f"{raw!r} is a wildcard name",
                "HTTP-01 cannot validate wildcards; list the exact names, or use DNS-01 validation",
            )
        name = name[2:]
    if len(name) > 253:
        raise ConfigError(f"{raw!r} is longer than 253 characters")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise ConfigError(f"{raw!r} has an empty label", "remove the doubled or leading dot")
        if not _LABEL.match(label):
            raise ConfigError(
                f"{raw!r} has an invalid label {label!r}",
                "labels are 1-63 letters, digits or hyphens, not starting or ending with a hyphen",
            )
    if len(labels) < 2:
        raise ConfigError(f"{raw!r} is a single-label name", "a public CA needs a full name like host.example.com")
    if labels[-1].isdigit():
        raise ConfigError(f"{raw!r} ends in a numeric label", "give a DNS name, not an address")
    return ("*." if wildcard else "") + name


def _to_a_labels(raw: str, name: str) -> str:
    """An internationalized name in ASCII by UTS 46 / IDNA 2008, as browsers convert it.

    Python's own "idna" codec is IDNA 2003, which maps ß to ss and ς to σ: a different name.
    A-labels (``xn--``) typed as such must decode to a valid label and back to themselves.
    """
    import idna  # only for names that need it: plain ASCII names are the common case

    wildcard = name.startswith("*.")
    bare = name[2:] if wildcard else name
    try:
        if not bare.isascii():
            # rstrip: a trailing ideographic full stop maps to a trailing dot, which DNS ignores too.
            bare = idna.encode(bare, uts46=True, transitional=False).decode("ascii").rstrip(".")
        for label in bare.split("."):
            if label.startswith("xn--") and idna.encode(idna.decode(label)).decode("ascii") != label:
                raise idna.IDNAError(f"{label!r} is not the canonical form of its name")
    except (idna.IDNAError, UnicodeError) as error:
        raise ConfigError(
            f"{raw!r} is not a valid internationalized domain name ({error})",
            "check the spelling; names are converted by IDNA 2008 (UTS 46) as browsers do",
        ) from None
    return ("*." if wildcard else "") + bare


def normalize_names(raw: Iterable[str], *, allow_wildcard: bool = False) -> tuple[str, ...]:
    """The names for one certificate, in order, duplicates dropped; the first one names it."""
    names: list[str] = []
    for item in raw:
        for part in item.replace(",", " ").split():
            name = normalize_name(part, allow_wildcard=allow_wildcard)
            if name not in names:
                names.append(name)
    if not names:
        raise ConfigError("no names given", "give at least one DNS name, e.g. certkeeper issue example.com")
    if len(names) > 100:
        raise ConfigError(f"{len(names)} names given", "a certificate holds at most 100 names; split the list")
    return tuple(names)


def resolve_server(server: str) -> str:
    url = SERVER_ALIASES.get(server.strip().lower(), server.strip())
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(
            f"server {server!r} is not a URL",
            "give the CA's ACME directory URL, or letsencrypt / letsencrypt-staging",
        )
    return url


def plain_http_off_loopback(url: str) -> bool:
    """True for an ``http://`` directory URL on another host: its answers can be read and changed on the way."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = (parts.hostname or "").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


@dataclass(frozen=True)
class IssuerSpec:
    """The ACME CA and the account to use with it."""

    directory_url: str = LETSENCRYPT
    email: str | None = None
    eab_kid: str | None = None
    eab_hmac_key: str | None = None
    ca_bundle: str | None = None  # PEM file trusted for the CA's own HTTPS
    # One deadline for a whole order, every request included: how long a slow CA is waited for.
    order_timeout_s: float = 90.0

    def __post_init__(self) -> None:
        if not self.order_timeout_s > 0:
            raise ConfigError(f"order timeout {self.order_timeout_s!r} is not a positive number of seconds")
        if self.email is not None and not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", self.email):
            raise ConfigError(f"email {self.email!r} is not an address", "give an address like you@example.com")
        if bool(self.eab_kid) != bool(self.eab_hmac_key):
            raise ConfigError("external account binding needs both --eab-kid and --eab-hmac-key")


@dataclass(frozen=True)
class CertSpec:
    """One certificate: its names, key, and the choices to make when ordering it."""

    names: tuple[str, ...]
    key_type: KeyType = KeyType.EC_P256
    reuse_key: bool = False
    profile: str | None = None
    preferred_chain: str | None = None
    # Renew this long before expiry, whatever ARI or the lifetime rule say (a Certificate's renewBefore).
    renew_before: datetime.timedelta | None = None
    # Where a store with many certificates files it (the controller: namespace/Secret); default the first name.
    store_key: str | None = None

    @property
    def lineage(self) -> str:
        """Where the store files it: ``store_key``, else the first name (``*.`` as ``_.``, IPv6 ``:`` as ``_``)."""
        return self.store_key or self.names[0].replace("*", "_").replace(":", "_")
