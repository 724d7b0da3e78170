"""An Issuer's ``acme.solvers``, in cert-manager's shape, as certkeeper's solver configuration.

cert-manager's fields where they mean the same::

    solvers:
      - http01: {}
      - dns01:
          rfc2136: {nameserver: "192.0.2.53:53", tsigKeyName: certkeeper, tsigAlgorithm: HMACSHA256,
                    tsigSecretSecretRef: {name: tsig, key: secret}}
        selector: {dnsZones: [example.com]}
      - dns01:
          lexicon: {provider: cloudflare, nameserver: "ns1.example.net:53",
                    credentialsSecretRef: {name: cloudflare}}   # certkeeper's extension
      - tlsAlpn01: {}                                          # certkeeper's extension

Reading the declaration (``parse_solvers``) needs no network, so a name no solver can prove is refused
before any order (``refuse_names``); Secrets are read only when the issuer's engine is made
(``solver_config``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from certkeeper.errors import ConfigError
from certkeeper.kube.sources import Refusal
from certkeeper.solvers.base import DNS01, HTTP01, TLSALPN01, Selector, SolverEntry, Solvers
from certkeeper.spec import ip_of, normalize_name

# Secret data by (namespace, name): None when the Secret does not exist.
ReadSecret = Callable[[str, str], Mapping[str, str] | None]

# cert-manager's tsigAlgorithm values, and the RFC 8945 names certkeeper uses.
TSIG_ALGORITHMS = {
    "HMACMD5": "hmac-md5",
    "HMACSHA1": "hmac-sha1",
    "HMACSHA224": "hmac-sha224",
    "HMACSHA256": "hmac-sha256",
    "HMACSHA384": "hmac-sha384",
    "HMACSHA512": "hmac-sha512",
}
RFC2136_FIELDS = {"nameserver", "tsigKeyName", "tsigAlgorithm", "tsigSecretSecretRef", "ttl", "propagationTimeout"}
LEXICON_FIELDS = {"provider", "nameserver", "credentialsSecretRef", "options", "ttl", "propagationTimeout"}


@dataclass(frozen=True)
class Declared:
    """One solver as declared: its kind (``http01``, ``rfc2136``, ``lexicon``, ``tlsAlpn01``) and settings."""

    kind: str
    settings: Mapping[str, Any]
    selector: Selector

    @property
    def challenge_type(self) -> str:
        return {"http01": HTTP01, "tlsAlpn01": TLSALPN01}.get(self.kind, DNS01)


class _Kind:
    """Stands for a solver when only its challenge type matters (choosing one per name)."""

    def __init__(self, challenge_type: str) -> None:
        self.challenge_type = challenge_type


def _selector(raw: Any, where: str) -> Selector:
    if raw is None:
        return Selector()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: selector must be an object with dnsNames and/or dnsZones")
    if raw.get("matchLabels"):
        raise ConfigError(f"{where}: selector.matchLabels is not supported", "select by dnsNames or dnsZones")
    extra = sorted(set(raw) - {"dnsNames", "dnsZones", "matchLabels"})
    if extra:
        raise ConfigError(f"{where}: selector.{extra[0]} is not a selector field", "use dnsNames or dnsZones")
    try:
        names = tuple(normalize_name(str(n), allow_wildcard=True) for n in raw.get("dnsNames") or ())
        zones = tuple(normalize_name(str(z)) for z in raw.get("dnsZones") or ())
    except ConfigError as error:
        raise ConfigError(f"{where}: selector: {error}") from None
    return Selector(names, zones)


def _check_fields(raw: Any, known: set[str], where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be an object")
    extra = sorted(set(raw) - known)
    if extra:
        raise ConfigError(f"{where}.{extra[0]} is not supported", f"{where} takes {', '.join(sorted(known))}")
    if not raw.get("nameserver"):
        raise ConfigError(f"{where}.nameserver is empty", "give HOST:PORT of the zone's primary name server")
    return raw


def _one(index: int, raw: Any) -> Declared:
    where = f"solvers[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be an object with http01, dns01 or tlsAlpn01")
    kinds = sorted(set(raw) - {"selector"})
    if len(kinds) != 1 or kinds[0] not in ("http01", "dns01", "tlsAlpn01"):
        raise ConfigError(
            f"{where}: give exactly one of http01, dns01 or tlsAlpn01 (found {', '.join(kinds) or 'none'})"
        )
    kind = kinds[0]
    selector = _selector(raw.get("selector"), where)
    body = raw[kind]
    if kind == "http01":
        # gatewayHTTPRoute is checked against the Issuer's namespace by solvers.httproute.route_parents.
        extra = sorted(set(body) - {"gatewayHTTPRoute"}) if isinstance(body, Mapping) else ["(not an object)"]
        if body and extra:
            raise ConfigError(
                f"{where}: http01.{extra[0]} is not supported",
                "use http01: {} (route /.well-known/acme-challenge/ to certkeeper's Service) or "
                "http01: {gatewayHTTPRoute: {parentRefs: [...]}}",
            )
        return Declared("http01", dict(body or {}), selector)
    if kind == "tlsAlpn01":
        if body:
            raise ConfigError(f"{where}: tlsAlpn01 takes no options (the controller's --tls-alpn-bind says where)")
        return Declared("tlsAlpn01", {}, selector)
    providers = sorted(set(body or {}))
    if providers not in (["rfc2136"], ["lexicon"]):
        raise ConfigError(
            f"{where}: dns01 {', '.join(providers) or '(empty)'} is not supported",
            "use dns01.rfc2136 or dns01.lexicon (certkeeper's: any provider dns-lexicon knows)",
        )
    provider = providers[0]
    settings = _check_fields(
        body[provider], RFC2136_FIELDS if provider == "rfc2136" else LEXICON_FIELDS, f"{where}.dns01.{provider}"
    )
    if provider == "rfc2136":
        algorithm = str(settings.get("tsigAlgorithm") or "HMACSHA256").upper().replace("-", "")
        if algorithm not in TSIG_ALGORITHMS:
            raise ConfigError(
                f"{where}.dns01.rfc2136.tsigAlgorithm {settings.get('tsigAlgorithm')!r} is not known",
                f"use one of {', '.join(TSIG_ALGORITHMS)}",
            )
        if bool(settings.get("tsigKeyName")) != bool((settings.get("tsigSecretSecretRef") or {}).get("name")):
            raise ConfigError(f"{where}.dns01.rfc2136: give both tsigKeyName and tsigSecretSecretRef, or neither")
    elif not settings.get("provider"):
        raise ConfigError(f"{where}.dns01.lexicon.provider is empty", "e.g. cloudflare, route53, localzone")
    return Declared(provider, settings, selector)


def parse_solvers(spec: Mapping[str, Any]) -> tuple[Declared, ...]:
    """The solvers an issuer's ``acme`` declares (HTTP-01 alone when none); ConfigError if one is wrong."""
    raw = spec.get("solvers")
    if raw is None:
        return (Declared("http01", {}, Selector()),)
    if not isinstance(raw, Sequence) or not raw:
        raise ConfigError("solvers must be a non-empty list (e.g. [{http01: {}}])")
    return tuple(_one(index, item) for index, item in enumerate(raw))


def refuse_names(declared: Sequence[Declared], names: Sequence[str], issuer: str) -> Refusal | None:
    """Why the issuer's solvers cannot prove one of ``names`` (a wildcard, an IP address), or None."""
    choice = Solvers(SolverEntry(_Kind(d.challenge_type), d.selector) for d in declared)  # type: ignore[arg-type]
    for name in names:
        if choice.for_name(name) is not None:
            continue
        if name.startswith("*."):
            return Refusal(
                "WildcardNeedsDNS01",
                f"{name} is a wildcard, which only DNS-01 can validate, and no dns01 solver of {issuer} covers "
                f"it: add one (e.g. dns01.rfc2136) whose selector matches {name[2:]}, or list the exact names",
            )
        if ip_of(name):
            return Refusal(
                "NoSolver",
                f"no http01 or tlsAlpn01 solver of {issuer} covers the IP address {name} (DNS-01 never "
                "validates addresses): add one whose selector matches it",
            )
        return Refusal("NoSolver", f"no solver of {issuer} covers {name}: add one whose selector matches it")
    return None


def _secret_value(read: ReadSecret, namespace: str, ref: Mapping[str, Any], default_key: str, what: str) -> str:
    name = str(ref.get("name") or "")
    key = str(ref.get("key") or default_key)
    data = read(namespace, name)
    if data is None:
        raise ConfigError(f"{what}: Secret {namespace}/{name} not found", f"create it with the key {key!r}")
    if key not in data:
        raise ConfigError(f"{what}: Secret {namespace}/{name} has no key {key!r}", "store the value there")
    try:
        return base64.b64decode(data[key], validate=True).decode("utf-8").strip()
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what}: Secret {namespace}/{name} key {key!r} is not readable text") from None


def _selector_config(selector: Selector) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if selector.dns_names:
        found["dnsNames"] = list(selector.dns_names)
    if selector.dns_zones:
        found["dnsZones"] = list(selector.dns_zones)
    return {"selector": found} if found else {}


def solver_config(
    declared: Sequence[Declared], namespace: str, read: ReadSecret, tls_alpn_bind: str
) -> list[dict[str, Any]]:
    """certkeeper's solver configuration (``solvers.config``), Secrets read from ``namespace``."""
    config: list[dict[str, Any]] = []
    for index, item in enumerate(declared):
        where = f"solvers[{index}]"
        selector = _selector_config(item.selector)
        settings = item.settings
        if item.kind == "http01":
            config.append({"http01": {}, **selector})
            continue
        if item.kind == "tlsAlpn01":
            config.append({"tlsalpn01": {"bind": tls_alpn_bind}, **selector})
            continue
        common = {k: settings[k] for k in ("nameserver", "ttl", "propagationTimeout") if k in settings}
        if item.kind == "rfc2136":
            rfc2136: dict[str, Any] = dict(common)
            if settings.get("tsigKeyName"):
                algorithm = str(settings.get("tsigAlgorithm") or "HMACSHA256").upper().replace("-", "")
                rfc2136["tsigKeyName"] = settings["tsigKeyName"]
                rfc2136["tsigAlgorithm"] = TSIG_ALGORITHMS[algorithm]
                rfc2136["tsigSecret"] = _secret_value(
                    read, namespace, settings["tsigSecretSecretRef"], "tsig-secret-key", f"{where} TSIG key"
                )
            config.append({"dns01": {"rfc2136": rfc2136}, **selector})
            continue
        options: dict[str, Any] = dict(settings.get("options") or {})
        ref = settings.get("credentialsSecretRef") or {}
        if ref.get("name"):
            data = read(namespace, str(ref["name"]))
            if data is None:
                raise ConfigError(
                    f"{where} lexicon credentials: Secret {namespace}/{ref['name']} not found",
                    "create it with one key per provider option (e.g. auth_token)",
                )
            for key in data:
                options[key] = _secret_value(read, namespace, {"name": ref["name"], "key": key}, key, where)
        lexicon = {**common, "provider": settings["provider"], "options": options}
        config.append({"dns01": {"lexicon": lexicon}, **selector})
    return config
