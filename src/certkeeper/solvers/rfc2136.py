"""DNS-01: through RFC 2136 dynamic updates signed with TSIG (BIND, Knot, PowerDNS, Windows DNS...), or
through another ``Publisher`` (a hosted provider's API, see ``lexicon``) with the same lookups and checks.

present: follow ``_acme-challenge`` CNAMEs to the name that really holds the record, find its zone
at the primary, note the record in the journal, add the TXT value (other values under the name
stay), then wait until every authoritative server of the zone serves it. cleanup removes exactly
that value. Records a killed run left are removed by the next run (see ``journal``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from certkeeper.errors import CertkeeperError, ConfigError
from certkeeper.solvers.base import DNS01, AccountKey, Challenge, Identifier, dns01_value
from certkeeper.solvers.dnswire import KeyRefused, Refused, Server, TsigKey, parse_server, system_lookup
from certkeeper.solvers.journal import Journal, Record

log = logging.getLogger(__name__)

MAX_CNAMES = 8
FIRST_CHECK_S = 0.02
MAX_CHECK_S = 2.0
CACHE_S = 300.0


@dataclass(frozen=True)
class Rfc2136Config:
    server: str  # HOST:PORT of the primary that accepts updates
    key: TsigKey | None
    ttl: int = 60
    timeout: float = 10.0  # one DNS exchange
    propagation_timeout: float = 120.0  # until every authoritative server serves the value


class Publisher(Protocol):
    """What changes the zone: RFC 2136 at the primary (``dnswire.Server``) or a provider's API."""

    def add_txt(self, zone: str, name: str, value: str, ttl: int = 60) -> None: ...

    def delete_txt(self, zone: str, name: str, value: str) -> None: ...


@dataclass(frozen=True)
class Target:
    """Where the TXT record for one name goes, and which servers must serve it."""

    name: str  # after CNAMEs
    zone: str
    servers: tuple[str, ...]  # addresses of the zone's authoritative servers (port: the primary's)


class Rfc2136Solver:
    challenge_type = DNS01

    def __init__(
        self, config: Rfc2136Config, journal: Journal, publisher: Publisher | None = None, via: str = "rfc2136"
    ) -> None:
        host, port = parse_server(config.server)
        self.config = config
        # ``server`` answers the lookups (CNAMEs, zone, name servers); ``publisher`` changes the zone.
        self.server = Server(host, port, config.key, config.timeout)
        self.publisher: Publisher = publisher or self.server
        self.via = via
        self.journal = journal
        self._lock = threading.Lock()
        self._targets: dict[str, tuple[float, Target]] = {}
        self._recovered = False

    def describe(self) -> str:
        return f"dns-01 ({self.via} at {self.server})"

    # -- finding where the record goes ----------------------------------------------------------

    def _follow_cnames(self, fqdn: str) -> str:
        name, seen = fqdn, [fqdn]
        for _ in range(MAX_CNAMES):
            authoritative, target = self.server.cname(name)
            if target is None and not authoritative:
                # Not a zone of the primary: the delegating CNAME lives at the name's own DNS host.
                found = system_lookup(name, "CNAME", self.config.timeout)
                target = found[0].rstrip(".") if found else None
            if target is None:
                return name
            if target in seen:
                raise ConfigError(f"the CNAMEs from {fqdn} loop ({' -> '.join([*seen, target])})", "fix the CNAMEs")
            seen.append(target)
            name = target
        raise ConfigError(f"{fqdn} is more than {MAX_CNAMES} CNAMEs deep", "point it at the TXT name directly")

    def _authoritative(self, zone: str) -> tuple[str, ...]:
        addresses: list[str] = []
        for ns in self.server.answers(zone, "NS"):
            host = ns.rstrip(".")
            found = self.server.answers(host, "A") or system_lookup(host, "A", self.config.timeout)
            found = found or system_lookup(host, "AAAA", self.config.timeout)
            addresses += [a for a in found if a not in addresses]
        if not addresses:
            log.warning("cannot resolve the name servers of %s; checking propagation at %s only", zone, self.server)
            addresses = [self.server.address]
        return tuple(addresses)

    def _target(self, identifier: Identifier) -> Target:
        fqdn = f"_acme-challenge.{identifier.name}"
        with self._lock:
            cached = self._targets.get(fqdn)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        name = self._follow_cnames(fqdn)
        zone = self.server.zone_of(name)
        if zone is None:
            via = f" (the CNAME target of {fqdn})" if name != fqdn else ""
            raise ConfigError(
                f"DNS server {self.server} serves no zone holding {name}{via}",
                "create the zone there, or give --dns-server the primary server of the zone",
            )
        target = Target(name, zone, self._authoritative(zone))
        with self._lock:
            self._targets[fqdn] = (time.monotonic() + CACHE_S, target)
        return target

    # -- the Solver protocol ---------------------------------------------------------------------

    def prepare(self, identifiers: Sequence[Identifier]) -> None:
        """Clean what a killed run left, then find every name's zone (checks the key and the zone)."""
        self._recover_once()
        for identifier in identifiers:
            self._target(identifier)

    def _record(self, identifier: Identifier, challenge: Challenge, account: AccountKey) -> tuple[Target, Record]:
        target = self._target(identifier)
        value = dns01_value(account.key_authorization(challenge.token))
        record = {"server": str(self.server), "via": self.via, "zone": target.zone, "name": target.name, "value": value}
        return target, record

    def present(self, identifier: Identifier, challenge: Challenge, account: AccountKey) -> None:
        self._recover_once()
        target, record = self._record(identifier, challenge, account)
        self.journal.add(record)
        try:
            self.publisher.add_txt(target.zone, target.name, record["value"], self.config.ttl)
        except (Refused, KeyRefused):
            self.journal.remove(record)  # the server said no: nothing was added
            raise
        self._wait_served(target, record["value"])

    def cleanup(self, identifier: Identifier, challenge: Challenge, account: AccountKey) -> None:
        """Take out exactly what ``present`` noted for this challenge (nothing, if it never got that far)."""
        value = dns01_value(account.key_authorization(challenge.token))
        for record in self.journal.pending():
            if record["value"] == value and record.get("via") == self.via and record["server"] == str(self.server):
                self.publisher.delete_txt(str(record["zone"]), str(record["name"]), value)
                self.journal.remove(record)

    def close(self) -> None:
        """Take out every record this process still has out (an interrupted run); best effort.

        The journal keeps them all the same: an update still in flight in a worker thread may land
        after this, and the next run removes whatever is left.
        """
        for record in self.journal.pending():
            try:
                self.publisher.delete_txt(str(record["zone"]), str(record["name"]), str(record["value"]))
            except CertkeeperError as error:
                log.warning("cannot remove the TXT record %s now (%s); the next run will", record["name"], error)

    # -- propagation -----------------------------------------------------------------------------

    def _wait_served(self, target: Target, value: str) -> None:
        """Return once every authoritative server serves ``value`` at ``target.name``; bounded."""
        deadline = time.monotonic() + self.config.propagation_timeout
        waiting = list(target.servers)
        delay = FIRST_CHECK_S
        while True:
            # No single query may run past the deadline (a silent server would hold it a whole timeout).
            limit = min(self.config.timeout, max(0.1, deadline - time.monotonic()))
            waiting = [a for a in waiting if value not in (self.server.txt_at(a, target.name, limit) or set())]
            if not waiting:
                return
            if time.monotonic() + delay > deadline:
                servers = ", ".join(f"{a}:{self.server.port}" for a in waiting)
                raise CertkeeperError(
                    f"the TXT record {target.name} was not served by {servers} within "
                    f"{self.config.propagation_timeout:g} s",
                    "check that those servers take the zone from the primary (NOTIFY, zone transfers)",
                )
            time.sleep(delay)
            delay = min(delay * 1.5, MAX_CHECK_S)

    # -- leftovers -------------------------------------------------------------------------------

    def _recover_once(self) -> None:
        with self._lock:
            if self._recovered:
                return
            self._recovered = True
        cleaned = self.journal.recover(self._clean_leftover)
        if cleaned:
            log.warning("removed %d TXT record(s) an interrupted run left at %s", cleaned, self.server)

    def _clean_leftover(self, record: Record) -> bool:
        if record.get("server") != str(self.server) or record.get("via", "rfc2136") != self.via:
            return False  # another solver's: left for it
        try:
            self.publisher.delete_txt(str(record["zone"]), str(record["name"]), str(record["value"]))
        except CertkeeperError as error:
            log.warning("cannot remove the leftover TXT record %s yet: %s", record.get("name"), error)
            return False
        return True
