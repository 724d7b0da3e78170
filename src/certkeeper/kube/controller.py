"""``certkeeper run``: the environment as one target, driven through the controller's reconcile sequence.

Start-up (wait for the API, check RC_NAMES, serve HTTP-01 and /metrics), the Secret watch and the Lease
are run's own; each reconcile is ``TargetSync``'s, as for a Certificate, woken from one ``WorkQueue``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import signal
import threading
from collections.abc import Awaitable
from typing import TypeVar

import httpx2
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ReplicationController, Secret

from certkeeper.engine import Engine, Outcome
from certkeeper.errors import CertkeeperError
from certkeeper.kube.api import KubeApiError, is_not_found, load_kubeconfig, rbac_rule, translate
from certkeeper.kube.config import RunConfig
from certkeeper.kube.events import Recorder
from certkeeper.kube.ledger_secret import SecretBackend
from certkeeper.kube.rehearsals import run_rehearsal
from certkeeper.kube.rollout import KINDS, RolloutResult
from certkeeper.kube.run_lease import RunLease
from certkeeper.kube.secret_store import SecretStore, digest_of
from certkeeper.kube.sources import run_target
from certkeeper.kube.target_sync import TargetSync, when
from certkeeper.kube.watch import WATCH_TIMEOUT_S
from certkeeper.kube.workqueue import WorkQueue
from certkeeper.ledger import Ledger
from certkeeper.observe.ratelimit_view import usage_reader
from certkeeper.observe.records import ca_host
from certkeeper.observe.serving import ProcessView
from certkeeper.ratelimits import parse_limits
from certkeeper.solvers.config import SolverSetup
from certkeeper.solvers.http01 import ChallengeStore
from certkeeper.web import Responder, default_routes, start_responder

log = logging.getLogger("certkeeper.run")
T = TypeVar("T")
API_BACKOFF_S = (1, 2, 4, 8, 15, 30)
# When the engine gives no time to try again (e.g. the CA's directory was unreachable).
FAILURE_BACKOFF_S = (10.0, 30.0, 60.0, 300.0, 900.0)
API_TIMEOUT_S = 10.0
WATCH_RETRY_MAX_S = 30  # between attempts to watch the Secret, each followed by a re-read


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def api_wait_message(server: str, error: CertkeeperError, delay: float, attempt: int) -> str:
    """The start-up line while the Secret cannot be read: unreachable, or an answer (403: which rule)."""
    again = f"retrying in {delay:g} s (attempt {attempt})"
    if isinstance(error, KubeApiError) and error.code is not None:
        return f"the Kubernetes API at {server} answered: {error}; {again}"
    return f"cannot reach the Kubernetes API at {server}: {error}; {again}"


def is_forbidden(error: BaseException) -> bool:
    """A 403, as lightkube raises it for a request (ApiError) or for a watch (the HTTP client's error)."""
    if isinstance(error, ApiError):
        return error.status.code == 403
    return isinstance(error, httpx2.HTTPStatusError) and error.response.status_code == 403


def watch_forbidden_message(namespace: str, name: str) -> str:
    """Said once when the watch on the Secret is refused: what is missing, and what happens meanwhile."""
    return (
        f"cannot watch Secret {namespace}/{name} (403 Forbidden): an edit or deletion is noticed by re-reading "
        f"it every {WATCH_RETRY_MAX_S} s instead; {rbac_rule('watch', 'secrets')}"
    )


class Controller:
    def __init__(self, config: RunConfig, lease_duration: int = 15) -> None:
        self.config = config
        self.lease_duration = lease_duration
        self.kubeconfig = load_kubeconfig()
        current = self.kubeconfig.get()
        self.server = current.cluster.server if current is not None else "?"
        timeout = httpx2.Timeout(API_TIMEOUT_S)
        self.client = Client(self.kubeconfig, namespace=config.namespace, timeout=timeout, field_manager="certkeeper")
        self.store = SecretStore(
            self.client,
            config.namespace,
            config.secret_name,
            secret_type=config.secret_type,
            account_secret_name=config.account_secret_name,
        )
        self.events = Recorder(self.client, config.namespace)
        self.challenges = ChallengeStore()
        self.abandoned_work = False
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._responder: Responder | None = None
        self._lease: RunLease | None = None
        # The environment is one more source: one target, reconciled by the controller's sequence.
        self.target = run_target(config)
        self.sync = TargetSync(
            self.client,
            rollout_timeout=config.rollout_timeout,
            failure_backoff=FAILURE_BACKOFF_S,
            stopping=self._stop.is_set,
        )
        self.reporter = RunReporter(self)
        self.queue = WorkQueue()

    # -- helpers ---------------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but return early when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))

    def _wake(self) -> None:
        """From the watch's thread: reconcile the target now (the Secret was deleted or edited)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.queue.add, self.target.key)

    async def _unless_stopped(self, work: Awaitable[T], abandon: bool = True) -> tuple[bool, T | None]:
        """Await ``work`` unless a stop arrives first; returns (finished, result). ``abandon``: a stop
        meanwhile leaves work behind (a thread still talking to the CA or the API)."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task.done():
            return True, task.result()
        task.cancel()
        self.abandoned_work = self.abandoned_work or abandon
        return False, None

    def _request_stop(self, signame: str) -> None:
        log.info("%s received: stopping", signame)
        self._stop.set()

    # -- start-up --------------------------------------------------------------------------------

    async def _wait_for_api(self) -> bool:
        """Retry reading the Secret until the API answers; False when asked to stop meanwhile."""
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            try:
                found = await asyncio.to_thread(self.store._get, self.config.secret_name)
                # What the Secret holds at start is nobody's edit: the watch's first event shows it again.
                self.store.last_digest = digest_of(found)
                if attempt > 1:
                    log.info("the Kubernetes API at %s answers now (attempt %d)", self.server, attempt)
                return True
            except CertkeeperError as error:
                delay = API_BACKOFF_S[min(attempt, len(API_BACKOFF_S)) - 1]
                log.error("%s", api_wait_message(self.server, error, delay, attempt))
                await self._sleep(delay)
        return False

    def _watch_secret(self) -> None:
        """Wake the loop when the Secret is deleted or its certificate is changed by someone else."""
        client = Client(
            self.kubeconfig, namespace=self.config.namespace, timeout=httpx2.Timeout(WATCH_TIMEOUT_S + 30.0)
        )
        failures = 0
        said_forbidden = False  # no secrets:watch: said once, then the Secret is re-read every 30 s
        stopped = threading.Event()
        since: str | None = None  # the resourceVersion of the last list: the next watch starts there
        while not self._stop.is_set():
            try:
                for kind, obj in client.watch(
                    Secret,
                    namespace=self.config.namespace,
                    fields={"metadata.name": self.config.secret_name},
                    server_timeout=WATCH_TIMEOUT_S,
                    resource_version=since,
                ):
                    failures = 0
                    changed = kind in ("ADDED", "MODIFIED") and not self._ours(digest_of(obj))
                    if kind == "DELETED" or changed:
                        log.info(
                            "Secret %s/%s was %s by someone else: checking it now",
                            self.config.namespace,
                            self.config.secret_name,
                            "deleted" if kind == "DELETED" else "changed",
                        )
                        self._wake()
            except Exception as error:  # the watch is an optimisation: the loop still checks on schedule
                if translate("watch the Secret", error).gone:
                    # The version the watch resumed from is older than the API server keeps (etcd compacted
                    # it, or another API server's cache starts later): not a failure, list at once.
                    log.info("the watch on Secret %s expired (410 Gone): listing again", self.config.secret_name)
                else:
                    failures += 1
                    if is_forbidden(error):
                        if not said_forbidden:
                            log.warning("%s", watch_forbidden_message(self.config.namespace, self.config.secret_name))
                            said_forbidden = True
                    else:
                        log.debug("watching the Secret failed (%s); again in a moment", error)
                    stopped.wait(min(WATCH_RETRY_MAX_S, 2 ** min(failures, 8)))
                # List, then watch from the list's version: a change or deletion while the watch was down (an
                # API restart, a 410) would otherwise be seen only at the next scheduled check, hours later.
                since = self._compare_after_gap(
                    client, "(seen on a re-read)" if said_forbidden else "while the watch was down"
                )

    def _ours(self, digest: str) -> bool:
        """The Secret's data as we last saw or wrote it (or are writing it: the watch may see it first)."""
        return digest in (self.store.last_digest, self.store.writing_digest)

    def _compare_after_gap(self, client: Client, when: str) -> str | None:
        """Wake the loop if the Secret changed while unwatched; the resourceVersion to watch from next."""
        since: str | None = None
        try:
            listed = client.list(
                Secret, namespace=self.config.namespace, fields={"metadata.name": self.config.secret_name}
            )
            items = list(listed)
            since = listed.resourceVersion
            current = items[0] if items else None
        except Exception:
            try:  # no secrets:list: compare by a get, and watch from now
                current = client.get(Secret, self.config.secret_name, namespace=self.config.namespace)
            except Exception as error:
                if not is_not_found(error):
                    return None  # still down: the next attempt compares again
                current = None
        if not self._ours(digest_of(current)):
            log.info(
                "Secret %s/%s was %s %s: checking it now",
                self.config.namespace,
                self.config.secret_name,
                "deleted" if current is None else "changed",
                when,
            )
            self._wake()
        return since

    # -- start-up checks ------------------------------------------------------------------------

    def _not_an_rc(self, name: str) -> str:
        """For an RC_NAMES entry that is no ReplicationController: what it is instead, and what to set."""
        for kind, resource in KINDS.items():
            try:
                self.client.get(resource, name, namespace=self.config.namespace)
            except Exception:  # not that kind (or not readable): try the next
                continue
            variable = "DEPLOYMENTS" if kind == "Deployment" else "WORKLOADS"
            value = name if kind == "Deployment" else f"{kind.lower()}/{name}"
            return f"; {kind.lower()}/{name} exists: put {value} in {variable}, not RC_NAMES"
        return ""

    def _check_targets(self) -> None:
        """Say at start-up when RC_NAMES names something that is not a ReplicationController."""
        for name in self.config.rc_names:
            try:
                self.client.get(ReplicationController, name, namespace=self.config.namespace)
            except Exception as error:
                if is_not_found(error):
                    hint = self._not_an_rc(name)
                    log.warning(
                        "RC_NAMES: replicationcontroller/%s not found in namespace %s%s",
                        name,
                        self.config.namespace,
                        hint,
                    )

    # -- the loop --------------------------------------------------------------------------------

    async def main(self) -> int:
        self._loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self._request_stop, signal.Signals(signum).name)
        for note in self.config.notes:
            log.warning("%s", note)
        labels = (self.config.secret_name, self.config.namespace, ca_host(self.config.issuer.directory_url))
        view = ProcessView(lambda _: labels)
        routes = default_routes(self.challenges) + view.routes(
            f"certkeeper run: {self.config.namespace}", lambda: {"CA": self.config.issuer.directory_url}
        )
        self._responder = await start_responder(routes, self.config.http_bind)
        log.info(
            "serving HTTP-01, health, the status page and /metrics on %s; certificate for %s goes to Secret %s/%s",
            self.config.http_bind,
            " ".join(self.config.spec.names),
            self.config.namespace,
            self.config.secret_name,
        )
        # The rate-limit ledger beside the certificate: every run in the namespace shares it.
        ledger = Ledger(
            SecretBackend(self.client, self.config.namespace), parse_limits("auto", self.config.issuer.directory_url)
        )
        view.metrics.rate_limits(usage_reader(ledger, lambda: ledger.limits))
        engine = Engine(
            self.config.issuer,
            self.store,
            http_bind=self.config.http_bind,
            concurrency=2,
            challenges=self.challenges,
            solvers=SolverSetup(self.config.solvers, self.config.dns_state_dir),
            ledger=ledger,
            # The order in flight in a companion Secret: a killed run resumes it instead of ordering again.
            journal=self.store,
            rehearsal=run_rehearsal(self.config, self.client, self.events),  # a new name set: staging first
        )
        engine.observers.append(view.tracker)
        try:
            if not await self._wait_for_api():
                return 0
            await asyncio.to_thread(self._check_targets)
            threading.Thread(target=self._watch_secret, name="secret-watch", daemon=True).start()
            self._lease = RunLease(self.kubeconfig, self.config.namespace, self.config.secret_name, self.lease_duration)
            lease = self._lease
            self.store.leading = lambda: lease.without or lease.elector.leads()  # checked before each order
            await self._drive(engine)
            return 0
        finally:
            if self._lease is not None:
                await self._lease.close()
            await engine.close()
            await self._responder.stop()
            self.client.close()

    async def _drive(self, engine: Engine) -> None:
        """The one target through the work queue: woken by its timer, by the Secret watch, or by a backoff."""
        key = self.target.key
        timers = asyncio.create_task(self.queue.run_timers())
        self.queue.add(key)
        try:
            while (await self._unless_stopped(self.queue.get(), abandon=False))[0]:
                try:
                    seconds = await self._reconcile(engine)
                finally:
                    self.queue.done(key)
                if seconds is None:
                    return
                if self.config.cron is not None:
                    now = _now()
                    cron_at = self.config.cron.next_after(now)
                    if cron_at is not None and cron_at < now + datetime.timedelta(seconds=seconds):
                        log.info("next check at %s (CRON_FREQUENCY)", when(cron_at))
                        seconds = max(1.0, (cron_at - _now()).total_seconds())
                self.queue.add_after(key, seconds)
        finally:
            timers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timers

    async def _reconcile(self, engine: Engine) -> float | None:
        """One reconcile under the Lease; seconds until the next (None: asked to stop meanwhile)."""
        assert self._lease is not None
        # One instance at a time checks, orders and rolls for this Secret (a second one waits).
        if not (await self._unless_stopped(self._lease.acquire()))[0]:
            return None
        try:
            work = self.sync.sync(self.target, engine, self.store, self.store, self.reporter)
            finished, seconds = await self._unless_stopped(work)
            return float(seconds) if finished and seconds is not None else None
        except Exception as error:  # a bug, not a CA or API answer: keep serving, try again later
            log.error("the check failed unexpectedly (%s: %s)", type(error).__name__, error)
            return self.sync.failed(self.target.key)
        finally:
            if not self.abandoned_work:
                await self._lease.release()


class RunReporter:
    """What ``certkeeper run`` says about its target: the seed's log lines, Events on the Secret and on
    what was rolled."""

    log = log

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.config = controller.config
        self.events = controller.events

    async def outcome(self, outcome: Outcome) -> None:
        await asyncio.to_thread(self._outcome, outcome)

    def _outcome(self, outcome: Outcome) -> None:
        names = " ".join(outcome.spec.names)
        # The engine's hints name `certkeeper issue`'s flags; `run` is configured by the seed's variables.
        detail = outcome.detail.replace("check --server", "check LETSENCRYPT_ENDPOINT").replace(
            "with --ca-bundle", "with --ca-bundle (CERTKEEPER_CA_BUNDLE)"
        )
        outcome = dataclasses.replace(outcome, detail=detail)
        secret = f"{self.config.namespace}/{self.config.secret_name}"
        if outcome.status in ("issued", "renewed"):
            assert outcome.info is not None
            text = (
                f"{outcome.status} a certificate for {names}: serial {outcome.info.serial}, "
                f"expires {when(outcome.info.not_after)} ({outcome.detail})"
            )
            if outcome.changed:
                log.info("%s; stored in Secret %s in %.1f s", text, secret, outcome.seconds)
                self.events.emit("Secret", self.config.secret_name, outcome.status.capitalize(), text)
            else:
                log.info("%s; Secret %s already held it", text, secret)
        elif outcome.status == "deferred":
            # Due, but backing off after a failure (already reported when it happened).
            log.info(
                "certificate for %s is due but backing off (%s); next try %s",
                names,
                outcome.detail,
                when(outcome.next_check),
            )
        elif outcome.status == "unchanged":
            until = when(outcome.info.not_after) if outcome.info else "-"
            log.info(
                "certificate for %s still good until %s (%s); next check %s",
                names,
                until,
                outcome.detail,
                when(outcome.next_check),
            )
        else:
            # The engine gives no time when it failed before the CA was asked: the loop's backoff applies.
            upcoming = when(outcome.next_check) if outcome.next_check else "after a backoff (10 s up to 15 min)"
            log.error("could not get a certificate for %s: %s; next try %s", names, outcome.detail, upcoming)
            self.events.emit(
                "Secret",
                self.config.secret_name,
                "Failed",
                f"could not get a certificate for {names}: {outcome.detail}",
                warning=True,
            )

    async def repaired(self, keys: list[str]) -> None:
        text = f"{', '.join(keys)} did not hold the certificate and key in proxycert/proxykey: rewritten from them"
        log.warning("Secret %s/%s: %s", self.config.namespace, self.config.secret_name, text)
        await asyncio.to_thread(self.events.emit, "Secret", self.config.secret_name, "Repaired", text, warning=True)

    async def rolled(self, results: list[RolloutResult]) -> None:
        await asyncio.to_thread(self._rolled, results)

    def _rolled(self, results: list[RolloutResult]) -> None:
        ns = self.config.namespace
        for result in results:
            if result.ok:
                log.info("%s", result.message)
                self.events.emit(
                    result.kind,
                    result.name,
                    "Rolled",
                    result.message,
                    api_version="v1" if result.kind == "ReplicationController" else "apps/v1",
                )
                continue
            if result.missing and result.kind == "ReplicationController":
                result = dataclasses.replace(result, message=result.message + self.controller._not_an_rc(result.name))
            log.error("%s; the certificate is stored in Secret %s/%s", result.message, ns, self.config.secret_name)
            reason = "WorkloadMissing" if result.missing else "RolloutFailed"
            # A missing object cannot carry the Event: put it on the Secret.
            self.events.emit("Secret", self.config.secret_name, reason, result.message, warning=True)
