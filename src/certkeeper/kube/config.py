"""The seed's environment, validated: every problem is found at start and reported on its own line."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from certkeeper.errors import CertkeeperError, ConfigError, ConfigErrors
from certkeeper.kube.cron import Cron
from certkeeper.kube.names import MAX_NAME, companion_name
from certkeeper.rehearsal import rehearsal_server
from certkeeper.solvers.config import build_solvers
from certkeeper.solvers.http01 import ChallengeStore
from certkeeper.spec import LETSENCRYPT, CertSpec, IssuerSpec, KeyType, normalize_names, resolve_server
from certkeeper.web import parse_bind

T = TypeVar("T")

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# The ACME v1 endpoints the post and the seed image used; Let's Encrypt turned ACME v1 off in 2021.
ACME_V1 = {
    "https://acme-v01.api.letsencrypt.org/directory": "https://acme-v02.api.letsencrypt.org/directory",
    "https://acme-staging.api.letsencrypt.org/directory": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
WORKLOAD_KINDS = {
    "deployment": "Deployment",
    "deployments": "Deployment",
    "deploy": "Deployment",
    "statefulset": "StatefulSet",
    "statefulsets": "StatefulSet",
    "sts": "StatefulSet",
    "daemonset": "DaemonSet",
    "daemonsets": "DaemonSet",
    "ds": "DaemonSet",
}
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SECRET_TYPES = ("kubernetes.io/tls", "Opaque")


@dataclass(frozen=True)
class Workload:
    kind: str  # Deployment, StatefulSet or DaemonSet
    name: str

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.name}"


@dataclass(frozen=True)
class RunConfig:
    spec: CertSpec
    issuer: IssuerSpec
    namespace: str
    secret_name: str
    secret_type: str | None  # for new Secrets; None: kubernetes.io/tls
    rc_names: tuple[str, ...] = ()
    workloads: tuple[Workload, ...] = ()
    cron: Cron | None = None
    http_bind: str = "0.0.0.0:80"
    rollout_timeout: float = 300.0
    notes: tuple[str, ...] = field(default=())  # warnings worth a log line at start
    solvers: tuple[dict[str, Any], ...] = ()  # ``solvers.config`` entries; empty: HTTP-01 alone
    dns_state_dir: str | None = None  # where DNS-01 notes presented records; None: the temporary directory
    rehearsal: str = "auto"  # CERTKEEPER_REHEARSAL: off, auto, letsencrypt-staging or a directory URL

    @property
    def account_secret_name(self) -> str:
        return companion_name(self.secret_name, "-acme-account")


def default_namespace(path: str = SERVICE_ACCOUNT_NAMESPACE) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip() or "default"
    except OSError:
        return "default"


def _words(env: Mapping[str, str], key: str) -> list[str]:
    return env.get(key, "").replace(",", " ").split()


def load_config(
    env: Mapping[str, str],
    *,
    http_bind: str = "0.0.0.0:80",
    ca_bundle: str | None = None,
    key_type: str = "ec-p256",
    profile: str | None = None,
    preferred_chain: str | None = None,
    eab_kid: str | None = None,
    eab_hmac_key: str | None = None,
    rollout_timeout: float = 300.0,
    solvers: Sequence[dict[str, Any]] = (),
    dns_state_dir: str | None = None,
    rehearsal: str = "auto",
) -> RunConfig:
    """Build the run configuration from the seed's variables; raises ConfigErrors naming every problem."""
    problems: list[str] = []
    notes: list[str] = []

    def check(fn: Callable[[], T], default: T) -> T:
        try:
            return fn()
        except CertkeeperError as error:
            problems.append(str(error))
            return default

    solver_set = check(lambda: build_solvers(solvers, ChallengeStore()), None)

    def domains() -> tuple[str, ...]:
        raw = env.get("DOMAINS", "")
        if not raw.strip():
            raise ConfigError(
                "DOMAINS is empty", "set DOMAINS to space-separated names, e.g. example.com www.example.com"
            )
        try:
            found = normalize_names(raw.split(), allow_wildcard=True)
            if solver_set is not None:
                solver_set.check_names(found)
            return found
        except ConfigError as error:
            raise ConfigError(f"DOMAINS: {error}") from None

    names: tuple[str, ...] = check(domains, ())
    email = env.get("EMAIL", "").strip()
    if not email:
        problems.append("EMAIL is empty: set EMAIL to the contact address for the ACME account")

    def endpoint() -> str:
        raw = env.get("LETSENCRYPT_ENDPOINT", "").strip() or LETSENCRYPT
        url = resolve_server(raw)
        if url.rstrip("/") in ACME_V1:
            new = ACME_V1[url.rstrip("/")]
            notes.append(f"LETSENCRYPT_ENDPOINT {url} is ACME v1, which Let's Encrypt retired; using {new}")
            url = new
        if url.lower().startswith("http://"):
            notes.append(
                f"LETSENCRYPT_ENDPOINT {url} is plain HTTP: anyone on the way can read and change what the CA "
                "sends; use its https:// URL"
            )
        return url

    directory_url = check(endpoint, LETSENCRYPT)
    check(lambda: rehearsal_server(rehearsal, directory_url), None)

    def bundle() -> str | None:
        if not ca_bundle:
            return None
        if not os.path.isfile(ca_bundle):
            raise ConfigError(f"CERTKEEPER_CA_BUNDLE {ca_bundle!r} is not a readable file", "give a PEM file")
        return ca_bundle

    bundle_path = check(bundle, None)
    issuer = check(
        lambda: IssuerSpec(directory_url, email or None, eab_kid or None, eab_hmac_key or None, bundle_path), None
    )
    kt = check(lambda: KeyType.parse(key_type), KeyType.EC_P256)
    check(lambda: parse_bind(http_bind), ("", 0))

    def namespace() -> str:
        value = env.get("NAMESPACE", "").strip() or default_namespace()
        if not _LABEL.match(value) or len(value) > 63:
            raise ConfigError(f"NAMESPACE {value!r} is not a valid namespace name", "lower-case letters, digits, '-'")
        return value

    ns = check(namespace, "default")

    def secret_name() -> str:
        # A Secret name cannot hold "*": a wildcard first name gives certs-wildcard.<rest>.
        first = names[0].replace("*.", "wildcard.", 1) if names else ""
        given = env.get("SECRET_NAME", "").strip()
        value = given or (f"certs-{first}" if first else "")
        if not given and len(value) > MAX_NAME:
            raise ConfigError(
                f"the Secret name certs-<first of DOMAINS> would be {len(value)} characters, over Kubernetes' "
                f"{MAX_NAME}",
                "set SECRET_NAME to a shorter name",
            )
        if value and (not _SUBDOMAIN.match(value) or len(value) > MAX_NAME):
            raise ConfigError(
                f"SECRET_NAME {value!r} is not a valid Secret name", "use lower-case letters, digits, '-', '.'"
            )
        return value

    secret = check(secret_name, "")

    def secret_type() -> str | None:
        value = env.get("TYPE", "").strip()
        if not value:
            return None
        for known in SECRET_TYPES:
            if value.lower() == known.lower():
                return known
        raise ConfigError(f"TYPE {value!r} is not a Secret type certkeeper writes", "use kubernetes.io/tls or Opaque")

    stype = check(secret_type, None)

    def object_names(key: str) -> tuple[str, ...]:
        values = _words(env, key)
        bad = [v for v in values if not _SUBDOMAIN.match(v) or len(v) > 253]
        if bad:
            raise ConfigError(f"{key}: {', '.join(map(repr, bad))} is not a valid object name")
        return tuple(dict.fromkeys(values))

    no_names: tuple[str, ...] = ()
    rcs = check(lambda: object_names("RC_NAMES"), no_names)
    deployments = check(lambda: object_names("DEPLOYMENTS"), no_names)

    def workloads() -> tuple[Workload, ...]:
        found: list[Workload] = [Workload("Deployment", d) for d in deployments]
        for item in _words(env, "WORKLOADS"):
            kind, slash, name = item.partition("/")
            if not slash or kind.lower() not in WORKLOAD_KINDS:
                raise ConfigError(
                    f"WORKLOADS: {item!r} is not KIND/NAME", "e.g. deployment/web statefulset/db daemonset/agent"
                )
            if not _SUBDOMAIN.match(name):
                raise ConfigError(f"WORKLOADS: {name!r} is not a valid object name")
            found.append(Workload(WORKLOAD_KINDS[kind.lower()], name))
        return tuple(dict.fromkeys(found))

    no_workloads: tuple[Workload, ...] = ()
    wl = check(workloads, no_workloads)

    def cron() -> Cron | None:
        value = env.get("CRON_FREQUENCY", "").strip()
        return Cron.parse(value) if value else None

    schedule = check(cron, None)
    if not rcs and not wl:
        notes.append("RC_NAMES, DEPLOYMENTS and WORKLOADS are empty: nothing is restarted after a new certificate")
    if problems:
        raise ConfigErrors(problems)
    assert issuer is not None
    return RunConfig(
        spec=CertSpec(names, kt, False, profile or None, preferred_chain or None),
        issuer=issuer,
        namespace=ns,
        secret_name=secret,
        secret_type=stype,
        rc_names=rcs,
        workloads=wl,
        cron=schedule,
        http_bind=http_bind,
        rollout_timeout=rollout_timeout,
        notes=tuple(notes),
        solvers=tuple(solvers),
        dns_state_dir=dns_state_dir or None,
        rehearsal=rehearsal,
    )
