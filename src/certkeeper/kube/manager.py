"""``certkeeper controller``: the caches, the work queue, the leader Lease and the shared responder.

Every replica watches (so a new leader starts warm) and answers HTTP-01 (the leader publishes its
tokens in a Secret the others watch, so a Service in front of all replicas works). Only the replica
holding the Lease reconciles; one that cannot renew it stops its workers before the Lease can expire
for the others, and competes again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx2
from lightkube import Client
from lightkube.config.client_adapter import AsyncClient as http_client
from lightkube.config.client_adapter import ConnectionParams
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from certkeeper.errors import CertkeeperError
from certkeeper.kube.api import KubeApiError, call_api, check_response, load_kubeconfig
from certkeeper.kube.gateway_sync import GATEWAY_PREFIX, GatewaySource, gateway_api_served
from certkeeper.kube.leader import LeaderElector
from certkeeper.kube.metrics import controller_view, lineage_of
from certkeeper.kube.reconcile import Reconciler
from certkeeper.kube.secret_store import MANAGED_BY
from certkeeper.kube.sources import (
    API_VERSION,
    CertificateObj,
    IngressObj,
    IssuerObj,
    SecretObj,
    ingress_certificates,
    issuer_ref,
    project_certificate,
    project_ingress,
    project_issuer,
    project_secret,
)
from certkeeper.kube.watch import Informer
from certkeeper.kube.workqueue import WorkQueue
from certkeeper.observe.serving import ProcessView
from certkeeper.solvers.http01 import CHALLENGE_PREFIX, TOKEN_RE, ChallengeStore
from certkeeper.solvers.httproute import RouteKeeper
from certkeeper.web import Responder, start_responder

log = logging.getLogger("certkeeper.controller")
CHALLENGE_SECRET = "certkeeper-http01"
REMOVAL_DELAY_S = 2.0  # a finished token leaves the shared Secret with the next one published, or after this
INGRESS_PREFIX = "ingress:"
API_TIMEOUT_S = 10.0
# A replica asked for a token it has not seen reads the shared Secret: at most this many times a second.
FETCHES_PER_S = 20


@dataclass(frozen=True)
class ControllerConfig:
    namespace: str  # the controller's own: Lease, shared tokens, ClusterIssuer accounts
    http_bind: str = "0.0.0.0:8080"
    concurrency: int = 16
    default_issuer: str = ""  # for kubernetes.io/tls-acme Ingresses: "ClusterIssuer/name" or "Issuer/name"
    ingress: bool = True
    leader_elect: bool = True
    lease_name: str = "certkeeper-controller"
    lease_duration: int = 15
    identity: str = ""
    rollout_timeout: float = 300.0
    watch_namespace: str = ""  # only this namespace's Certificates, Issuers, Secrets, Ingresses ("": all)
    gateway: bool = True  # Certificates for annotated Gateways, when the cluster serves the Gateway API
    service: str = "certkeeper-controller"  # the Service in front of the replicas: HTTPRoutes send HTTP-01 here
    service_port: int = 80
    rate_limits: str = "auto"  # the CA limits the rate-limit ledger enforces (ratelimits.parse_limits)
    dns_state_dir: str | None = None  # DNS-01 journal (a volume, to clean up after a crash); None: temp dir
    tls_alpn_bind: str = "0.0.0.0:8443"  # where the leader answers TLS-ALPN-01 (the Service maps 443 here)


class SharedChallenges(ChallengeStore):
    """The leader's tokens, also published in a Secret so that every replica can answer them."""

    def __init__(self, client: Client, namespace: str) -> None:
        super().__init__()
        self.client = client
        self.namespace = namespace
        self.publish = False  # only the leader publishes
        self._removals: set[str] = set()  # done with, still in the Secret
        self._timer: threading.Timer | None = None

    def _patch(self, data: dict[str, str | None], *, create: bool = True) -> None:
        patch = {"metadata": {"labels": MANAGED_BY, "annotations": {"certkeeper.io/role": "http01"}}, "data": data}
        what = f"publish HTTP-01 tokens in Secret {self.namespace}/{CHALLENGE_SECRET}"
        try:
            call_api(
                what,
                lambda: self.client.patch(
                    Secret, CHALLENGE_SECRET, patch, namespace=self.namespace, patch_type=PatchType.MERGE
                ),
            )
            return
        except KubeApiError as error:
            if not error.not_found or not create:
                raise
            body = Secret(
                metadata=ObjectMeta(
                    name=CHALLENGE_SECRET,
                    namespace=self.namespace,
                    labels=dict(MANAGED_BY),
                    annotations={"certkeeper.io/role": "http01"},
                ),
                type="Opaque",
                data={k: v for k, v in data.items() if v is not None},
            )
        try:
            call_api(what, lambda: self.client.create(body))
        except KubeApiError as error:
            if not error.conflict:
                raise
            self._patch(data, create=False)  # another worker created it meanwhile

    def put(self, token: str, key_authorization: str) -> None:
        super().put(token, key_authorization)
        if self.publish:
            with self._lock:
                removals, self._removals = self._removals - {token}, set()
            try:
                # Written before the CA is told to validate: any replica it reaches can read it. Tokens
                # done with since the last write go in the same patch.
                self._patch({token: base64.b64encode(key_authorization.encode()).decode(), **dict.fromkeys(removals)})
            except CertkeeperError as error:
                with self._lock:
                    self._removals |= removals
                log.warning("%s; only this replica can answer the challenge", error)

    def remove(self, token: str) -> None:
        """The token stops being answered here at once; its removal from the Secret waits for the next put
        (one patch instead of two while the leader is busy) or at most ``REMOVAL_DELAY_S``."""
        super().remove(token)
        if self.publish:
            with self._lock:
                self._removals.add(token)
                if self._timer is None:
                    self._timer = threading.Timer(REMOVAL_DELAY_S, self.flush)
                    self._timer.daemon = True
                    self._timer.start()

    def flush(self) -> None:
        """Remove the tokens done with from the Secret now."""
        with self._lock:
            removals, self._removals = self._removals, set()
            self._timer = None
        if removals:
            try:
                self._patch(dict.fromkeys(removals), create=False)
            except CertkeeperError as error:
                log.warning("%s", error)


class Manager:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.kubeconfig = load_kubeconfig()
        current = self.kubeconfig.get()
        self.server = current.cluster.server if current is not None else "?"
        self.client = Client(
            self.kubeconfig, timeout=httpx2.Timeout(API_TIMEOUT_S), field_manager="certkeeper-controller"
        )
        self.http: httpx2.AsyncClient | None = None
        self.identity = config.identity or f"{socket.gethostname()}-{os.getpid()}"
        self.challenges = SharedChallenges(self.client, config.namespace)
        self.queue: WorkQueue | None = None
        self.informers: list[Informer[Any]] = []
        self.certificates: Informer[CertificateObj] | None = None
        self.issuers: dict[str, Informer[IssuerObj]] = {}
        self.secrets: Informer[SecretObj] | None = None
        self.ingresses: Informer[IngressObj] | None = None
        self.gateways: GatewaySource | None = None
        self.routes = RouteKeeper(self.client, config.namespace, config.service, config.service_port)
        self.gateway_api = False
        self.reconciler: Reconciler | None = None
        self.leader: LeaderElector | None = None
        self.view: ProcessView | None = None  # / and /metrics
        self._stop = asyncio.Event()
        self._fetch_lock = asyncio.Lock()
        self._fetched_at = 0.0
        self._fetch_times: list[float] = []
        self._fetched: SecretObj | None = None
        self._first_pass: set[str] = set()
        self._first_pass_started = 0.0

    # -- health ------------------------------------------------------------------------------------

    def ready(self) -> bool:
        return bool(self.informers) and all(i.synced.is_set() for i in self.informers)

    def _routes(self) -> list[Any]:
        def health(path: str) -> tuple[int, str] | None:
            if path in ("/healthz", "/livez", CHALLENGE_PREFIX + "health"):
                return 200, "OK\n"
            if path == "/readyz":
                return (200, "OK\n") if self.ready() else (503, "caches not synced yet\n")
            if path == "/statusz":
                return 200, json.dumps(self.counters(), sort_keys=True) + "\n"
            return None

        def challenge(path: str) -> tuple[int, str] | None:
            if not path.startswith(CHALLENGE_PREFIX):
                return None
            token = path[len(CHALLENGE_PREFIX) :]
            if not TOKEN_RE.fullmatch(token):
                return 404, "no such challenge\n"
            value = self.challenges.get(token) or self._shared_token(token)
            return (200, value) if value else (404, "no such challenge\n")

        return [health, challenge]

    def counters(self) -> dict[str, Any]:
        """What this replica holds and has done: cache sizes, API requests of the caches, work done."""
        return {
            "leader": bool(self.leader is not None and self.leader.is_leader) or not self.config.leader_elect,
            "cached": {i.what.split()[0]: len(i.cache) for i in self.informers},
            "watch_requests": sum(i.requests for i in self.informers),
            "relists": sum(i.relists for i in self.informers),
            "processed": self.queue.processed if self.queue is not None else 0,
            "queued": len(self.queue) if self.queue is not None else 0,
            "timers": self.queue.timers if self.queue is not None else 0,
            "full_checks": self.reconciler.full_checks if self.reconciler is not None else 0,
            "orders": self.reconciler.orders if self.reconciler is not None else 0,
        }

    async def _fetch_token(self, path: str) -> tuple[int, str] | None:
        """A token not (yet) in this replica's cache: the leader may have published it a moment ago.

        Read the shared Secret from the API once more unless a read started after this request came
        in (requests at once share one read); at most ``FETCHES_PER_S`` reads a second, so a scanner
        asking for made-up tokens costs the API server little.
        """
        if not path.startswith(CHALLENGE_PREFIX) or self.http is None:
            return None
        token = path[len(CHALLENGE_PREFIX) :]
        if not TOKEN_RE.fullmatch(token):
            return None
        asked = time.monotonic()
        async with self._fetch_lock:
            recent = [t for t in self._fetch_times if asked - t < 1.0]
            if self._fetched_at < asked and len(recent) < FETCHES_PER_S:
                self._fetched_at = time.monotonic()
                self._fetch_times = [*recent, self._fetched_at]
                url = f"/api/v1/namespaces/{self.config.namespace}/secrets/{CHALLENGE_SECRET}"
                try:
                    response = await self.http.get(url)
                    if response.is_success:
                        self._fetched = project_secret(response.json())
                except (httpx2.HTTPError, OSError, ValueError) as error:
                    log.debug("cannot read the shared HTTP-01 tokens: %s", error)
        value = dict(self._fetched.tokens).get(token) if self._fetched is not None else None
        if value is None:
            return None
        log.info("answered HTTP-01 token %s... published by the leader", token[:8])
        return 200, value

    def _shared_token(self, token: str) -> str | None:
        if self.secrets is None:
            return None
        shared = self.secrets.cache.get(f"{self.config.namespace}/{CHALLENGE_SECRET}")
        return dict(shared.tokens).get(token) if shared is not None else None

    # -- events from the caches ----------------------------------------------------------------------

    def _on_certificate(self, key: str, old: CertificateObj | None, new: CertificateObj | None) -> None:
        assert self.queue is not None
        if new is None:
            self.queue.cancel(key)
            if old is not None and self.view is not None:
                self.view.tracker.forget(lineage_of(old))  # its series go: no alert for what is gone
        elif old is None or old.generation != new.generation:
            self.queue.add(key)  # a status-only change (ours) needs no work

    def _on_issuer(self, key: str, old: IssuerObj | None, new: IssuerObj | None) -> None:
        assert self.queue is not None and self.certificates is not None
        changed = new if new is not None else old
        if changed is None or (old is not None and new is not None and old.generation == new.generation):
            return
        for cert in list(self.certificates.cache.values()):
            ref = cert.spec.get("issuerRef") or {}
            if issuer_ref(ref.get("kind") or "Issuer", cert.namespace, str(ref.get("name", ""))) == changed.ref:
                self.queue.add(cert.key)

    def _on_secret(self, key: str, old: SecretObj | None, new: SecretObj | None) -> None:
        assert self.queue is not None
        seen = new if new is not None else old
        if seen is None or not seen.certificate:
            return
        if new is None or (old is not None and old.digest != new.digest):
            self.queue.add(f"{seen.namespace}/{seen.certificate}")

    def _on_ingress(self, key: str, old: IngressObj | None, new: IngressObj | None) -> None:
        assert self.queue is not None
        if new is not None and (new.issuer or (old is not None and old.issuer)):
            self.queue.add(INGRESS_PREFIX + key)

    # -- work --------------------------------------------------------------------------------------

    async def _work(self, key: str) -> None:
        assert self.queue is not None and self.reconciler is not None and self.certificates is not None
        if key.startswith(INGRESS_PREFIX):
            await self._sync_ingress(key[len(INGRESS_PREFIX) :])
            self.queue.forget(key)
            return
        if key.startswith(GATEWAY_PREFIX):
            if self.gateways is not None:
                await self.gateways.sync(key[len(GATEWAY_PREFIX) :])
            self.queue.forget(key)
            return
        cert = self.certificates.cache.get(key)
        if cert is None:
            return
        try:
            wake = await self.reconciler.reconcile(cert)
        finally:
            if key in self._first_pass:
                self._first_pass.discard(key)
                if not self._first_pass:
                    log.info(
                        "every Certificate looked at once since leading, in %.1f s (%d full checks, %d orders)",
                        time.monotonic() - self._first_pass_started,
                        self.reconciler.full_checks,
                        self.reconciler.orders,
                    )
        self.queue.forget(key)
        if wake is not None:
            self.queue.add_after(key, wake)

    async def _worker(self) -> None:
        assert self.queue is not None
        while True:
            key = await self.queue.get()
            try:
                await self._work(key)
            except asyncio.CancelledError:
                raise
            except CertkeeperError as error:
                delay = self.queue.retry(key)
                log.warning("%s: %s; again in %.0f s", key, error, delay)
            except Exception as error:  # a bug: log it, keep serving the others
                delay = self.queue.retry(key)
                log.exception("%s: unexpected %s: %s; again in %.0f s", key, type(error).__name__, error, delay)
            finally:
                self.queue.done(key)

    async def _sync_ingress(self, key: str) -> None:
        """Create, update or delete the Certificates an annotated Ingress implies."""
        assert self.ingresses is not None and self.certificates is not None and self.http is not None
        ingress = self.ingresses.cache.get(key)
        if ingress is None:
            return  # deleted: the garbage collector removes the Certificates it owned
        if ingress.issuer == "-":
            log.warning(
                "Ingress %s asks for kubernetes.io/tls-acme but no --default-issuer is set: no Certificate made", key
            )
            return
        wanted = {body["metadata"]["name"]: body for body in ingress_certificates(ingress)}
        base = f"/apis/{API_VERSION}/namespaces/{ingress.namespace}/certificates"
        for name, body in wanted.items():
            existing = self.certificates.cache.get(f"{ingress.namespace}/{name}")
            if existing is None:
                response = await self.http.post(base, json=body)
                if response.status_code != 409:
                    check_response(f"create Certificate {ingress.namespace}/{name}", response)
                    log.info("Ingress %s: created Certificate %s", key, name)
                continue
            if ingress.uid not in existing.owner_uids:
                log.warning("Ingress %s: Certificate %s exists and is not the Ingress's: left alone", key, name)
                continue
            current = existing.spec
            if any(current.get(f) != body["spec"][f] for f in ("secretName", "dnsNames", "issuerRef")):
                response = await self.http.patch(
                    f"{base}/{name}",
                    json={"spec": body["spec"]},
                    headers={"Content-Type": "application/merge-patch+json"},
                )
                check_response(f"update Certificate {ingress.namespace}/{name}", response)
                log.info("Ingress %s: updated Certificate %s", key, name)
        for cert in list(self.certificates.cache.values()):
            if cert.namespace == ingress.namespace and ingress.uid in cert.owner_uids and cert.name not in wanted:
                response = await self.http.delete(f"{base}/{cert.name}")
                if response.status_code != 404:
                    check_response(f"delete Certificate {cert.key}", response)
                    log.info("Ingress %s: deleted Certificate %s (no longer in spec.tls)", key, cert.name)

    # -- the process -------------------------------------------------------------------------------

    def _request_stop(self, signame: str) -> None:
        log.info("%s received: stopping", signame)
        self._stop.set()

    def _make_informers(self, http: httpx2.AsyncClient) -> None:
        scope = f"/namespaces/{self.config.watch_namespace}" if self.config.watch_namespace else ""
        self.certificates = Informer(
            http, "Certificates", f"/apis/{API_VERSION}{scope}/certificates", project_certificate, self._on_certificate
        )
        for kind, path in (("Issuer", f"{scope}/issuers"), ("ClusterIssuer", "/clusterissuers")):
            self.issuers[kind] = Informer(
                http, f"{kind}s", f"/apis/{API_VERSION}{path}", project_issuer(kind), self._on_issuer
            )
        self.secrets = Informer(
            http,
            "Secrets labelled app.kubernetes.io/managed-by=certkeeper",
            f"/api/v1{scope}/secrets",
            project_secret,
            self._on_secret,
            labels="app.kubernetes.io/managed-by=certkeeper",
        )
        self.informers = [self.certificates, *self.issuers.values(), self.secrets]
        if self.config.ingress:
            self.ingresses = Informer(
                http,
                "Ingresses",
                f"/apis/networking.k8s.io/v1{scope}/ingresses",
                project_ingress(self.config.default_issuer),
                self._on_ingress,
            )
            self.informers.append(self.ingresses)

    async def _add_gateways(self, http: httpx2.AsyncClient) -> None:
        if not self.config.gateway:
            return
        self.gateway_api = await gateway_api_served(http)
        if not self.gateway_api:
            log.info("the cluster does not serve the Gateway API: Gateways are not watched (restart once installed)")
            return
        scope = f"/namespaces/{self.config.watch_namespace}" if self.config.watch_namespace else ""
        queue = self.queue
        assert queue is not None
        self.gateways = GatewaySource(
            http,
            self.client,
            lambda: self.certificates.cache if self.certificates is not None else {},
            queue.add,
            scope,
        )
        self.informers.append(self.gateways.informer)

    async def _delete_routes(self, leftovers: bool = False) -> None:
        """HTTPRoutes for HTTP-01: at stop, the ones this process made; when leading starts, a lost leader's too."""
        try:
            if not leftovers:
                deleted = await asyncio.to_thread(self.routes.delete_all)
            elif self.gateway_api:
                deleted = await asyncio.to_thread(self.routes.delete_leftovers)
            else:
                return
        except CertkeeperError as error:
            log.warning("%s", error)
            return
        if deleted and not leftovers:
            log.info("deleted %d HTTPRoute(s) of challenges still in flight", deleted)

    def _issuer(self, ref: str) -> IssuerObj | None:
        kind, namespace, name = ref.split("/")
        informer = self.issuers.get(kind)
        if informer is None:
            return None
        return informer.cache.get(f"{namespace}/{name}" if namespace else name)

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._request_stop, signal.Signals(signum).name)
        current = self.kubeconfig.get()
        assert current is not None
        params = ConnectionParams(timeout=httpx2.Timeout(API_TIMEOUT_S))
        self.http = http = http_client(current, params)
        self.queue = WorkQueue()
        self._make_informers(http)
        await self._add_gateways(http)
        self.reconciler = Reconciler(
            self.client,
            issuers=self._issuer,
            secrets=lambda key: self.secrets.cache.get(key) if self.secrets is not None else None,
            challenges=self.challenges,
            cluster_namespace=self.config.namespace,
            concurrency=self.config.concurrency,
            rollout_timeout=self.config.rollout_timeout,
            routes=self.routes,
            rate_limits=self.config.rate_limits,
            dns_state_dir=self.config.dns_state_dir,
            tls_alpn_bind=self.config.tls_alpn_bind,
        )
        self.view = controller_view(self)
        self.reconciler.observers.append(self.view.tracker)
        facts = lambda: {"replica": self.identity, "leader": "yes" if self.counters()["leader"] else "no"}  # noqa: E731
        routes = self._routes() + self.view.routes("certkeeper controller", facts)
        responder: Responder = await start_responder(
            routes, self.config.http_bind, reuse_port=True, fallback=self._fetch_token
        )
        log.info(
            "certkeeper controller %s: HTTP-01 and /healthz, /readyz on %s; API %s",
            self.identity,
            self.config.http_bind,
            self.server,
        )
        tasks = [asyncio.create_task(i.run(), name=f"watch {i.what}") for i in self.informers]
        tasks.append(asyncio.create_task(self.queue.run_timers(), name="timers"))
        tasks.append(asyncio.create_task(self._lead(), name="lead"))
        stop: asyncio.Task[Any] = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                failure = task.exception() if task.done() and not task.cancelled() else None
                if failure is not None:
                    raise failure
        finally:
            for task in [stop, *tasks]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._delete_routes()
            if self.leader is not None:
                await self.leader.release()
            await self.reconciler.close()
            await responder.stop()
            await http.aclose()
            self.client.close()
        return 0

    async def _lead(self) -> None:
        """Wait for the caches; then, each time this replica holds the Lease, reconcile until it is lost."""
        assert self.queue is not None and self.http is not None
        await asyncio.gather(*(i.synced.wait() for i in self.informers))
        log.info("caches synced: %s", ", ".join(f"{len(i.cache)} {i.what.split()[0]}" for i in self.informers))
        if not self.config.leader_elect:
            await self._reconcile_all()
            return
        self.leader = LeaderElector(
            self.http, self.config.namespace, self.config.lease_name, self.identity, self.config.lease_duration
        )
        assert self.reconciler is not None
        # Checked by the worker threads right before an order is recorded and placed.
        self.reconciler.leading = self.leader.leads
        while True:
            await self.leader.acquire()
            self.challenges.publish = True
            try:
                await self._reconcile_all()
            except Exception as error:  # a bug: stop working, keep serving, compete again
                log.exception("the leader's loop failed unexpectedly (%s)", error)
                await asyncio.sleep(1.0)
            # Lost (e.g. the API was unreachable for longer than the renew deadline): the workers are
            # stopped; an order a worker thread still finishes is journaled, so whoever leads next
            # resumes it rather than ordering again.
            self.challenges.publish = False
            log.error("lost the Lease: stopped working until this replica leads again")

    async def _reconcile_all(self) -> None:
        """Queue everything, then work until the Lease is lost (or for ever without leader election)."""
        assert self.queue is not None and self.certificates is not None
        await self._delete_routes(leftovers=True)
        self._first_pass = set(self.certificates.cache)
        self._first_pass_started = time.monotonic()
        for key in list(self.certificates.cache):
            self.queue.add(key)
        if self.ingresses is not None:
            for key, ingress in list(self.ingresses.cache.items()):
                if ingress.issuer:
                    self.queue.add(INGRESS_PREFIX + key)
        for key in self.gateways.keys() if self.gateways is not None else ():
            self.queue.add(key)
        workers = [asyncio.create_task(self._worker()) for _ in range(self.config.concurrency)]
        try:
            if self.leader is not None:
                await self.leader.hold()
            else:
                await asyncio.Event().wait()
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
