"""The solver seam: how a name is proven to the CA, and which solver proves which name.

A solver publishes one challenge's answer (``present``) and takes it down again (``cleanup``). It gets
plain values, not the ACME library's objects, so only ``acme/`` imports acme and josepy. Which solver
answers for a name is chosen the way cert-manager's selectors choose: an exact ``dnsNames`` match
wins over a ``dnsZones`` match, a longer zone over a shorter one, any selector over none, and the
first listed breaks a tie.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from certkeeper.errors import ConfigError
from certkeeper.spec import ip_of

HTTP01 = "http-01"
DNS01 = "dns-01"
TLSALPN01 = "tls-alpn-01"


@dataclass(frozen=True)
class Identifier:
    """A name the CA validates: ``name`` without ``*.``, ``wildcard`` set for ``*.name``."""

    name: str
    wildcard: bool = False

    @classmethod
    def parse(cls, dns_name: str) -> Identifier:
        return cls(dns_name[2:], True) if dns_name.startswith("*.") else cls(dns_name)

    def __str__(self) -> str:
        return f"*.{self.name}" if self.wildcard else self.name


@dataclass(frozen=True)
class AccountKey:
    """What a solver needs of the ACME account key: its RFC 7638 thumbprint, base64url."""

    thumbprint: str

    def key_authorization(self, token: str) -> str:
        return f"{token}.{self.thumbprint}"


@dataclass(frozen=True)
class Challenge:
    """One challenge of an authorization: its type (``http-01``, ``dns-01``) and token."""

    type: str
    token: str


def dns01_value(key_authorization: str) -> str:
    """RFC 8555 §8.4: the TXT value is base64url(SHA-256(key authorization)), unpadded."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class Solver(Protocol):
    """Publishes the answer to one challenge type. ``present`` returns once the CA can see it."""

    challenge_type: str

    def describe(self) -> str:
        """A short name for messages, e.g. ``dns-01 (rfc2136 at 192.0.2.1:53)``."""
        ...

    def prepare(self, identifiers: Sequence[Identifier]) -> None:
        """Check before ordering that the names can be presented (raise CertkeeperError if not)."""
        ...

    def present(self, identifier: Identifier, challenge: Challenge, account: AccountKey) -> None: ...

    def cleanup(self, identifier: Identifier, challenge: Challenge, account: AccountKey) -> None: ...

    def close(self) -> None:
        """The run is ending, perhaps interrupted mid-order: take out what is still presented, stop listening."""
        ...


@dataclass(frozen=True)
class Selector:
    """cert-manager's solver selector: empty matches every name."""

    dns_names: tuple[str, ...] = ()
    dns_zones: tuple[str, ...] = ()

    def rank(self, name: str) -> tuple[int, int] | None:
        """How specifically this selector matches ``name`` (higher wins), or None when it does not."""
        if not self.dns_names and not self.dns_zones:
            return (0, 0)
        if name in self.dns_names:
            return (2, 0)
        bare = name[2:] if name.startswith("*.") else name
        zones = [z for z in self.dns_zones if bare == z or bare.endswith("." + z)]
        if zones:
            return (1, max(len(z) for z in zones))
        return None


@dataclass(frozen=True)
class SolverEntry:
    solver: Solver
    selector: Selector = field(default_factory=Selector)


class Solvers:
    """The configured solvers, in order, and the choice of one per name."""

    def __init__(self, entries: Iterable[SolverEntry]) -> None:
        self.entries = tuple(entries)

    def for_name(self, dns_name: str, offered: Iterable[str] | None = None) -> Solver | None:
        """The solver for ``dns_name`` (``*.`` included) among those whose type the CA ``offered``."""
        wildcard = dns_name.startswith("*.")
        address = ip_of(dns_name) is not None
        best: tuple[tuple[int, int], int, Solver] | None = None
        for index, entry in enumerate(self.entries):
            solver = entry.solver
            if wildcard and solver.challenge_type != DNS01:
                continue  # RFC 8555 §7.1.3: a CA validates wildcards with DNS-01 only
            if address and solver.challenge_type == DNS01:
                continue  # RFC 8738 §7: never an IP address

            if offered is not None and solver.challenge_type not in offered:
                continue
            rank = entry.selector.rank(dns_name)
            if rank is not None and (best is None or (rank, -index) > (best[0], -best[1])):
                best = (rank, index, solver)
        return best[2] if best else None

    def check_names(self, names: Iterable[str]) -> None:
        """Refuse, before any order, a name that no configured solver can prove."""
        for name in names:
            if self.for_name(name) is not None:
                continue
            if name.startswith("*."):
                raise ConfigError(
                    f"{name!r} is a wildcard name and no DNS-01 solver covers it",
                    "configure a DNS-01 solver for it (e.g. --dns rfc2136 --dns-server HOST:PORT "
                    f"--tsig-key-file FILE, with --dns-zone {name[2:]} or no --dns-zone)",
                )
            if ip_of(name):
                raise ConfigError(f"no HTTP-01 or TLS-ALPN-01 solver covers the IP address {name!r}",
                                  "IP addresses are never validated over DNS-01; add an http01 solver")  # fmt: skip
            raise ConfigError(f"no configured solver covers {name!r}", "add a solver whose selector matches it")

    def uses(self, names: Iterable[str], challenge_type: str) -> bool:
        """Whether any of ``names`` would be proven with ``challenge_type``."""
        for name in names:
            solver = self.for_name(name)
            if solver is not None and solver.challenge_type == challenge_type:
                return True
        return False

    def close(self) -> None:
        for entry in self.entries:
            entry.solver.close()

    def prepare(self, names: Sequence[str]) -> None:
        """Before ordering: every name has a solver, and each solver can present its names."""
        self.check_names(names)
        by_solver: dict[int, tuple[Solver, list[Identifier]]] = {}
        for name in names:
            solver = self.for_name(name)
            if solver is not None:
                by_solver.setdefault(id(solver), (solver, []))[1].append(Identifier.parse(name))
        for solver, identifiers in by_solver.values():
            solver.prepare(identifiers)
