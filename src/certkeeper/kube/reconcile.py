"""One Certificate in, its next wake-up out: load the Secret, plan, order, store, roll out, report.

The work is the engine's (planner, ACME, never-worse rule) on the Secret store ``certkeeper run`` uses;
this module adds what a declared Certificate needs around it: the issuer it names, whose Secret it
may write, the status subresource and Events. Bad input is refused in the Ready condition with a
reason and a message, and then nothing is ordered and nothing written but the status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import json
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube import Client
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.types import PatchType

from certkeeper.acme import Account
from certkeeper.engine import Engine, Outcome
from certkeeper.errors import CertkeeperError, ConfigError, NotRecorded
from certkeeper.kube.api import call_api
from certkeeper.kube.events import Recorder
from certkeeper.kube.fallback_cas import FallbackCA, build_fallback, parse_fallback, write_bundle
from certkeeper.kube.issuers import Declared, parse_solvers, refuse_names, solver_config
from certkeeper.kube.ledger_secret import SecretBackend
from certkeeper.kube.rehearsals import kube_rehearsal
from certkeeper.kube.rollout import RolloutResult
from certkeeper.kube.secret_store import MANAGED_BY, SecretStore, data_digest
from certkeeper.kube.sources import (
    API_VERSION,
    CERTIFICATE_REF,
    GROUP,
    KNOWN_ISSUER_FIELDS,
    VERSION,
    CertificateObj,
    IssuerObj,
    Refusal,
    SecretObj,
    Target,
    certificate_target,
    unknown_fields,
)
from certkeeper.kube.target_sync import MAX_WAKE_S, TargetSync
from certkeeper.ledger import Ledger
from certkeeper.model import IssuedCert, PendingOrder
from certkeeper.ratelimits import Limit, parse_limits
from certkeeper.rehearsal import rehearsal_server
from certkeeper.solvers.config import SolverSetup
from certkeeper.solvers.http01 import ChallengeStore
from certkeeper.solvers.httproute import RouteChallenges, RouteKeeper, route_parents
from certkeeper.solvers.tlsalpn01 import TlsAlpn01Solver
from certkeeper.spec import CertSpec, IssuerSpec, resolve_server
from certkeeper.stores.base import StoredCert, StoreDefaults

log = logging.getLogger("certkeeper.controller")

CertificateResource = create_namespaced_resource(GROUP, VERSION, "Certificate", "certificates")
IssuerResource = create_namespaced_resource(GROUP, VERSION, "Issuer", "issuers")
ClusterIssuerResource = create_global_resource(GROUP, VERSION, "ClusterIssuer", "clusterissuers")
FAILURE_RETRY_S = (60.0, 600.0, 3600.0)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _stamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class IssuerConfig:
    ref: str
    issuer: IssuerSpec
    namespace: str  # where its account Secret lives
    account_secret: str
    profile: str | None
    preferred_chain: str | None
    solvers: tuple[Declared, ...]  # acme.solvers as declared (Secrets not read yet)
    route_parents: str = ""  # http01.gatewayHTTPRoute: HTTP-01 through temporary HTTPRoutes (route_parents())
    fallback: tuple[FallbackCA, ...] = ()  # acme.fallback: further CAs, in order (certkeeper.kube.fallback_cas)
    # acme.rehearsal: an order for names not held yet is made at this CA first (certkeeper.kube.rehearsals).
    rehearsal: str = "auto"
    rehearsal_ca_bundle: str | None = None


def issuer_config(obj: IssuerObj, cluster_namespace: str, bundles: Path) -> IssuerConfig | Refusal:
    """The issuer's ACME settings (EAB key still to read), or why they cannot be used."""
    spec: dict[str, Any] = json.loads(obj.spec_json)
    extra = unknown_fields(spec, KNOWN_ISSUER_FIELDS)
    if extra:
        return Refusal("UnsupportedField", f"{obj.kind} {obj.name}: {', '.join(extra)} not supported; remove it")
    acme = spec.get("acme") or {}
    try:
        solvers = parse_solvers(acme)
    except ConfigError as error:
        return Refusal("UnsupportedSolver", f"{obj.kind} {obj.name}: acme.{error}")
    routes = ""
    for declared in solvers:
        if declared.kind == "http01" and declared.settings:
            try:
                routes = route_parents(declared.settings, obj.namespace)
            except ConfigError as error:
                return Refusal("UnsupportedSolver", f"{obj.kind} {obj.name}: {error}")
    ca_bundle = None
    if acme.get("caBundle"):
        try:
            pem = base64.b64decode(acme["caBundle"], validate=True)
        except (binascii.Error, ValueError):
            return Refusal("InvalidIssuer", f"{obj.kind} {obj.name}: acme.caBundle is not base64 (PEM)")
        path = bundles / (hashlib.sha256(pem).hexdigest()[:16] + ".pem")
        if not path.exists():
            path.write_bytes(pem)
        ca_bundle = str(path)
    eab = acme.get("externalAccountBinding") or {}
    try:
        issuer = IssuerSpec(
            directory_url=resolve_server(str(acme.get("server", ""))),
            email=acme.get("email") or None,
            ca_bundle=ca_bundle,
            # The HMAC key is read from its Secret when the engine is made; a marker keeps the pair rule.
            eab_kid=eab.get("keyID") or None,
            eab_hmac_key="-" if eab else None,
        )
        fallback = parse_fallback(acme, bundles)
        rehearsal, rehearsal_bundle = parse_rehearsal(acme, issuer.directory_url, bundles)
    except ConfigError as error:
        return Refusal("InvalidIssuer", f"{obj.kind} {obj.name}: {error}")
    return IssuerConfig(
        ref=obj.ref,
        issuer=issuer,
        namespace=obj.namespace or cluster_namespace,
        account_secret=str((acme.get("privateKeySecretRef") or {}).get("name", "")),
        profile=acme.get("profile") or None,
        preferred_chain=acme.get("preferredChain") or None,
        solvers=solvers,
        route_parents=routes,
        fallback=fallback,
        rehearsal=rehearsal,
        rehearsal_ca_bundle=rehearsal_bundle,
    )


def parse_rehearsal(acme: dict[str, Any], directory_url: str, bundles: Path) -> tuple[str, str | None]:
    """``acme.rehearsal`` ({server: auto | off | URL, caBundle}): the choice and the bundle's path; ConfigError."""
    declared = acme.get("rehearsal") or {}
    if not isinstance(declared, dict):
        raise ConfigError("acme.rehearsal is not an object", 'give {server: auto}, {server: "off"} or {server: URL}')
    choice = str(declared.get("server") or "auto")
    rehearsal_server(choice, directory_url, "acme.rehearsal.server")
    bundle = declared.get("caBundle")
    return choice, write_bundle(bundle, bundles, "acme.rehearsal.caBundle") if bundle else None


FALLBACK_MARK = "fallback:"  # in RoutedStore.issued_by: the URL that follows is a fallback CA's


class RoutedStore(StoreDefaults):
    """The engine's ``CertStore`` for many Certificates: each lineage goes to its own Secret.

    A certificate issued but not yet written waits here in memory (``StoreDefaults``), across
    reconciles; the order journal in the Secret covers a restart.
    """

    def __init__(
        self,
        account: SecretStore,
        on_pending: Callable[[str, PendingOrder | None], None],
        may_have_pending: Callable[[str], bool] = lambda lineage: True,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__()
        self.account = account
        self.may_have_pending = may_have_pending  # False: the Secret cache shows no order Secret
        # False once this replica's Lease may have passed to another: no new order is placed from then on.
        self.leading = leading
        self.stores: dict[str, SecretStore] = {}
        self._lock = threading.Lock()
        self.on_pending = on_pending  # mirrors the order in flight into the Certificate's status
        self.issued_by: dict[str, str] = {}  # lineage -> the CA that issued what was just stored (status.issuedBy)
        # Orders placed whose record could not be written (the API down at that moment): the next attempt of
        # this process resumes them instead of ordering again.
        self._unrecorded: dict[str, PendingOrder] = {}

    def attach(self, lineage: str, store: SecretStore) -> None:
        with self._lock:
            self.stores[lineage] = store

    def detach(self, lineage: str) -> None:
        with self._lock:
            self.stores.pop(lineage, None)

    def _store(self, lineage: str) -> SecretStore:
        with self._lock:
            store = self.stores.get(lineage)
        if store is None:  # its reconcile was stopped (the Lease lost) while a worker thread went on
            raise NotRecorded(f"{lineage}: no longer worked on by this replica")
        return store

    def load(self, lineage: str) -> StoredCert | None:
        return self._store(lineage).load(lineage)

    def save(self, lineage: str, issued: IssuedCert, meta: dict[str, Any]) -> bool:
        saved = self._store(lineage).save(lineage, issued, meta)
        fallback = meta.get("issued_by_directory_url")  # only when a fallback CA issued it
        self.issued_by[lineage] = f"{FALLBACK_MARK}{fallback}" if fallback else str(meta.get("directory_url") or "")
        return saved

    def load_state(self, lineage: str) -> dict[str, Any]:
        return self._store(lineage).load_state(lineage)

    def save_state(self, lineage: str, state: dict[str, Any]) -> None:
        self._store(lineage).save_state(lineage, state)

    def stage_state(self, lineage: str, state: dict[str, Any]) -> None:
        self._store(lineage).stage_state(lineage, state)

    def location(self, lineage: str) -> str:
        return self._store(lineage).location(lineage)

    def load_order(self, lineage: str, *, fresh: bool = False) -> PendingOrder | None:
        """The order in flight; ``fresh``: read from the API even when the Secret cache shows none (before
        an order: a cache that missed events in an outage must not cost a second order)."""
        with self._lock:
            unrecorded = self._unrecorded.get(lineage)
        if unrecorded is not None:
            return unrecorded
        if not fresh and not self.may_have_pending(lineage):
            return None
        return self._store(lineage).load_order(lineage)

    def save_order(self, lineage: str, pending: PendingOrder) -> None:
        if not pending.url:
            # About to order: only while this replica surely leads, and only once the intent is stored.
            if not self.leading():
                raise NotRecorded("this replica may no longer hold the Lease")
            self._store(lineage).save_order(lineage, pending)
            with self._lock:
                self._unrecorded.pop(lineage, None)  # an earlier order's URL: this intent replaces it
            return
        with self._lock:
            self._unrecorded[lineage] = pending
        self._store(lineage).save_order(lineage, pending)
        self.on_pending(lineage, pending)
        with self._lock:
            self._unrecorded.pop(lineage, None)

    def clear_order(self, lineage: str) -> None:
        with self._lock:
            self._unrecorded.pop(lineage, None)
        self._store(lineage).clear_order(lineage)
        self.on_pending(lineage, None)

    key_before_registration = True  # the account SecretStore's rule (acme.account)

    def load_account(self, directory_url: str) -> Account | None:
        return self.account.load_account(directory_url)

    def save_account(self, account: Account) -> None:
        self.account.save_account(account)


def foreign_owner(secret: Any, cert: CertificateObj) -> str | None:
    """Who else owns the Secret, if someone does: then certkeeper must not write it."""
    if secret is None or secret.metadata is None:
        return None
    meta = secret.metadata
    claimed = (meta.annotations or {}).get(CERTIFICATE_REF)
    if claimed and claimed != cert.name:
        return f"Certificate {cert.namespace}/{claimed}"
    for owner in meta.ownerReferences or ():
        if owner.controller and owner.uid != cert.uid:
            return f"{owner.kind} {owner.name}"
    if secret.type not in (None, "kubernetes.io/tls", "Opaque"):
        return f"its type {secret.type}"
    return None


def condition(
    old: list[dict[str, Any]], kind: str, status: bool, reason: str, message: str, generation: int
) -> dict[str, Any]:
    text = "True" if status else "False"
    previous = next((c for c in old if c.get("type") == kind), None)
    since = previous.get("lastTransitionTime") if previous and previous.get("status") == text else None
    return {
        "type": kind,
        "status": text,
        "reason": reason,
        "message": message[:1000],
        "observedGeneration": generation,
        "lastTransitionTime": since or _stamp(_now()),
    }


class Reconciler:
    def __init__(
        self,
        client: Client,
        *,
        issuers: Callable[[str], IssuerObj | None],
        secrets: Callable[[str], SecretObj | None] | None = None,
        challenges: ChallengeStore,
        cluster_namespace: str,
        concurrency: int = 8,
        rollout_timeout: float = 300.0,
        routes: RouteKeeper | None = None,
        rate_limits: str = "auto",
        dns_state_dir: str | None = None,
        tls_alpn_bind: str = "0.0.0.0:8443",
    ) -> None:
        self.client = client
        self.routes = routes  # HTTP-01 through a Gateway, for issuers that ask for it
        self.rate_limits = rate_limits  # the CA limits the cluster's rate-limit ledger enforces
        self.issuers = issuers
        self.secrets = secrets
        self._glanced: set[str] = set()  # Certificates trusted from their status once since start
        self.challenges = challenges
        self.cluster_namespace = cluster_namespace
        self.concurrency = concurrency
        # A failure the engine gave no time for is looked at again after a minute, however many in a row.
        self.sync = TargetSync(client, rollout_timeout=rollout_timeout, failure_backoff=FAILURE_RETRY_S[:1])
        self.dns_state_dir = dns_state_dir  # the DNS-01 journal: records presented, for cleanup after a crash
        # One TLS-ALPN-01 listener for every issuer with a tlsAlpn01 solver; it listens only while
        # this replica (the leader) has names presented or about to be.
        self.tls_alpn = TlsAlpn01Solver(tls_alpn_bind)
        self._engines: dict[str, tuple[str, Engine, RoutedStore]] = {}  # issuer -> (its version, ...)
        self._engine_lock = asyncio.Lock()
        self._bundles = Path(tempfile.mkdtemp(prefix="certkeeper-ca-"))
        self._in_flight: dict[str, CertificateObj] = {}  # lineage -> its Certificate, while its run lasts
        # Added to every engine: told each outcome while its Certificate is in certificate_of.
        self.observers: list[Callable[[Outcome], None]] = []
        self._written: dict[str, dict[str, Any]] = {}  # lineage -> status written during its run
        self.orders = 0
        self.full_checks = 0
        # Whether this replica surely holds the Lease now (the manager sets it): orders are placed only then.
        self.leading: Callable[[], bool] = lambda: True

    async def close(self) -> None:
        for _, engine, _ in self._engines.values():
            await self._close_engine(engine)
        self.tls_alpn.close()

    async def _close_engine(self, engine: Engine) -> None:
        await engine.close()
        for entry in engine.solvers.entries:
            if entry.solver is not self.tls_alpn:  # shared with the other engines
                entry.solver.close()

    def _secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = SecretStore(self.client, namespace, name).get()
        return dict(secret.data or {}) if secret is not None else None

    # -- the issuer's engine -----------------------------------------------------------------------

    def _eab_key(self, obj: IssuerObj, namespace: str) -> str:
        ref = (json.loads(obj.spec_json).get("acme") or {}).get("externalAccountBinding", {}).get("keySecretRef", {})
        store = SecretStore(self.client, namespace, str(ref.get("name", "")))
        secret = store.get()
        value = ((secret.data if secret is not None else None) or {}).get(ref.get("key") or "secret")
        if not value:
            raise ConfigError(
                f"{obj.kind} {obj.name}: the EAB key Secret {namespace}/{ref.get('name')} has no key "
                f"{ref.get('key') or 'secret'!r}",
                "store the CA's HMAC key there",
            )
        return base64.b64decode(value).decode().strip()

    async def engine_for(self, obj: IssuerObj, config: IssuerConfig) -> tuple[Engine, RoutedStore]:
        # Solver Secrets (TSIG key, provider credentials) from the issuer's namespace (the controller's
        # for a ClusterIssuer), read at each full check of a Certificate (one GET each, none for
        # http01/tlsAlpn01): a rotated key is used from the next order on. ConfigError if missing.
        solvers = await asyncio.to_thread(
            solver_config, config.solvers, config.namespace, self._secret_data, self.tls_alpn.bind
        )
        digest = hashlib.sha256(json.dumps(solvers, sort_keys=True).encode()).hexdigest()[:16]
        version = f"{obj.generation}/{digest}"
        async with self._engine_lock:
            known = self._engines.get(config.ref)
            if known is not None and known[0] == version:
                return known[1], known[2]
            issuer = config.issuer
            if issuer.eab_kid:
                hmac = await asyncio.to_thread(self._eab_key, obj, config.namespace)
                issuer = IssuerSpec(issuer.directory_url, issuer.email, issuer.eab_kid, hmac, issuer.ca_bundle)
            account = SecretStore(
                self.client, config.namespace, config.account_secret, account_secret_name=config.account_secret
            )
            routed = RoutedStore(account, self._pending, self._may_have_pending, lambda: self.leading())
            engine = Engine(
                issuer,
                routed,
                concurrency=self.concurrency,
                challenges=self._challenges_for(config),
                solvers=SolverSetup(tuple(solvers), self.dns_state_dir, self.tls_alpn),
                before_order=self._ordering,
                journal=routed,
                ledger=Ledger(
                    SecretBackend(self.client, self.cluster_namespace),
                    parse_limits(self.rate_limits, issuer.directory_url),
                ),
                fallback=(
                    await asyncio.to_thread(build_fallback, self.client, config.namespace, config.fallback, account)
                    if config.fallback
                    else None
                ),
                rehearsal=kube_rehearsal(
                    config.rehearsal,
                    issuer,
                    self.client,
                    config.namespace,
                    config.account_secret,
                    ca_bundle=config.rehearsal_ca_bundle,
                    on_passed=self._rehearsed,
                ),
            )
            engine.observers.extend(self.observers)
            if known is not None:
                await self._close_engine(known[1])
            self._engines[config.ref] = (version, engine, routed)
            return engine, routed

    def _challenges_for(self, config: IssuerConfig) -> ChallengeStore:
        if not config.route_parents or self.routes is None:
            return self.challenges
        return RouteChallenges(self.challenges, self.routes, config.route_parents)

    def ledger_limits(self) -> list[tuple[Limit, ...]]:
        """The limits each issuer's engine enforces (the headroom metrics show these)."""
        return [engine.ledger.limits for _, engine, _ in list(self._engines.values()) if engine.ledger is not None]

    def certificate_of(self, lineage: str) -> CertificateObj | None:
        """The Certificate whose run is in progress for ``lineage`` (namespace/secretName)."""
        return self._in_flight.get(lineage)

    def _may_have_pending(self, lineage: str) -> bool:
        # lineage is namespace/secretName; the order Secret is labelled, so the cache knows it (a new
        # leader starts only after its caches synced and the old leader's Lease expired).
        return self.secrets is None or self.secrets(f"{lineage}-order") is not None

    def _rehearsed(self, spec: CertSpec, text: str) -> None:
        """A rehearsal passed: said on the Certificate too (a failure is its Failed status and Event)."""
        cert = self._in_flight.get(spec.lineage)
        if cert is not None:
            self._event(cert, "Rehearsed", text)

    def _ordering(self, spec: CertSpec) -> None:
        self.orders += 1

    def _pending(self, lineage: str, pending: PendingOrder | None) -> None:
        """Mirror the order in flight into the status (with Issuing=True); its end is in the final status."""
        cert = self._in_flight.get(lineage)
        if cert is None or pending is None:
            return
        old = list(cert.status.get("conditions") or [])
        issuing = condition(old, "Issuing", True, "Ordering", f"order {pending.url} in flight", cert.generation)
        conditions = [c for c in old if c.get("type") != "Issuing"] + [issuing]
        order = {"url": pending.url, "names": list(pending.names), "startedAt": _stamp(_now())}
        self._written[lineage] = {**cert.status, "order": order, "conditions": conditions}
        try:
            self._patch_status(cert.namespace, cert.name, {"order": order, "conditions": conditions})
        except CertkeeperError as error:  # the companion Secret holds it: resuming still works
            log.warning("%s", error)

    # -- status ------------------------------------------------------------------------------------

    def _patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        call_api(
            f"update the status of Certificate {namespace}/{name}",
            lambda: self.client.patch(
                CertificateResource.Status,
                name,
                {"status": status},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            ),
        )

    async def _issuer_status(self, obj: IssuerObj, ok: bool, reason: str, message: str, url: str = "") -> None:
        """The issuer's Ready condition (with the account URL once registered), written when it changes."""
        old: dict[str, Any] = json.loads(obj.status_json)
        conditions = list(old.get("conditions") or [])
        ready = condition(conditions, "Ready", ok, reason, message, obj.generation)
        previous = next((c for c in conditions if c.get("type") == "Ready"), None)
        acme = {"uri": url} if url else old.get("acme")
        if previous is not None and (
            {k: previous.get(k) for k in ("status", "reason", "message", "observedGeneration")}
            == {k: ready[k] for k in ("status", "reason", "message", "observedGeneration")}
            and acme == old.get("acme")
        ):
            return
        status = {"conditions": [ready], "acme": acme}
        body = {"status": status}

        def patch() -> None:
            if obj.kind == "Issuer":
                self.client.patch(
                    IssuerResource.Status, obj.name, body, namespace=obj.namespace, patch_type=PatchType.MERGE
                )
            else:
                self.client.patch(ClusterIssuerResource.Status, obj.name, body, patch_type=PatchType.MERGE)

        try:
            await asyncio.to_thread(call_api, f"update the status of {obj.kind} {obj.name}", patch)
        except CertkeeperError as error:
            log.warning("%s", error)

    async def _write_status(
        self, cert: CertificateObj, status: dict[str, Any], written: dict[str, Any] | None = None
    ) -> bool:
        """Patch what differs from the status as known (the cache's, or ``written`` during this run)."""
        old = written if written is not None else cert.status
        merged = {k: v for k, v in {**old, **status}.items() if v is not None}
        if merged == old:
            return False
        # A merge patch sets each field; None removes it.
        patch = {k: v for k, v in status.items() if old.get(k) != v}
        try:
            await asyncio.to_thread(self._patch_status, cert.namespace, cert.name, patch)
        except CertkeeperError as error:
            log.warning("%s", error)
            return False
        return True

    def _event(self, cert: CertificateObj, reason: str, message: str, *, warning: bool = False) -> None:
        Recorder(self.client, cert.namespace).emit(
            "Certificate", cert.name, reason, message, warning=warning, api_version=API_VERSION, uid=cert.uid
        )

    async def refuse(self, cert: CertificateObj, refusal: Refusal) -> None:
        old = list(cert.status.get("conditions") or [])
        ready = condition(old, "Ready", False, refusal.reason, refusal.message, cert.generation)
        issuing = condition(old, "Issuing", False, refusal.reason, "nothing is ordered until this is fixed", 0)
        issuing["observedGeneration"] = cert.generation
        previous: dict[str, Any] = next((c for c in old if c.get("type") == "Ready"), {})
        if await self._write_status(cert, {"conditions": [ready, issuing]}) and (
            previous.get("reason"),
            previous.get("message"),
        ) != (refusal.reason, refusal.message):
            log.warning("Certificate %s: %s: %s", cert.key, refusal.reason, refusal.message)
            await asyncio.to_thread(self._event, cert, refusal.reason, refusal.message, warning=True)

    # -- one Certificate ---------------------------------------------------------------------------

    def settled(self, cert: CertificateObj) -> float | None:
        """At first sight after a start: seconds until the full check, if status and Secret show all is well.

        A restart then costs no API request and no CA request per certificate: each one's first full
        check (ARI included) is spread over the check interval by its uid, never a burst at start.
        """
        if cert.key in self._glanced:
            return None
        self._glanced.add(cert.key)
        status = cert.status
        ready: dict[str, Any] = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), {})
        if ready.get("status") != "True" or ready.get("observedGeneration") != cert.generation:
            return None
        if status.get("order") or not status.get("renewalTime"):
            return None
        if self.secrets is None:
            return None
        secret = self.secrets(f"{cert.namespace}/{cert.spec.get('secretName')}")
        if secret is None or not secret.digest or secret.digest != secret.written or secret.certificate != cert.name:
            return None
        if secret.rolling and cert.spec.get("rollout"):  # a rollout was cut short (a kill, the API down)
            return None
        try:
            until = (datetime.datetime.fromisoformat(status["renewalTime"]) - _now()).total_seconds()
        except ValueError:
            return None
        if until <= 0:
            return None
        spread = MAX_WAKE_S * int(hashlib.sha256(cert.uid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return max(1.0, min(until, spread))

    async def reconcile(self, cert: CertificateObj) -> float | None:
        """Bring one Certificate up to date; seconds until it wants to be looked at again (None: on change)."""
        wait = self.settled(cert)
        if wait is not None:
            log.debug("Certificate %s: status and Secret agree; first full check in %.0f s", cert.key, wait)
            return wait
        issuer_obj: IssuerObj | None = None
        target = certificate_target(cert)
        if isinstance(target, Target):
            issuer_obj = self.issuers(target.issuer)
            if issuer_obj is None:
                kind, namespace, name = target.issuer.split("/")
                where = f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
                target = Refusal("IssuerNotFound", f"{where} not found: create it, or fix spec.issuerRef")
        if isinstance(target, Refusal):
            await self.refuse(cert, target)
            return None
        assert issuer_obj is not None
        config = issuer_config(issuer_obj, self.cluster_namespace, self._bundles)
        if isinstance(config, Refusal):
            await self._issuer_status(issuer_obj, False, config.reason, config.message)
            await self.refuse(cert, Refusal("IssuerNotReady", config.message))
            return None
        unprovable = refuse_names(config.solvers, target.spec.names, f"{issuer_obj.kind} {issuer_obj.name}")
        if unprovable is not None:
            await self.refuse(cert, unprovable)
            return None
        if config.profile or config.preferred_chain:
            spec = target.spec
            target = Target(
                **{
                    **target.__dict__,
                    "spec": CertSpec(
                        spec.names,
                        spec.key_type,
                        spec.reuse_key,
                        spec.profile or config.profile,
                        config.preferred_chain,
                        spec.renew_before,
                        spec.store_key,
                    ),
                }
            )
        store = SecretStore(
            self.client,
            target.namespace,
            target.secret_name,
            keys=target.keys,
            labels=dict(target.labels),
            annotations=dict(target.annotations),
            read_once=True,
            rolls_out=bool(target.rollout),
        )
        secret = await asyncio.to_thread(store.get)
        owner = foreign_owner(secret, cert)
        if owner is not None:
            await self.refuse(
                cert,
                Refusal(
                    "SecretInUse",
                    f"Secret {target.namespace}/{target.secret_name} belongs to {owner}: choose another "
                    "spec.secretName (certkeeper does not overwrite it)",
                ),
            )
            return None
        if secret is not None:
            await asyncio.to_thread(self._claim, store, secret)
        # Failures before the Secret exists live in the status only: the backoff must still grow
        # (1 min, 10 min, 100 min, daily) instead of starting again at each attempt.
        failures = int(cert.status.get("failedIssuanceAttempts") or 0)
        if failures and cert.status.get("lastFailureTime"):
            last = datetime.datetime.fromisoformat(str(cert.status["lastFailureTime"]).replace("Z", "+00:00"))
            store.seed_state({"failures": failures, "last_failure": last.isoformat()})
        self.full_checks += 1
        try:
            engine, routed = await self.engine_for(issuer_obj, config)
        except ConfigError as error:  # a solver's Secret missing or wrong: said on both, looked at again
            await self._issuer_status(issuer_obj, False, "InvalidSolver", str(error))
            await self.refuse(cert, Refusal("IssuerNotReady", f"{issuer_obj.kind} {issuer_obj.name}: {error}"))
            return FAILURE_RETRY_S[0]
        lineage = target.spec.lineage
        routed.attach(lineage, store)
        self._in_flight[lineage] = cert
        reporter = CertificateReporter(self, cert, target, store, issuer_obj, engine, routed)
        try:
            return await self.sync.sync(target, engine, store, routed.account, reporter)
        finally:
            routed.detach(lineage)
            self._in_flight.pop(lineage, None)
            routed.issued_by.pop(lineage, None)
            self._written.pop(lineage, None)

    def _claim(self, store: SecretStore, secret: Any) -> None:
        """Label an existing Secret as certkeeper's (so the Secret watch sees it) before adopting it."""
        meta = secret.metadata
        labels = meta.labels or {}
        annotations = meta.annotations or {}
        if labels.get("app.kubernetes.io/managed-by") == "certkeeper" and annotations.get(CERTIFICATE_REF):
            return
        data = secret.data or {}
        held = data_digest(data.get("tls.crt") or data.get("proxycert") or "")
        patch = {
            "metadata": {
                "labels": {**dict(store.labels), **MANAGED_BY},
                # The digest of what was adopted: after a restart it is trusted while it still matches
                # (and the status, written after the full check below, says Ready).
                "annotations": {**dict(store.annotations), "certkeeper.io/data-digest": held},
            }
        }
        from lightkube.resources.core_v1 import Secret

        call_api(
            f"label Secret {store.namespace}/{store.secret_name}",
            lambda: self.client.patch(
                Secret, store.secret_name, patch, namespace=store.namespace, patch_type=PatchType.MERGE
            ),
        )

    async def _report(
        self,
        cert: CertificateObj,
        target: Target,
        store: SecretStore,
        outcome: Outcome,
        written: dict[str, Any] | None,
        issued_by: str = "",
    ) -> None:
        old_status = written if written is not None else cert.status
        old = list(old_status.get("conditions") or [])
        state = store.state
        info = outcome.info
        names = " ".join(target.spec.names)
        status: dict[str, Any] = {}
        if info is not None:
            status["notBefore"] = _stamp(info.not_before)
            status["notAfter"] = _stamp(info.not_after)
        renew_at = state.get("renew_at")
        status["renewalTime"] = _stamp(datetime.datetime.fromisoformat(renew_at)) if renew_at else None
        failures = int(state.get("failures", 0) or 0)
        status["failedIssuanceAttempts"] = failures or None
        status["lastFailureTime"] = (
            _stamp(datetime.datetime.fromisoformat(state["last_failure"])) if failures and state.get("last_failure")
            else None
        )  # fmt: skip
        revision = int(old_status.get("revision") or 0)
        if outcome.changed or (info is not None and not revision):
            revision += 1
        status["revision"] = revision or None
        if issued_by and outcome.changed:
            # The CA's directory URL: the first one's, or a fallback's.
            status["issuedBy"] = issued_by.removeprefix(FALLBACK_MARK)
        valid_now = info is not None and info.not_after > _now() and set(target.spec.names) <= set(info.names)
        if outcome.ok and valid_now:
            assert info is not None
            ready = condition(
                old, "Ready", True, "Ready", f"valid until {_stamp(info.not_after)}; covers {names}", cert.generation
            )
            issuing = condition(old, "Issuing", False, "UpToDate", outcome.detail, cert.generation)
        else:
            kept = "the current certificate is kept" if old_status.get("notAfter") else "no certificate yet"
            reason = "Failed" if outcome.status == "failed" else "BackingOff"
            message = f"{outcome.detail} ({kept})"
            ready_now = old_status.get("notAfter") and any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in old
            )
            ready = (
                condition(old, "Ready", True, "Ready", "the stored certificate is still valid", cert.generation)
                if ready_now
                else condition(old, "Ready", False, reason, message, cert.generation)
            )
            issuing = condition(old, "Issuing", False, reason, message, cert.generation)
            status.pop("notBefore", None)
            status.pop("notAfter", None)
        status["conditions"] = [ready, issuing]
        if outcome.ok:
            status["order"] = None  # stored: nothing in flight any more
        changed = await self._write_status(cert, status, written)
        if outcome.changed and info is not None:
            verb = "Renewed" if outcome.status == "renewed" else "Issued"
            text = (
                f"{verb.lower()} a certificate for {names}: serial {info.serial}, expires {_stamp(info.not_after)}; "
                f"stored in Secret {target.secret_name}"
            )
            if issued_by.startswith(FALLBACK_MARK):
                text += f"; issued by the fallback CA {issued_by.removeprefix(FALLBACK_MARK)}"
            log.info("Certificate %s: %s", cert.key, text)
            await asyncio.to_thread(self._event, cert, verb, text)
        elif outcome.status == "failed" and changed:
            log.error("Certificate %s: could not get a certificate for %s: %s", cert.key, names, outcome.detail)
            await asyncio.to_thread(
                self._event, cert, "Failed", f"could not get a certificate: {outcome.detail}", warning=True
            )


@dataclass
class CertificateReporter:
    """What the controller says about one Certificate's run: its status, and Events on it."""

    reconciler: Reconciler
    cert: CertificateObj
    target: Target
    store: SecretStore
    issuer: IssuerObj
    engine: Engine
    routed: RoutedStore
    log = log

    async def outcome(self, outcome: Outcome) -> None:
        lineage = self.target.spec.lineage
        if self.engine.account is not None:
            url = self.engine.account.url
            await self.reconciler._issuer_status(self.issuer, True, "ACMEAccountRegistered", f"ACME account {url}", url)
        written = self.reconciler._written.pop(lineage, None)
        issued_by = self.routed.issued_by.pop(lineage, "")
        await self.reconciler._report(self.cert, self.target, self.store, outcome, written, issued_by)

    async def repaired(self, keys: list[str]) -> None:
        text = f"{', '.join(keys)} did not hold the stored certificate and key: rewritten from them"
        log.warning("Certificate %s: Secret %s: %s", self.cert.key, self.target.secret_name, text)
        await asyncio.to_thread(self.reconciler._event, self.cert, "Repaired", text, warning=True)

    async def rolled(self, results: list[RolloutResult]) -> None:
        for result in results:
            log.log(logging.INFO if result.ok else logging.ERROR, "Certificate %s: %s", self.cert.key, result.message)
            await asyncio.to_thread(
                self.reconciler._event,
                self.cert,
                "Rolled" if result.ok else "RolloutFailed",
                result.message,
                warning=not result.ok,
            )
