"""source -> plan -> issue -> store -> rollout, for many certificates at once.

ACME calls are synchronous (certbot's library), so they run in a bounded thread pool with one
client per thread; the HTTP-01 responder runs on the event loop and is shared by all orders.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
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

from certkeeper.acme import Account, AccountStore, AcmeClient, ensure_account, register_again
from certkeeper.crypto import generate_key, key_type_of
from certkeeper.errors import CAError, CertkeeperError, ConfigError, NotRecorded
from certkeeper.fallback import Fallback, falls_back, waits_out
from certkeeper.ledger import Ledger
from certkeeper.model import CertInfo, IssuedCert, PendingOrder, RenewalState, RenewalWindow
from certkeeper.planner import plan, retry_at
from certkeeper.solvers.base import HTTP01, Solvers
from certkeeper.solvers.config import SolverSetup
from certkeeper.solvers.http01 import ChallengeStore
from certkeeper.spec import CertSpec, IssuerSpec
from certkeeper.stores.base import Lock, StoredCert, check_replacement
from certkeeper.stores.schema import meta_problem, to_meta
from certkeeper.web import Responder, default_routes, start_responder

log = logging.getLogger(__name__)
T = TypeVar("T")

# A certificate issued (and its order journaled) that the store refused: the write is retried this soon.
STORE_RETRY_S = (10, 30, 60, 300)

# Problems that count as failed authorizations (Let's Encrypt's "failed validations" limit).
VALIDATION_FAILURES = frozenset({"unauthorized", "connection", "dns", "incorrectResponse", "caa", "tls"})

# "deferred": due, but held back by backoff after failures (or the CA's Retry-After).
Status = Literal["issued", "renewed", "unchanged", "deferred", "failed"]
LOCK_POLL_S = 0.05  # a certificate another run holds is asked for again after this, doubling up to:
MAX_LOCK_POLL_S = 1.0


class CertStore(AccountStore, Protocol):
    def load(self, lineage: str) -> StoredCert | None: ...

    def save(self, lineage: str, issued: IssuedCert, meta: dict[str, Any]) -> bool: ...

    def load_state(self, lineage: str) -> object: ...  # raw: RenewalState.from_dict checks it

    def save_state(self, lineage: str, state: dict[str, Any]) -> None: ...

    def stage_state(self, lineage: str, state: dict[str, Any]) -> None:
        """The state to write with the next ``save`` (a store that writes them apart may ignore it)."""
        ...

    def location(self, lineage: str) -> str: ...

    # Crash recovery (stores.base.StoreDefaults has the no-op versions).
    def lock(self, lineage: str) -> Lock | None: ...  # None: another process holds it

    def tidy(self, lineage: str) -> list[str]: ...

    def check_writable(self, lineage: str) -> None: ...

    def save_pending(self, lineage: str, issued: IssuedCert) -> str: ...

    def load_pending(self, lineage: str) -> IssuedCert | None: ...

    def drop_pending(self, lineage: str) -> None: ...

    def rewrite_meta(self, lineage: str, meta: dict[str, Any]) -> None: ...


class OrderJournal(Protocol):
    """Where orders in flight are recorded (the controller: a Secret per certificate), so that a
    process killed mid-order is followed by a resumed order, not a second one."""

    # fresh: an order is about to be placed; a journal that answers from a cache asks its source instead.
    def load_order(self, lineage: str, *, fresh: bool = False) -> PendingOrder | None: ...

    def save_order(self, lineage: str, pending: PendingOrder) -> None: ...

    def clear_order(self, lineage: str) -> None: ...


@dataclass(frozen=True)
class Outcome:
    spec: CertSpec
    status: Status
    detail: str
    info: CertInfo | None
    seconds: float
    changed: bool = False
    next_check: datetime.datetime | None = None
    renew_at: datetime.datetime | None = None  # the planned renewal (ARI window or lifetime rule)

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


def _same_certificate(issued: IssuedCert, stored: StoredCert | None) -> bool:
    """The CA gave back the certificate the store holds already (a resumed order that was stored)."""
    return stored is not None and stored.info is not None and stored.info.serial == issued.info.serial


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
        solvers: SolverSetup | None = None,
        before_order: Callable[[CertSpec], None] | None = None,
        journal: OrderJournal | None = None,
        ledger: Ledger | None = None,
        rehearsal: Callable[[CertSpec, Solvers], None] | None = None,
        fallback: Fallback | None = None,
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
        # The configured solvers, around this HTTP-01 store; default: HTTP-01 alone.
        self.solver_setup = solvers or SolverSetup()
        self.solvers = self.solver_setup.build(self.challenges)
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
        self.ledger = ledger  # the rate-limit ledger: refuses an order a CA's limit would refuse
        # Called (in a worker thread) before an order for names the certificate does not hold yet: an
        # order at a staging CA that must succeed first (certkeeper.rehearsal).
        self.rehearsal = rehearsal
        self.fallback = fallback  # other CAs to order from when this one refuses (certkeeper.fallback)
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="acme")
        # lineage -> the worker thread talking to the CA for it (see _ordering)
        self._busy: dict[str, concurrent.futures.Future[IssuedCert]] = {}
        self._busy_lock = threading.Lock()
        # Told every outcome, on the event loop (certkeeper.observe: metrics, the status page).
        self.observers: list[Callable[[Outcome], None]] = []

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
        except (CertkeeperError, OSError) as failure:
            error = (
                failure
                if isinstance(failure, CertkeeperError)
                else CertkeeperError(f"cannot keep the ACME account in the store ({failure.strerror or failure})")
            )
            # No account (the CA is down, say): each certificate records it like any failure, so
            # the next runs back off instead of knocking at once.
            outcomes = [await self._without_account(s, error) for s in specs]
            for outcome in outcomes:
                self._tell(outcome)
                if on_done:
                    on_done(outcome)
            return outcomes

        async def one(spec: CertSpec) -> Outcome:
            outcome = await self._one(spec)
            self._tell(outcome)
            if on_done:
                on_done(outcome)
            return outcome

        return list(await asyncio.gather(*(one(s) for s in specs)))

    def _tell(self, outcome: Outcome) -> None:
        for observer in self.observers:
            try:
                observer(outcome)
            except Exception:  # an observer's bug must not stop certificates being kept
                log.exception("an outcome observer failed")

    async def _without_account(self, spec: CertSpec, error: CertkeeperError) -> Outcome:
        started = time.monotonic()
        state = await self._state(spec)
        held = retry_at(state)
        if held is not None and _now() < held and not self.force:
            detail = f"backing off after {state.failures} failure(s); last error: {state.last_error}"
            return Outcome(spec, "deferred", detail, None, 0.0, next_check=held)
        return await self._failed(spec, error, started)

    async def _state(self, spec: CertSpec) -> RenewalState:
        try:
            raw = await self._in_thread(self.store.load_state, spec.lineage)
        except (OSError, CertkeeperError) as error:
            log.warning("%s: cannot read the renewal state (%s); starting afresh", spec.lineage, error)
            return RenewalState()
        state, problems = RenewalState.from_dict(raw)
        if problems:
            log.info("%s: the renewal state is damaged (%s); it is rewritten", spec.lineage, "; ".join(problems))
        return state

    @property
    def account(self) -> Account | None:
        """The account in use, once loaded or registered."""
        return self._account

    async def ensure_account(self) -> Account:
        """The account this engine orders with: loaded or registered once, however many runs overlap."""
        async with self._account_lock:
            if self._account is None:
                self._account = await self._in_thread(self._load_or_register)
            return self._account

    async def _register_again(self) -> bool:
        """After the CA answered accountDoesNotExist (a CA that lost its database): register again with the
        same key, once however many orders noticed it. False if that is not possible."""
        forgotten = self._account
        if forgotten is None:
            return False
        async with self._account_lock:
            if self._account is forgotten:
                self._account = await self._in_thread(register_again, self.issuer, self.store, forgotten)
                self._local = threading.local()  # every worker thread's client signed as the forgotten account
        return True

    def _load_or_register(self) -> Account:
        ledger = self.ledger
        held = self.store.load_account(self.issuer.directory_url) if ledger is not None else None
        new = ledger is not None and (held is None or not held.url)  # no account, or only its key
        if ledger is not None and new:
            ledger.check_new_account()  # accounts per IP address
        account = ensure_account(self.issuer, self.store)
        if ledger is not None and new:
            ledger.account_registered(account.url)
        return account

    def _renewal_window(self, stored: StoredCert | None) -> RenewalWindow | None:
        if stored is None or stored.info is None or stored.problem:
            return None
        if stored.meta.get("issued_by_directory_url"):
            # A fallback CA issued it: this CA knows nothing of it, and ``replaces`` would name a
            # certificate it did not issue (refused). The lifetime rule decides; the order starts here.
            return None
        try:
            return self._client().renewal_window(stored.info)
        except CertkeeperError as error:
            log.warning("cannot ask the CA for a renewal window (%s); using the lifetime rule", error)
            return None

    async def _one(self, spec: CertSpec) -> Outcome:
        started = time.monotonic()
        lock: Lock | None = None
        try:
            lock = await self._lock(spec.lineage)
            state = await self._state(spec)
            try:
                return await self._locked(spec, state, started)
            except CAError as error:
                if error.acme_type != "accountDoesNotExist" or not await self._register_again():
                    raise
                return await self._locked(spec, state, started)  # once, with the account registered again
        except CertkeeperError as error:
            return await self._failed(spec, error, started)
        except OSError as error:
            why = error.strerror or str(error)
            problem = CertkeeperError(f"cannot use the store at {self.store.location(spec.lineage)} ({why})")
            return await self._failed(spec, problem, started)
        finally:
            if lock is not None:
                lock.release()

    async def _ordering(self, lineage: str, order: Callable[[], IssuedCert]) -> IssuedCert:
        """Run ``order`` in a worker thread; the certificate stays busy until that thread ends.

        A run cancelled while its thread talks to the CA (the controller's workers, stopped when the Lease
        is lost) leaves the thread going: the next run for the certificate waits for it (``_lock``), so it
        resumes what the thread recorded instead of placing a second order beside it."""
        future = self._executor.submit(order)
        with self._busy_lock:
            self._busy[lineage] = future

        def done(finished: concurrent.futures.Future[IssuedCert]) -> None:
            with self._busy_lock:
                if self._busy.get(lineage) is finished:
                    del self._busy[lineage]

        future.add_done_callback(done)
        return await asyncio.wrap_future(future)

    async def _lock(self, lineage: str) -> Lock:
        """One run at a time per certificate: a second run waits, then finds it done."""
        with self._busy_lock:
            busy = self._busy.get(lineage)
        if busy is not None and not busy.done():
            log.info("%s: waiting for the order an earlier attempt still has in flight", lineage)
            earlier = asyncio.wrap_future(busy)
            await asyncio.wait({earlier})
            if not earlier.cancelled():
                earlier.exception()  # its run was cancelled: how it ended is this run's to find out, not to raise
        pause = LOCK_POLL_S
        while (lock := await self._in_thread(self.store.lock, lineage)) is None:
            if pause == LOCK_POLL_S:
                log.info("%s: waiting for another certkeeper run working on it", lineage)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_LOCK_POLL_S)
        return lock

    async def _locked(
        self, spec: CertSpec, state: RenewalState, started: float, *, stale_seen: bool = False
    ) -> Outcome:
        lineage = spec.lineage
        for note in await self._in_thread(self.store.tidy, lineage):
            log.info("%s: %s", lineage, note)
        stored = await self._in_thread(self.store.load, lineage)
        usable = stored if stored is not None and stored.usable else None
        pending = await self._in_thread(self.store.load_pending, lineage)
        if pending is not None:
            try:
                check_replacement(pending, spec.names, usable)
            except CertkeeperError as refused:
                log.info("%s: dropping the certificate kept from an earlier run (%s)", lineage, refused)
                await self._in_thread(self.store.drop_pending, lineage)
                pending = None
        if pending is not None:
            # Issued at an earlier run that could not store it: store those bytes, order nothing.
            log.info("%s: storing the certificate issued at an earlier run", lineage)
            outcome = await self._store(spec, state, pending, usable, None, "issued at an earlier run", started)
            if self.journal is not None:  # the order that issued it, if recorded, is done
                await self._in_thread(self._clear_order, lineage)
            return outcome
        window = await self._in_thread(self._renewal_window, stored)
        decision = plan(spec, stored, _now(), window, state)
        journal, fresh = self.journal, decision.due or self.force
        in_flight = await self._in_thread(lambda: journal.load_order(lineage, fresh=fresh)) if journal else None
        if in_flight is not None and (in_flight.names != spec.names or not decision.due):
            # Stored after all (killed before clearing), or asked for other names since.
            await self._in_thread(self._clear_order, lineage)
            in_flight = None
        if not decision.due and not self.force:
            damage = meta_problem(stored.meta, stored.meta_problem) if stored is not None and stored.usable else None
            if stored is not None and stored.info and damage:
                log.warning("%s: %s; rewritten from this run's options", lineage, damage)
                meta = to_meta(spec, self.issuer, stored.info, None, _now(), self.solver_setup.recorded())
                await self._in_thread(self.store.rewrite_meta, lineage, meta)
            state = dataclasses.replace(state, next_check=decision.next_check, reason=decision.reason,
                                        renew_at=decision.renew_at or state.renew_at, names=spec.names,
                                        directory_url=self.issuer.directory_url)  # fmt: skip
            await self._in_thread(self.store.save_state, lineage, state.to_dict())
            info = stored.info if stored else None
            if decision.held_back:
                last = state.last_error
                detail = f"{decision.reason}" + (f"; last error: {last}" if last else "")
                return Outcome(spec, "deferred", detail, info, time.monotonic() - started,
                               next_check=decision.next_check)  # fmt: skip
            await self._pending_hook(spec, state, info)
            return Outcome(spec, "unchanged", decision.reason, info, time.monotonic() - started,
                           next_check=decision.next_check, renew_at=state.renew_at)  # fmt: skip
        # Prove the store takes the result before asking the CA for it (and set room aside to keep it).
        await self._in_thread(self.store.check_writable, lineage)
        if self.solvers.uses(spec.names, HTTP01):
            await self._ensure_responder()
        if in_flight is not None and key_type_of(in_flight.key_pem) == spec.key_type:
            key_pem = in_flight.key_pem
        elif spec.reuse_key and usable is not None and key_type_of(usable.key_pem) == spec.key_type:
            key_pem = usable.key_pem
        else:
            key_pem = await self._in_thread(generate_key, spec.key_type)
        resume_url = in_flight.url if in_flight is not None and in_flight.key_pem == key_pem else None
        if in_flight is not None and not in_flight.url and in_flight.key_pem == key_pem:
            resume_url = await self._in_thread(self._placed_before, spec, key_pem)
        recorded = [in_flight is not None]

        def placing() -> None:
            """Before each newOrder: the key and names recorded where the next process looks, or no order."""
            if self.journal is None:
                return
            try:
                self.journal.save_order(lineage, PendingOrder("", spec.names, key_pem))
            except NotRecorded as error:
                # The CA is not asked: an order whose record can be kept nowhere durable would be placed again
                # by whoever works on this certificate next (another replica, this process after a restart).
                raise CertkeeperError(
                    f"nothing ordered: the order could not be recorded first ({error})",
                    "it is tried again; the order is placed once its record can be written",
                ) from None
            except CertkeeperError as error:
                # Refused for good (a quota, a policy): no record will ever be possible, so waiting for one would
                # stop issuance; this process keeps the order in memory instead.
                log.warning("could not record the order for %s before placing it (%s): placing it anyway",
                            " ".join(spec.names), error)  # fmt: skip
                return
            recorded[0] = True

        def placed(url: str) -> None:
            if self.journal is None:
                return
            try:
                self.journal.save_order(lineage, PendingOrder(url, spec.names, key_pem))
            except CertkeeperError as error:
                # The CA has the order now: finishing it costs nothing more, abandoning it costs an order. The
                # key and names are recorded already, so another process finds the order in the CA's list.
                log.warning(
                    "could not record the order in flight for %s (%s): finishing it anyway (kept in memory)",
                    " ".join(spec.names),
                    error,
                )
                return
            recorded[0] = True

        replaces = usable.info.ari_id if usable is not None and usable.info and window is not None else None
        log.info("ordering %s (%s)", " ".join(spec.names), decision.reason if decision.due else "forced")
        held = usable.info.names if usable is not None and usable.info else ()
        if self.rehearsal is not None and not set(spec.names) <= set(held) and resume_url is None:
            # A name this certificate does not hold yet (a first issuance, a name added): staging first.
            await self._in_thread(self.rehearsal, spec, self.solvers)
        if self.before_order is not None:
            await self._in_thread(self.before_order, spec)
        gate = None
        if self.ledger is not None and self._account is not None:
            gate = self.ledger.gate(self._account.url, spec.names, ari_renewal=replaces is not None,
                                    same_names_renewal=sorted(held) == sorted(spec.names))  # fmt: skip
        issued_by: IssuerSpec | None = None
        try:
            try:
                issued = await self._ordering(
                    lineage,
                    lambda: self._client().order(
                        spec, key_pem, self.solvers, replaces=replaces, resume_url=resume_url, on_placed=placed,
                        gate=gate, on_placing=placing,
                    )
                )  # fmt: skip
            except CertkeeperError as refused:
                if self.fallback is None or not falls_back(refused):
                    raise
                if not self.force and waits_out(refused, usable.info if usable is not None else None, _now()):
                    raise  # the certificate held outlasts the refusal: the first CA again after it
                await self._in_thread(self._ledger_failure, spec, gate.token if gate else None, refused)
                gate = None
                issued, issued_by = await self._in_thread(self.fallback.order, spec, key_pem, self.solvers, refused)
                replaces = None  # the ARI id was the first CA's
            if resume_url is not None and _same_certificate(issued, usable) and not stale_seen:
                # The recorded order is the one whose certificate is stored (stopped after storing it, before
                # clearing its record): resuming it gives nothing new, so the record goes and a renewal due
                # is ordered now, not at the next check hours later.
                log.info("%s: the order %s was stored already: placing a new one", lineage, resume_url)
                await self._in_thread(self.store.drop_pending, lineage)
                await self._in_thread(self._clear_order, lineage)
                return await self._locked(spec, state, started, stale_seen=True)
            check_replacement(issued, spec.names, None if self.force else usable)
        except CertkeeperError as error:
            await self._in_thread(self._ledger_failure, spec, gate.token if gate else None, error)
            await self._in_thread(self.store.drop_pending, lineage)  # the room set aside is not needed
            raise
        try:
            kept = await self._in_thread(self.store.save_pending, lineage, issued)
        except OSError as error:
            kept = f"nowhere: keeping it failed too ({error.strerror})"
        if issued_by is None:
            await self._in_thread(self._ledger_issued, spec, gate.token if gate else None)
        reason = decision.reason if decision.due else "forced"
        try:
            outcome = await self._store(spec, state, issued, usable, replaces, reason, started, kept, issued_by)
        except CertkeeperError as error:
            if not recorded[0] and kept != "memory":  # memory: a long-running process retries from it
                raise
            return await self._not_stored(spec, error, started)
        if recorded[0]:
            await self._in_thread(self._clear_order, lineage)
        return outcome

    async def _store(
        self,
        spec: CertSpec,
        state: RenewalState,
        issued: IssuedCert,
        usable: StoredCert | None,
        replaces: str | None,
        reason: str,
        started: float,
        kept: str | None = None,
        issued_by: IssuerSpec | None = None,
    ) -> Outcome:
        lineage = spec.lineage
        owed = state.hook_pending  # a hook still owed from before this certificate
        try:
            if self.deploy_hook:
                # Before the swap: a run killed after it still runs the hook at the next run.
                state = dataclasses.replace(state, hook_pending=issued.info.fingerprint)
                await self._in_thread(self.store.save_state, lineage, state.to_dict())
            meta = to_meta(spec, self.issuer, issued.info, replaces, _now(), self.solver_setup.recorded())
            if issued_by is not None:  # renewal still starts at the first CA (meta's directory_url)
                meta["issued_by_directory_url"] = issued_by.directory_url
            # check_replacement already matched key and certificate: plan from the parsed facts. The state
            # after goes with the certificate (one write where the store can), and again below if not.
            after = plan(spec, StoredCert(issued.key_pem, issued.cert_pem, issued.chain_pem, issued.info), _now())
            final = RenewalState(next_check=after.next_check, renew_at=after.renew_at, reason=after.reason,
                                 last_success=_now(), hook_pending=state.hook_pending, names=spec.names,
                                 directory_url=self.issuer.directory_url)  # fmt: skip
            await self._in_thread(self.store.stage_state, lineage, final.to_dict())
            changed = await self._in_thread(self.store.save, lineage, issued, meta)
        except (OSError, CertkeeperError) as error:
            why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            where = kept or self.store.location(lineage)
            raise CertkeeperError(
                f"the certificate was issued (serial {issued.info.serial}) but could not be stored ({why})",
                f"it is kept in {where}: fix the store and run again; it is stored then without a new order"
                if not where.startswith("nowhere")
                else f"it was kept {where}; fix the store",
            ) from None
        await self._in_thread(self.store.drop_pending, lineage)
        if not changed:
            # The CA sent back the certificate already stored: consumers have nothing new to load.
            state = dataclasses.replace(state, hook_pending=owed)
        state = dataclasses.replace(final, hook_pending=state.hook_pending)
        await self._in_thread(self.store.save_state, lineage, state.to_dict())  # nothing to write if staged
        await self._pending_hook(spec, state, issued.info)
        status: Status = "renewed" if usable is not None else "issued"
        return Outcome(spec, status, reason, issued.info, time.monotonic() - started, changed=changed,
                       next_check=after.next_check, renew_at=after.renew_at)  # fmt: skip

    async def _pending_hook(self, spec: CertSpec, state: RenewalState, info: CertInfo | None) -> None:
        """Run the deploy hook owed for the stored certificate (until it succeeds), then forget it."""
        if not state.hook_pending or not self.deploy_hook:
            return
        if info is None or info.fingerprint != state.hook_pending:
            # The swap it was recorded for never happened: nothing new to deploy.
            await self._in_thread(self.store.save_state, spec.lineage,
                                  dataclasses.replace(state, hook_pending=None).to_dict())  # fmt: skip
            return
        await self._in_thread(run_deploy_hook, self.deploy_hook, self.store.location(spec.lineage), spec.names)
        await self._in_thread(self.store.save_state, spec.lineage,
                              dataclasses.replace(state, hook_pending=None).to_dict())  # fmt: skip

    async def _not_stored(self, spec: CertSpec, error: CertkeeperError, started: float) -> Outcome:
        """Issued and journaled, but the store refused it: the order still holds the certificate, so the
        next attempt fetches it again (no new order). Retry the write soon; it is no failure at the CA."""
        state = await self._state(spec)
        attempts = state.store_failures + 1
        wait = STORE_RETRY_S[min(attempts, len(STORE_RETRY_S)) - 1]
        next_try = _now() + datetime.timedelta(seconds=wait)
        state = dataclasses.replace(state, store_failures=attempts, last_error=str(error), next_check=next_try)
        try:
            await self._in_thread(self.store.save_state, spec.lineage, state.to_dict())
        except (OSError, CertkeeperError) as save_error:
            log.warning("cannot record the failure for %s: %s", spec.lineage, save_error)
        detail = f"issued, but not stored: {error}; the write is retried in {wait} s without a new order"
        return Outcome(spec, "failed", detail, None, time.monotonic() - started, next_check=next_try)

    def _ledger_issued(self, spec: CertSpec, token: str | None) -> None:
        """Count the certificate; a ledger that cannot be written (a full disk) must not cost the certificate."""
        if self.ledger is None or self._account is None:
            return
        try:
            self.ledger.issued(self._account.url, spec.names, token)
        except (OSError, CertkeeperError) as problem:
            # Info, not a warning: whatever kept the ledger from being written (a full disk) is what the
            # run's one error line reports, if it stops the certificate too.
            log.info("%s: cannot record the certificate in the rate-limit ledger: %s", spec.lineage, problem)

    def _ledger_failure(self, spec: CertSpec, token: str | None, error: CertkeeperError) -> None:
        if self.ledger is None or self._account is None:
            return
        try:
            if token is not None:
                self.ledger.closed(token)
            if isinstance(error, CAError) and error.acme_type in VALIDATION_FAILURES:
                self.ledger.failed_validation(self._account.url, spec.names)
        except (OSError, CertkeeperError) as problem:  # the order's own error is what the user must see
            log.warning("cannot record the failure in the rate-limit ledger: %s", problem)

    def _placed_before(self, spec: CertSpec, key_pem: bytes) -> str | None:
        """The order an earlier attempt recorded it was about to place (key and names, no URL): found in the
        CA's list of the account's orders, or None (never sent, or the CA keeps no list: one is placed)."""
        try:
            url = self._client().find_order(spec.names, key_pem)
        except CertkeeperError as error:
            log.info("%s: cannot look for the order an earlier attempt placed (%s)", spec.lineage, error)
            return None
        if url is None:
            log.info("%s: no order of an earlier attempt at the CA (never sent, or not listed): placing one",
                     spec.lineage)  # fmt: skip
        return url

    def _clear_order(self, lineage: str) -> None:
        if self.journal is None:
            return
        try:
            self.journal.clear_order(lineage)
        except CertkeeperError as error:  # a stale record is dropped at the next check instead
            log.warning("%s", error)

    async def _failed(self, spec: CertSpec, error: CertkeeperError, started: float) -> Outcome:
        state = await self._state(spec)  # as last recorded (a hook still owed, say), plus this failure
        if isinstance(error, ConfigError):
            # Nothing reached the CA: no rate limit to protect, so the next run may try at once.
            state = dataclasses.replace(state, last_error=str(error))
        else:
            state = dataclasses.replace(state, failures=state.failures + 1, last_failure=_now(), last_error=str(error))
        if isinstance(error, CAError) and error.acme_type == "rateLimited":
            # Honour the CA's Retry-After; without one, an hour (Let's Encrypt's windows are hours long).
            wait = error.retry_after if error.retry_after is not None else 3600.0
            state = dataclasses.replace(state, retry_after=_now() + datetime.timedelta(seconds=wait))
        elif isinstance(error, CAError) and error.retry_after is not None:
            # The CA said when to come back (a 503 with Retry-After): not before then.
            state = dataclasses.replace(state, retry_after=_now() + datetime.timedelta(seconds=error.retry_after))
        next_try = retry_at(state)
        if next_try:
            state = dataclasses.replace(state, next_check=next_try)
        state = dataclasses.replace(state, names=spec.names, directory_url=self.issuer.directory_url)
        detail = str(error)
        try:
            await self._in_thread(self.store.save_state, spec.lineage, state.to_dict())
        except (OSError, CertkeeperError) as save_error:
            why = save_error.strerror if isinstance(save_error, OSError) else str(save_error)
            detail += f" (and the failure could not be recorded: {why})"
        return Outcome(spec, "failed", detail, None, time.monotonic() - started, next_check=next_try)
