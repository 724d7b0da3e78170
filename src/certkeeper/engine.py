"""source -> plan -> issue -> store -> rollout, for many certificates at once.

ACME calls are synchronous (certbot's library), so they run in a bounded thread pool with one
client per thread; the HTTP-01 responder runs on the event loop and is shared by all orders.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from certkeeper.acme import Account, AccountStore, AcmeClient, ensure_account
from certkeeper.crypto import generate_key, key_type_of
from certkeeper.errors import CAError, CertkeeperError, ConfigError
from certkeeper.model import CertInfo, IssuedCert, PendingOrder, RenewalWindow
from certkeeper.planner import plan, retry_at
from certkeeper.solvers.http01 import ChallengeStore
from certkeeper.spec import CertSpec, IssuerSpec
from certkeeper.stores.base import StoredCert, check_replacement
from certkeeper.web import Responder, default_routes, start_responder

log = logging.getLogger(__name__)
T = TypeVar("T")

# A certificate issued (and its order journaled) that the store refused: the write is retried this soon.
STORE_RETRY_S = (10, 30, 60, 300)

# "deferred": due, but held back by backoff after failures (or the CA's Retry-After).
Status = Literal["issued", "renewed", "unchanged", "deferred", "failed"]


class CertStore(AccountStore, Protocol):
    def load(self, lineage: str) -> StoredCert | None: ...

    def save(self, lineage: str, issued: IssuedCert, meta: dict[str, Any]) -> bool: ...

    def load_state(self, lineage: str) -> dict[str, Any]: ...

    def save_state(self, lineage: str, state: dict[str, Any]) -> None: ...

    def location(self, lineage: str) -> str: ...


class OrderJournal(Protocol):
    """Where orders in flight are recorded (the controller: a Secret per certificate), so that a
    process killed mid-order is followed by a resumed order, not a second one."""

    def load_pending(self, lineage: str) -> PendingOrder | None: ...

    def save_pending(self, lineage: str, pending: PendingOrder) -> None: ...

    def clear_pending(self, lineage: str) -> None: ...


@dataclass(frozen=True)
class Outcome:
    spec: CertSpec
    status: Status
    detail: str
    info: CertInfo | None
    seconds: float
    changed: bool = False
    next_check: datetime.datetime | None = None

    @property
    def ok(self) -> bool:
        return self.status not in ("failed", "deferred")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def run_deploy_hook(command: str, location: str, names: tuple[str, ...]) -> None:
    env = {**os.environ, "RENEWED_LINEAGE": location, "RENEWED_DOMAINS": " ".join(names)}
    result = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise CertkeeperError(
            f"the certificate was stored, but the deploy hook exited {result.returncode} ({tail[0][:200]})",
            "fix the hook; it runs again at the next change",
        )


class Engine:
    def __init__(
        self,
        issuer: IssuerSpec,
        store: CertStore,
        *,
        http_bind: str = "0.0.0.0:80",
        concurrency: int = 8,
        deploy_hook: str | None = None,
        force: bool = False,
        challenges: ChallengeStore | None = None,
        before_order: Callable[[CertSpec], None] | None = None,
        journal: OrderJournal | None = None,
    ) -> None:
        self.issuer = issuer
        self.store = store
        self.http_bind = http_bind
        self.concurrency = max(1, concurrency)
        self.deploy_hook = deploy_hook
        self.force = force
        # A caller that already serves HTTP-01 (``certkeeper run``) passes its own store.
        self.challenges = challenges if challenges is not None else ChallengeStore()  # an empty store is falsy
        self._serve_challenges = challenges is None
        self._responder: Responder | None = None
        self._responder_lock = asyncio.Lock()
        self._local = threading.local()
        self._directory_lock = threading.Lock()
        self._directory: Any = None
        self._account: Account | None = None
        # Concurrent runs (the controller's workers) must not register one account each.
        self._account_lock = asyncio.Lock()
        self.before_order = before_order  # called in the worker thread (e.g. to report Issuing)
        self.journal = journal
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="acme")

    # -- plumbing --------------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def _client(self) -> AcmeClient:
        client: AcmeClient | None = getattr(self._local, "client", None)
        if client is None:
            assert self._account is not None
            with self._directory_lock:
                client = AcmeClient(self.issuer, self._account, self._directory)
                self._directory = client.directory
            self._local.client = client
        return client

    async def _ensure_responder(self) -> None:
        if not self._serve_challenges:
            return
        async with self._responder_lock:
            if self._responder is None:
                self._responder = await start_responder(default_routes(self.challenges), self.http_bind)

    async def close(self) -> None:
        if self._responder is not None:
            await self._responder.stop()
            self._responder = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the pipeline ----------------------------------------------------------------------------

    async def run(self, specs: list[CertSpec], on_done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
        """Bring every spec up to date; failures are reported per certificate, never raised."""
        try:
            await self.ensure_account()
        except CertkeeperError as error:
            outcomes = [Outcome(s, "failed", str(error), None, 0.0) for s in specs]
            for outcome in outcomes:
                if on_done:
                    on_done(outcome)
            return outcomes

        async def one(spec: CertSpec) -> Outcome:
            outcome = await self._one(spec)
            if on_done:
                on_done(outcome)
            return outcome

        return list(await asyncio.gather(*(one(s) for s in specs)))

    @property
    def account(self) -> Account | None:
        """The account in use, once loaded or registered."""
        return self._account

    async def ensure_account(self) -> Account:
        """The account this engine orders with: loaded or registered once, however many runs overlap."""
        async with self._account_lock:
            if self._account is None:
                self._account = await self._in_thread(ensure_account, self.issuer, self.store)
            return self._account

    def _renewal_window(self, stored: StoredCert | None) -> RenewalWindow | None:
        if stored is None or stored.info is None or stored.problem:
            return None
        try:
            return self._client().renewal_window(stored.info)
        except CertkeeperError as error:
            log.warning("cannot ask the CA for a renewal window (%s); using the lifetime rule", error)
            return None

    async def _one(self, spec: CertSpec) -> Outcome:
        started = time.monotonic()
        lineage = spec.lineage
        state: dict[str, Any] = {}
        try:
            stored = await self._in_thread(self.store.load, lineage)
            state = await self._in_thread(self.store.load_state, lineage)
            window = await self._in_thread(self._renewal_window, stored)
            decision = plan(spec, stored, _now(), window, state)
            pending = await self._in_thread(self.journal.load_pending, lineage) if self.journal else None
            if pending is not None and (pending.names != spec.names or not decision.due):
                # Stored after all (killed before clearing), or asked for other names since.
                await self._in_thread(self._clear_pending, lineage)
                pending = None
            if not decision.due and not self.force:
                state.update(next_check=decision.next_check.isoformat(), reason=decision.reason)
                if decision.renew_at:
                    state["renew_at"] = decision.renew_at.isoformat()
                await self._in_thread(self.store.save_state, lineage, state)
                info = stored.info if stored else None
                if decision.held_back:
                    last = state.get("last_error")
                    detail = f"{decision.reason}" + (f"; last error: {last}" if last else "")
                    return Outcome(spec, "deferred", detail, info, time.monotonic() - started,
                                   next_check=decision.next_check)  # fmt: skip
                return Outcome(spec, "unchanged", decision.reason, info, time.monotonic() - started,
                               next_check=decision.next_check)  # fmt: skip
            await self._ensure_responder()
            usable = stored if stored is not None and stored.info is not None and not stored.problem else None
            if pending is not None and key_type_of(pending.key_pem) == spec.key_type:
                key_pem = pending.key_pem
            elif spec.reuse_key and usable is not None and key_type_of(usable.key_pem) == spec.key_type:
                key_pem = usable.key_pem
            else:
                key_pem = await self._in_thread(generate_key, spec.key_type)
            resume_url = pending.url if pending is not None and pending.key_pem == key_pem else None

            recorded = [pending is not None]

            def placed(url: str) -> None:
                if self.journal is not None:
                    recorded[0] = True
                    self.journal.save_pending(lineage, PendingOrder(url, spec.names, key_pem))

            has_ari = window is not None
            replaces = usable.info.ari_id if usable is not None and usable.info and has_ari else None
            log.info("ordering %s (%s)", " ".join(spec.names), decision.reason if decision.due else "forced")
            if self.before_order is not None:
                await self._in_thread(self.before_order, spec)
            issued = await self._in_thread(
                lambda: self._client().order(
                    spec, key_pem, self.challenges, replaces=replaces, resume_url=resume_url, on_placed=placed
                )
            )
            check_replacement(issued, spec.names, None if self.force else usable)
            try:
                changed = await self._in_thread(self.store.save, lineage, issued, self._meta(spec, issued, replaces))
            except CertkeeperError as error:
                if not recorded[0]:
                    raise
                return await self._not_stored(spec, state, error, started)
            if recorded[0]:
                await self._in_thread(self._clear_pending, lineage)
            # check_replacement already matched key and certificate: plan from the parsed facts.
            after = plan(spec, StoredCert(issued.key_pem, issued.cert_pem, issued.chain_pem, issued.info), _now())
            state = {
                "failures": 0,
                "next_check": after.next_check.isoformat(),
                "renew_at": after.renew_at.isoformat() if after.renew_at else None,
                "reason": after.reason,
                "last_success": _now().isoformat(),
            }
            await self._in_thread(self.store.save_state, lineage, state)
            status: Status = "renewed" if usable is not None else "issued"
            if changed and self.deploy_hook:
                await self._in_thread(run_deploy_hook, self.deploy_hook, self.store.location(lineage), spec.names)
            return Outcome(spec, status, decision.reason if decision.due else "forced", issued.info,
                           time.monotonic() - started, changed=changed, next_check=after.next_check)  # fmt: skip
        except CertkeeperError as error:
            return await self._failed(spec, state, error, started)

    async def _not_stored(
        self, spec: CertSpec, state: dict[str, Any], error: CertkeeperError, started: float
    ) -> Outcome:
        """Issued and journaled, but the store refused it: the order still holds the certificate, so the
        next attempt fetches it again (no new order). Retry the write soon; it is no failure at the CA."""
        attempts = int(state.get("store_failures", 0)) + 1
        wait = STORE_RETRY_S[min(attempts, len(STORE_RETRY_S)) - 1]
        next_try = _now() + datetime.timedelta(seconds=wait)
        state.update(store_failures=attempts, last_error=str(error), next_check=next_try.isoformat())
        try:
            await self._in_thread(self.store.save_state, spec.lineage, state)
        except (OSError, CertkeeperError) as save_error:
            log.warning("cannot record the failure for %s: %s", spec.lineage, save_error)
        detail = f"issued, but not stored: {error}; the write is retried in {wait} s without a new order"
        return Outcome(spec, "failed", detail, None, time.monotonic() - started, next_check=next_try)

    def _clear_pending(self, lineage: str) -> None:
        if self.journal is None:
            return
        try:
            self.journal.clear_pending(lineage)
        except CertkeeperError as error:  # a stale record is dropped at the next check instead
            log.warning("%s", error)

    async def _failed(self, spec: CertSpec, state: dict[str, Any], error: CertkeeperError, started: float) -> Outcome:
        if isinstance(error, ConfigError):
            # Nothing reached the CA: no rate limit to protect, so the next run may try at once.
            state["last_error"] = str(error)
        else:
            failures = int(state.get("failures", 0)) + 1
            state.update(failures=failures, last_failure=_now().isoformat(), last_error=str(error))
        if isinstance(error, CAError) and error.acme_type == "rateLimited":
            # Honour the CA's Retry-After; without one, an hour (Let's Encrypt's windows are hours long).
            wait = error.retry_after if error.retry_after is not None else 3600.0
            state["retry_after"] = (_now() + datetime.timedelta(seconds=wait)).isoformat()
        next_try = retry_at(state)
        if next_try:
            state["next_check"] = next_try.isoformat()
        try:
            await self._in_thread(self.store.save_state, spec.lineage, state)
        except (OSError, CertkeeperError) as save_error:
            log.warning("cannot record the failure for %s: %s", spec.lineage, save_error)
        return Outcome(spec, "failed", str(error), None, time.monotonic() - started, next_check=next_try)

    def _meta(self, spec: CertSpec, issued: IssuedCert, replaces: str | None) -> dict[str, Any]:
        info = issued.info
        return {
            "names": list(spec.names),
            "key_type": spec.key_type.value,
            "reuse_key": spec.reuse_key,
            "profile": spec.profile,
            "preferred_chain": spec.preferred_chain,
            "issuer": info.issuer,
            "serial": info.serial,
            "not_before": info.not_before.isoformat(),
            "not_after": info.not_after.isoformat(),
            "ari_id": info.ari_id,
            "fingerprint": info.fingerprint,
            "replaces": replaces,
            "directory_url": self.issuer.directory_url,
            "ca_bundle": self.issuer.ca_bundle,
            "email": self.issuer.email,
            "issued_at": _now().isoformat(),
        }
