"""Solvers from plain configuration: the CLI's flags, ``certkeeper run``'s environment, an Issuer's ``solvers:``.

The shape follows cert-manager's Issuer, as plain dicts::

    [{"dns01": {"rfc2136": {"nameserver": "192.0.2.53:53", "tsigKeyFile": "/etc/certkeeper/tsig.key"}},
      "selector": {"dnsZones": ["example.com"]}},
     {"http01": {}}]

``tsigKeyFile`` may be replaced by ``tsigKeyName``, ``tsigAlgorithm`` and ``tsigSecret`` given inline
(what a controller reads from a Secret). Optional: ``ttl``, ``timeout`` and ``propagationTimeout``
(seconds). Every problem is a ``ConfigError`` naming the entry.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from certkeeper.errors import ConfigError
from certkeeper.solvers.base import Selector, SolverEntry, Solvers
from certkeeper.solvers.http01 import ChallengeStore, Http01Solver
from certkeeper.spec import normalize_name
from certkeeper.web import parse_bind

if TYPE_CHECKING:
    from certkeeper.solvers.base import Solver
    from certkeeper.solvers.dnswire import TsigKey
    from certkeeper.solvers.journal import Journal
    from certkeeper.solvers.rfc2136 import Rfc2136Config

# dnspython and the TLS listener are imported only when configured: HTTP-01 alone starts faster.

SolverConfig = Sequence[Mapping[str, Any]]
DNS_PROVIDERS = ("rfc2136", "lexicon")


def default_state_dir() -> str:
    """Where ``certkeeper run`` notes presented DNS records when it has no store directory."""
    return os.path.join(tempfile.gettempdir(), f"certkeeper-{os.geteuid()}", "dns01-presented")


def _selector(raw: Any, where: str) -> Selector:
    if raw is None:
        return Selector()
    if not isinstance(raw, Mapping) or set(raw) - {"dnsNames", "dnsZones"}:
        raise ConfigError(f"{where}: selector takes dnsNames and dnsZones (lists of names)")
    names = tuple(normalize_name(n, allow_wildcard=True) for n in raw.get("dnsNames") or ())
    zones = tuple(normalize_name(z) for z in raw.get("dnsZones") or ())
    return Selector(names, zones)


def _seconds(raw: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = raw.get(key, default)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} {value!r} is not a number of seconds") from None
    if not 0 < seconds <= 3600:
        raise ConfigError(f"{where}: {key} must be between 0 and 3600 seconds")
    return seconds


def _tsig(raw: Mapping[str, Any], where: str) -> TsigKey | None:
    from certkeeper.solvers.dnswire import TSIG_ALGORITHMS, TsigKey

    if raw.get("tsigKeyFile"):
        return TsigKey.from_file(str(raw["tsigKeyFile"]))
    if not raw.get("tsigKeyName") and not raw.get("tsigSecret"):
        return None  # an unsigned update: only for servers that allow updates by address
    algorithm = str(raw.get("tsigAlgorithm") or "hmac-sha256").lower()
    if not raw.get("tsigKeyName") or not raw.get("tsigSecret") or algorithm not in TSIG_ALGORITHMS:
        raise ConfigError(
            f"{where}: a TSIG key needs tsigKeyName and tsigSecret (base64)",
            f"and tsigAlgorithm one of {', '.join(TSIG_ALGORITHMS)}",
        )
    return TsigKey(str(raw["tsigKeyName"]), algorithm, str(raw["tsigSecret"]))


def _rfc2136(raw: Mapping[str, Any], where: str) -> Rfc2136Config:
    from certkeeper.solvers.rfc2136 import Rfc2136Config

    if not raw.get("nameserver"):
        raise ConfigError(f"{where}: rfc2136 needs nameserver (HOST:PORT of the zone's primary)")
    ttl = int(_seconds(raw, "ttl", 60, where))
    return Rfc2136Config(
        str(raw["nameserver"]),
        _tsig(raw, where),
        ttl=ttl,
        timeout=_seconds(raw, "timeout", 10, where),
        propagation_timeout=_seconds(raw, "propagationTimeout", 120, where),
    )


def _lexicon(raw: Mapping[str, Any], where: str, journal: Journal) -> Solver:
    """A hosted provider through lexicon; ``nameserver`` is an authoritative server of the zone, for lookups."""
    from certkeeper.solvers.lexicon import LexiconPublisher
    from certkeeper.solvers.rfc2136 import Rfc2136Solver

    provider = str(raw.get("provider") or "")
    if not provider:
        raise ConfigError(f"{where}: lexicon needs provider (e.g. cloudflare, route53, localzone)")
    if not raw.get("nameserver"):
        raise ConfigError(
            f"{where}: lexicon needs nameserver (HOST:PORT of an authoritative server of the zone)",
            "certkeeper finds the zone and checks propagation there; e.g. --dns-server ns1.provider.example:53",
        )
    config = _rfc2136({**raw, "tsigKeyFile": None, "tsigKeyName": None, "tsigSecret": None}, where)
    publisher = LexiconPublisher(provider, raw.get("options") or {})
    return Rfc2136Solver(config, journal, publisher, via=f"lexicon:{provider}")


def build_solvers(
    config: SolverConfig | None, http01: ChallengeStore, *, state_dir: str | None = None, tls_alpn: Solver | None = None
) -> Solvers:
    """The solvers ``config`` describes; HTTP-01 alone when it is empty.

    ``tls_alpn``: a TLS-ALPN-01 solver to use for every ``tlsalpn01`` entry (the controller's engines
    share one listener) instead of one each.
    """
    if not config:
        return Solvers([SolverEntry(Http01Solver(http01))])
    from certkeeper.solvers.journal import Journal

    journal = Journal(state_dir or default_state_dir())
    entries = []
    for index, raw in enumerate(config):
        where = f"solver {index + 1}"
        kinds = set(raw) - {"selector"}
        if len(kinds) != 1 or not kinds <= {"http01", "dns01", "tlsalpn01"}:
            raise ConfigError(f"{where}: give exactly one of http01, dns01 or tlsalpn01 (and an optional selector)")
        selector = _selector(raw.get("selector"), where)
        if "http01" in raw:
            entries.append(SolverEntry(Http01Solver(http01), selector))
            continue
        if "tlsalpn01" in raw and tls_alpn is not None:
            entries.append(SolverEntry(tls_alpn, selector))
            continue
        if "tlsalpn01" in raw:
            from certkeeper.solvers.tlsalpn01 import TlsAlpn01Solver

            bind = str((raw["tlsalpn01"] or {}).get("bind") or "0.0.0.0:443")
            parse_bind(bind)
            check = (raw["tlsalpn01"] or {}).get("check")
            entries.append(SolverEntry(TlsAlpn01Solver(bind, str(check) if check else None), selector))
            continue
        dns = raw["dns01"]
        providers = set(dns or {}) & set(DNS_PROVIDERS)
        if not isinstance(dns, Mapping) or len(providers) != 1:
            raise ConfigError(f"{where}: dns01 needs one provider", f"supported: {', '.join(DNS_PROVIDERS)}")
        from certkeeper.solvers.rfc2136 import Rfc2136Solver

        if "lexicon" in dns:
            entries.append(SolverEntry(_lexicon(dns["lexicon"], where, journal), selector))
            continue
        entries.append(SolverEntry(Rfc2136Solver(_rfc2136(dns["rfc2136"], where), journal), selector))
    return Solvers(entries)


@dataclass(frozen=True)
class SolverSetup:
    """What an ``Engine`` is given: the configuration, built around the HTTP-01 store the engine serves."""

    config: tuple[Mapping[str, Any], ...] = ()
    state_dir: str | None = None  # where DNS-01 notes what it presented
    tls_alpn: Solver | None = None  # a shared TLS-ALPN-01 listener (the controller's)

    def build(self, http01: ChallengeStore) -> Solvers:
        return build_solvers(self.config, http01, state_dir=self.state_dir, tls_alpn=self.tls_alpn)

    def recorded(self) -> list[Any] | None:
        """The configuration as stored with a certificate, so ``renew`` proves its names the same way.

        Inline secrets (``tsigSecret``) are left out: a key file's path is kept, never a key.
        """
        return [_without_secrets(entry) for entry in self.config] or None


def _without_secrets(value: Any) -> Any:
    if isinstance(value, Mapping):
        # lexicon ``options`` may hold a provider's credentials (the controller reads them from a Secret).
        return {k: _without_secrets(v) for k, v in value.items() if "secret" not in k.lower() and k != "options"}
    if isinstance(value, list | tuple):
        return [_without_secrets(v) for v in value]
    return value


def cli_config(
    dns: str | None,
    dns_server: str | None,
    tsig_key_file: str | None,
    dns_zones: Sequence[str] = (),
    propagation_timeout: float | None = None,
    timeout: float | None = None,
    tls_alpn_bind: str | None = None,
    *,
    tls_alpn_check: str | None = None,
) -> list[dict[str, Any]]:
    """The solver list the command-line flags (or their CERTKEEPER_* variables) describe."""
    # TLS-ALPN-01, when asked for, proves the names DNS-01 does not, instead of HTTP-01 (port 80 may be closed).
    if tls_alpn_check and not tls_alpn_bind:
        raise ConfigError("--tls-alpn-check needs --tls-alpn-bind HOST:PORT")
    alpn: dict[str, Any] = {"bind": tls_alpn_bind, **({"check": tls_alpn_check} if tls_alpn_check else {})}
    others: list[dict[str, Any]] = [{"tlsalpn01": alpn} if tls_alpn_bind else {"http01": {}}]
    if not dns:
        if dns_server or tsig_key_file or dns_zones:
            raise ConfigError("--dns-server, --tsig-key-file and --dns-zone need --dns rfc2136")
        return others if tls_alpn_bind else []
    if dns.startswith("lexicon:") and dns[len("lexicon:") :]:
        if not dns_server:
            raise ConfigError(f"--dns {dns} needs --dns-server HOST:PORT (an authoritative server of the zone)")
        if tsig_key_file:
            raise ConfigError(f"--dns {dns} takes no --tsig-key-file (lexicon reads the provider's credentials)")
    elif dns != "rfc2136":
        raise ConfigError(f"--dns {dns!r} is not a DNS provider certkeeper knows", "use rfc2136 or lexicon:PROVIDER")
    if not dns_server:
        raise ConfigError("--dns rfc2136 needs --dns-server HOST:PORT (the zone's primary)")
    rfc2136: dict[str, Any] = {"nameserver": dns_server}
    if tsig_key_file:
        rfc2136["tsigKeyFile"] = tsig_key_file
    if propagation_timeout is not None:
        rfc2136["propagationTimeout"] = propagation_timeout
    if timeout is not None:
        rfc2136["timeout"] = timeout
    if dns.startswith("lexicon:"):
        rfc2136["provider"] = dns[len("lexicon:") :]
    dns_entry: dict[str, Any] = {"dns01": {"lexicon" if dns.startswith("lexicon:") else "rfc2136": rfc2136}}
    zones = [z for item in dns_zones for z in item.replace(",", " ").split()]
    if zones:
        dns_entry["selector"] = {"dnsZones": zones}
    # DNS-01 first: with no --dns-zone it proves every name; with zones, the rest go to the others.
    return [dns_entry, *others]
