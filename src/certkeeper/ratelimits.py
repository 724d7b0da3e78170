"""A CA's rate limits as data, and how much room a planned order leaves under them.

Let's Encrypt's limits as published in its documentation on rate limits (read 2026-11-29):

| limit                                  | count | window  | exempt                                  |
| -------------------------------------- | ----- | ------- | --------------------------------------- |
| new orders per account                 | 300   | 3 hours | ARI renewals; renewals of the same names |
| certificates per registered domain     | 50    | 7 days  | ARI renewals; renewals of the same names |
| duplicate certificates (same name set) | 5     | 7 days  | ARI renewals                            |
| failed authorizations per hostname     | 5     | 1 hour  | ARI renewals                            |
| accounts per IP address                | 10    | 3 hours |                                         |

"ARI renewals" are orders that send ``replaces`` (RFC 9773). Other CAs: no limits unless configured
(``--rate-limits``). Windows are sliding: an event stops counting ``window`` after it happened.
Exempt renewals are never held back, but they still count against the limits (as Let's Encrypt long
counted them): the ledger errs towards refusing one order too many, never one too few.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from certkeeper.errors import ConfigError
from certkeeper.spec import LETSENCRYPT

Scope = Literal["orders", "domain", "duplicate", "failed", "accounts"]
SOURCE = "Let's Encrypt documentation, rate limits (read 2026-11-29)"


@dataclass(frozen=True)
class Limit:
    scope: Scope
    count: int
    window_s: float
    title: str
    fix: str  # what the user can do besides waiting
    # Renewals of exactly the names of a certificate already held are exempt (LE: the first two limits).
    renewal_exempt: bool = False

    @property
    def window(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.window_s)


HOUR = 3600.0
DAY = 24 * HOUR
LETSENCRYPT_LIMITS: tuple[Limit, ...] = (
    Limit("orders", 300, 3 * HOUR, "new orders per account",
          "spread the orders out, or use more than one account", renewal_exempt=True),
    Limit("domain", 50, 7 * DAY, "certificates per registered domain",
          "put more names in each certificate", renewal_exempt=True),
    Limit("duplicate", 5, 7 * DAY, "duplicate certificates for the same names",
          "keep the certificate already issued (the store has it) instead of ordering it again"),
    Limit("failed", 5, HOUR, "failed authorizations per hostname",
          "fix the validation (DNS, port 80, the proxy) and rehearse against staging"),
    Limit("accounts", 10, 3 * HOUR, "accounts per IP address",
          "keep the store (it holds the account) instead of registering again"),
)  # fmt: skip
_BY_SCOPE = {limit.scope: limit for limit in LETSENCRYPT_LIMITS}
_SCOPE_NAMES: dict[str, Scope] = {
    "new-orders": "orders", "per-domain": "domain", "duplicate": "duplicate",
    "failed-validations": "failed", "accounts": "accounts",
}  # fmt: skip
_UNITS = {"s": 1.0, "m": 60.0, "h": HOUR, "d": DAY}


def parse_limits(text: str, directory_url: str) -> tuple[Limit, ...]:
    """``auto`` (Let's Encrypt's for its production CA, none for others), ``letsencrypt``, ``none``, or
    ``new-orders=300/3h,per-domain=50/7d,...``; raises ConfigError with the accepted forms."""
    value = text.strip().lower()
    if value == "auto":
        return LETSENCRYPT_LIMITS if directory_url.rstrip("/") == LETSENCRYPT else ()
    if value == "letsencrypt":
        return LETSENCRYPT_LIMITS
    if value in ("none", ""):
        return ()
    limits = []
    for item in value.split(","):
        match = re.fullmatch(r"\s*([a-z-]+)\s*=\s*(\d+)\s*/\s*(\d+)\s*([smhd])\s*", item)
        if not match or match.group(1) not in _SCOPE_NAMES:
            raise ConfigError(
                f"--rate-limits: cannot read {item.strip()!r}",
                f"give auto, letsencrypt, none or NAME=COUNT/WINDOW[,...] with NAME one of "
                f"{', '.join(_SCOPE_NAMES)} and WINDOW like 3h or 7d",
            )
        base = _BY_SCOPE[_SCOPE_NAMES[match.group(1)]]
        window = int(match.group(3)) * _UNITS[match.group(4)]
        limits.append(dataclasses.replace(base, count=int(match.group(2)), window_s=window))
    return tuple(limits)


class Event(NamedTuple):  # a tuple, not a dataclass: a busy week's ledger holds tens of thousands
    """One thing the ledger recorded: an order placed, a certificate issued, a failed authorization,
    an account registered, or the CA refusing with rateLimited (``until`` from its Retry-After)."""

    kind: Literal["order", "cert", "failed", "account", "limited"]
    at: float  # seconds since the epoch
    account: str = ""
    names: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    until: float = 0.0
    open: bool = False  # an order still in flight: it may yet become a certificate
    reason: str = ""  # for "limited": what the CA answered (rateLimited, or busy with a 503)


@dataclass(frozen=True)
class Planned:
    """An order about to be placed."""

    account: str
    names: tuple[str, ...]
    domains: tuple[str, ...]
    ari_renewal: bool = False  # sends ``replaces``: exempt from all limits
    same_names_renewal: bool = False  # renews a held certificate for exactly these names


@dataclass(frozen=True)
class Refusal:
    """Why an order would exceed a limit, and when it would not."""

    limit: str
    count: int
    allowed: int
    window: str
    free_at: datetime.datetime
    subject: str
    fix: str

    def message(self) -> str:
        when = self.free_at.strftime("%Y-%m-%d %H:%M UTC")
        return (f"not ordering: {self.limit} would be exceeded for {self.subject} ({self.count} of {self.allowed} "
                f"in {self.window}); headroom returns at {when}: {self.fix}")  # fmt: skip


def _span(seconds: float) -> str:
    if seconds % DAY == 0:
        return f"{seconds / DAY:g} days" if seconds != DAY else "1 day"
    if seconds % HOUR == 0:
        return f"{seconds / HOUR:g} hours" if seconds != HOUR else "1 hour"
    return f"{seconds:g} s"


def _dt(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _counted(limit: Limit, event: Event, planned: Planned) -> str | None:
    """The subject ``event`` counts against for ``planned`` under ``limit`` (None: it does not count)."""
    if limit.scope == "orders" and event.kind == "order" and event.account == planned.account:
        return "this account"
    if limit.scope == "domain" and event.kind in ("cert", "order"):
        if event.kind == "order" and not event.open:
            return None  # a closed order became a certificate (counted as such) or failed
        shared = set(event.domains) & set(planned.domains)
        return min(shared) if shared else None
    if limit.scope == "duplicate" and (event.kind == "cert" or (event.kind == "order" and event.open)):
        return " ".join(planned.names) if sorted(event.names) == sorted(planned.names) else None
    if limit.scope == "failed" and event.kind == "failed" and event.account == planned.account:
        shared = set(event.names) & set(planned.names)
        return min(shared) if shared else None
    return None


def check(limits: Sequence[Limit], events: Iterable[Event], planned: Planned, now: float) -> Refusal | None:
    """The first limit the planned order would exceed (or a CA refusal still in force), else None."""
    recent = list(events)
    for event in recent:
        # A refusal names its scope: the account (no domains), or the registered domains it was about.
        held = not event.domains or set(event.domains) & set(planned.domains)
        if event.kind == "limited" and event.account == planned.account and event.until > now and held:
            return Refusal(f"the CA's Retry-After (it answered {event.reason or 'rateLimited'})", 1, 1,
                           "its Retry-After", _dt(event.until), " ".join(event.domains) or "this account",
                           "certkeeper waits as the CA asked")  # fmt: skip
    if planned.ari_renewal:
        return None
    for limit in limits:
        if limit.scope == "accounts" or (limit.renewal_exempt and planned.same_names_renewal):
            continue
        start = now - limit.window_s
        by_subject: dict[str, list[float]] = {}
        for event in recent:
            if event.at > start and (subject := _counted(limit, event, planned)) is not None:
                by_subject.setdefault(subject, []).append(event.at)
        for subject, times in sorted(by_subject.items()):
            if len(times) >= limit.count:
                times.sort()
                # Room for one more once the oldest events still needed to reach ``count`` age out.
                free_at = _dt(times[len(times) - limit.count] + limit.window_s)
                return Refusal(limit.title, len(times), limit.count, _span(limit.window_s), free_at, subject,
                               limit.fix)  # fmt: skip
    return None


def check_account(limits: Sequence[Limit], events: Iterable[Event], now: float) -> Refusal | None:
    """Whether registering one more account from this host would exceed the accounts-per-IP limit."""
    for limit in limits:
        if limit.scope != "accounts":
            continue
        times = sorted(e.at for e in events if e.kind == "account" and e.at > now - limit.window_s)
        if len(times) >= limit.count:
            free_at = _dt(times[len(times) - limit.count] + limit.window_s)
            return Refusal(limit.title, len(times), limit.count, _span(limit.window_s), free_at, "this host",
                           limit.fix)  # fmt: skip
    return None


def headroom(limits: Sequence[Limit], events: Iterable[Event], names: Sequence[str], domains: Sequence[str],
             account: str | None, now: float) -> dict[str, int]:  # fmt: skip
    """For a certificate's names: how many more of each limited thing fit now (limit title -> room)."""
    planned = Planned(account or "", tuple(names), tuple(domains))
    recent = list(events)
    room: dict[str, int] = {}
    for limit in limits:
        if limit.scope == "accounts" or (limit.scope in ("orders", "failed") and account is None):
            continue
        start = now - limit.window_s
        counts: dict[str, int] = {}
        for event in recent:
            if event.at > start and (subject := _counted(limit, event, planned)) is not None:
                counts[subject] = counts.get(subject, 0) + 1
        room[limit.title] = limit.count - max(counts.values(), default=0)
    return room


def retry_after_wait(events: Iterable[Event], account: str, now: float) -> float | None:
    """Seconds until the CA's last rateLimited answer for ``account`` stops holding, if it still does."""
    until = max((e.until for e in events if e.kind == "limited" and e.account == account), default=0.0)
    return until - now if until > now else None


# The label each limit has in metrics (``certkeeper_ratelimit_*{limit=...}``).
METRIC_NAMES: dict[Scope, str] = {
    "orders": "new_orders_per_account", "domain": "certificates_per_registered_domain",
    "duplicate": "duplicate_certificates", "failed": "failed_authorizations_per_hostname",
    "accounts": "accounts_per_ip_address",
}  # fmt: skip


class Usage(NamedTuple):
    """How much of one limit one subject (an account, a registered domain, this host) has used."""

    limit: str  # METRIC_NAMES' value
    label: str  # "account", "registered_domain", or "" (the limit has one subject: this host / ledger)
    subject: str
    allowed: int
    used: int
    reset_at: float  # when the headroom grows by one (the oldest event still needed to fill it ages out)


def usage(limits: Sequence[Limit], events: Iterable[Event], now: float) -> list[Usage]:
    """Each limit's use per subject, for the subjects with events inside its window (and the account
    limit's one subject always): a domain or account idle for a week drops out, so the series are bounded
    by what was ordered, not by what the ledger ever saw. Duplicate certificates (per name set) and failed
    authorizations (per hostname) are left out: one series per certificate or name is a cardinality the
    per-domain limit already sums up."""
    recent = list(events)
    rows: list[Usage] = []
    for limit in limits:
        start = now - limit.window_s
        times: dict[str, list[float]] = {}
        for event in recent:
            if event.at <= start:
                continue
            if limit.scope == "orders" and event.kind == "order":
                times.setdefault(event.account, []).append(event.at)
            elif limit.scope == "domain" and (event.kind == "cert" or (event.kind == "order" and event.open)):
                for domain in event.domains:
                    times.setdefault(domain, []).append(event.at)
            elif limit.scope == "accounts" and event.kind == "account":
                times.setdefault("", []).append(event.at)
        if limit.scope == "accounts":
            times.setdefault("", [])
        elif limit.scope not in ("orders", "domain"):
            continue
        label = {"orders": "account", "domain": "registered_domain"}.get(limit.scope, "")
        for subject, seen in sorted(times.items()):
            seen.sort()
            reset_at = seen[max(0, len(seen) - limit.count)] + limit.window_s if seen else now
            rows.append(Usage(METRIC_NAMES[limit.scope], label, subject, limit.count, len(seen), reset_at))
    return rows
