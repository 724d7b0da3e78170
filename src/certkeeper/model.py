"""The values that flow between the stages: plain data, importing nothing heavy.

``import certkeeper.model`` loads neither ACME, cryptography nor Kubernetes, so the planner, the
store and the observers can share these types without pulling in the protocol stack.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass


@dataclass(frozen=True)
class CertInfo:
    """What the planner and status need to know of a leaf certificate."""

    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: str
    issuer: str
    ari_id: str | None  # RFC 9773 certificate identifier: base64url(AKI) "." base64url(serial)
    fingerprint: str

    @property
    def lifetime(self) -> datetime.timedelta:
        return self.not_after - self.not_before


@dataclass(frozen=True)
class IssuedCert:
    """A certificate the CA issued, with the key it was ordered for."""

    key_pem: bytes
    cert_pem: bytes
    chain_pem: bytes
    info: CertInfo

    @property
    def fullchain_pem(self) -> bytes:
        return self.cert_pem + self.chain_pem

    def __repr__(self) -> str:  # never show the key
        return f"IssuedCert(names={self.info.names!r}, serial={self.info.serial}, not_after={self.info.not_after})"


@dataclass(frozen=True)
class RenewalWindow:
    """The CA's suggested renewal window (ARI) and when to ask again."""

    start: datetime.datetime
    end: datetime.datetime
    retry_after: datetime.datetime


@dataclass(frozen=True)
class PendingOrder:
    """An order placed and not yet stored: enough to resume it instead of ordering again."""

    url: str
    names: tuple[str, ...]
    key_pem: bytes

    def __repr__(self) -> str:  # never show the key
        return f"PendingOrder(url={self.url!r}, names={self.names!r})"
