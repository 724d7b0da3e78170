"""The values that flow between the stages: plain data, importing nothing heavy.

``import certkeeper.model`` loads neither ACME, cryptography nor Kubernetes, so the planner, the
store and the observers can share these types without pulling in the protocol stack.
"""

from __future__ import annotations

import dataclasses
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


def _when(raw: object, key: str, problems: list[str]) -> datetime.datetime | None:
    if raw is None:
        return None
    try:
        if not isinstance(raw, str):
            raise TypeError
        moment = datetime.datetime.fromisoformat(raw)
        return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)
    except (TypeError, ValueError):
        problems.append(f"{key!r} is not a date ({str(raw)[:40]!r})")
        return None


def _text(raw: object, key: str, problems: list[str]) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    problems.append(f"{key!r} is not text")
    return None


@dataclass(frozen=True)
class RenewalState:
    """What a store remembers between runs for one certificate (``state.json``, or a Secret annotation).

    ``from_dict`` takes anything a file may hold and never raises: a malformed field falls back to
    its default and is named in the problems it returns.
    """

    failures: int = 0
    # Writes of an issued certificate the store refused (the order journaled: retried without a new order).
    store_failures: int = 0
    last_failure: datetime.datetime | None = None
    last_error: str | None = None
    retry_after: datetime.datetime | None = None  # the CA's Retry-After after a rate limit
    next_check: datetime.datetime | None = None
    renew_at: datetime.datetime | None = None
    reason: str | None = None
    last_success: datetime.datetime | None = None
    # Fingerprint of a stored certificate whose deploy hook has not yet succeeded: recorded before
    # the swap, so a run killed in between runs the hook at the next run.
    hook_pending: str | None = None
    # Enough to renew the certificate again if its meta.json is lost.
    names: tuple[str, ...] = ()
    directory_url: str | None = None

    @classmethod
    def from_dict(cls, raw: object) -> tuple[RenewalState, list[str]]:
        if raw == {}:
            return cls(), []
        if not isinstance(raw, dict):
            if isinstance(raw, str) and raw.startswith("unreadable"):
                return cls(), [raw]  # what a store reports for a file it could not parse
            return cls(), [f"it holds {'null' if raw is None else type(raw).__name__}, not an object"]
        problems: list[str] = []
        failures = raw.get("failures", 0)
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
            problems.append(f"'failures' is not a count ({str(failures)[:20]!r})")
            failures = 0
        store_failures = raw.get("store_failures", 0)
        if isinstance(store_failures, bool) or not isinstance(store_failures, int) or store_failures < 0:
            problems.append(f"'store_failures' is not a count ({str(store_failures)[:20]!r})")
            store_failures = 0
        names = raw.get("names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            problems.append("'names' is not a list of names")
            names = []
        state = cls(
            failures=failures,
            store_failures=store_failures,
            last_failure=_when(raw.get("last_failure"), "last_failure", problems),
            last_error=_text(raw.get("last_error"), "last_error", problems),
            retry_after=_when(raw.get("retry_after"), "retry_after", problems),
            next_check=_when(raw.get("next_check"), "next_check", problems),
            renew_at=_when(raw.get("renew_at"), "renew_at", problems),
            reason=_text(raw.get("reason"), "reason", problems),
            last_success=_when(raw.get("last_success"), "last_success", problems),
            hook_pending=_text(raw.get("hook_pending"), "hook_pending", problems),
            names=tuple(names),
            directory_url=_text(raw.get("directory_url"), "directory_url", problems),
        )
        if failures and state.last_failure is None:
            state = dataclasses.replace(state, failures=0)
        return state, problems

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, datetime.datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            if value not in (None, [], "", 0) or item.name == "failures":
                out[item.name] = value
        return out


@dataclass(frozen=True)
class PendingOrder:
    """An order placed and not yet stored: enough to resume it instead of ordering again.

    ``url`` is empty while the order is about to be placed: its key and names are recorded before the
    newOrder request, so that a process that never learnt the URL still finds the order at the CA."""

    url: str
    names: tuple[str, ...]
    key_pem: bytes

    def __repr__(self) -> str:  # never show the key
        return f"PendingOrder(url={self.url!r}, names={self.names!r})"
