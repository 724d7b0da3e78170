"""The rate-limit ledger: what certkeeper itself sent to each CA, so that it refuses an order before the CA would.

Every order placed, certificate issued, failed authorization, account registered and rateLimited
answer is recorded with its time. Before a new order, ``OrderGate`` checks the CA's limits
(``ratelimits``) against the record and reserves the order in ONE locked step: two runs (or two
worker threads) can never both take the last slot. Changes made by a process's threads at the same
time are written together (one read-modify-write for the lot, applied in arrival order), so the cost
of a busy ledger is paid once per batch, not once per order. The newOrder requests themselves leave
one at a time, each after a look at the CA refusals this process has heard, so after a rateLimited
answer not one more newOrder leaves this process before the CA's Retry-After has passed.

Where the record lives: ``FileBackend`` (``ratelimits.json``, 0600, in the store, under ``flock``)
for hosts; any ``Backend`` with a read-modify-write ``update`` serves the same role elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from certkeeper.errors import CAError, CertkeeperError
from certkeeper.psl import registered_domain
from certkeeper.ratelimits import DAY, Event, Limit, Planned, Refusal, check, check_account, headroom

log = logging.getLogger(__name__)
T = TypeVar("T")
FILE_NAME = "ratelimits.json"
KEEP_S = 7 * DAY + 3600  # the longest window (a week), and a margin
OPEN_ORDER_S = DAY  # an order left open by a killed run stops counting as a future certificate after this
_SHARED: dict[str, _Shared] = {}
_SEEN: dict[int, tuple[dict[str, Any], Event | None]] = {}  # id(entry) -> (entry, its Event): see _events
_SEEN_LIST: list[dict[str, Any]] | None = None  # the list those entries came from
_SHARED_GUARD = threading.Lock()


class Backend(Protocol):
    def read(self) -> list[dict[str, Any]]: ...

    def update(self, change: Callable[[list[dict[str, Any]]], T]) -> T:
        """Apply ``change`` to the records in place and save them, as one step no other writer interleaves."""
        ...

    @property
    def key(self) -> str: ...  # one process lock per ledger


class FileBackend:
    """``ratelimits.json`` in the store (0600, written atomically), changed under an exclusive flock."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / FILE_NAME

    @property
    def key(self) -> str:
        return str(self.path.resolve())

    def _read_bytes(self) -> bytes:
        # Not the store's read_file: its cap is for certificates; a busy week's ledger is larger, and a
        # ledger cut short would forget orders (and undercount).
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            return handle.read()

    def read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self._read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as error:
            log.warning("the rate-limit ledger %s is unreadable (%s); starting a new one", self.path, error)
            return []
        return [e for e in data.get("events", []) if isinstance(e, dict)] if isinstance(data, dict) else []

    def update(self, change: Callable[[list[dict[str, Any]]], T]) -> T:
        from certkeeper.stores.files import FileLock, StoreError, write_atomic

        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = FileLock(self.root / ".ratelimits.lock")
        except OSError as error:
            raise StoreError(f"cannot keep the rate-limit ledger in {self.root} ({error.strerror})",
                             "fix the store's permissions or free some space") from None  # fmt: skip
        try:
            events = self.read()
            result = change(events)
            document = {"version": 1, "events": events}
            write_atomic(self.path, json.dumps(document, separators=(",", ":")).encode(), 0o600)
            return result
        except OSError as error:
            raise StoreError(f"cannot write the rate-limit ledger {self.path} ({error.strerror})",
                             "fix the store's permissions or free some space") from None  # fmt: skip
        finally:
            lock.release()


def _event(raw: dict[str, Any]) -> Event | None:
    try:
        return Event(
            kind=raw["kind"],
            at=float(raw["at"]),
            account=str(raw.get("account", "")),
            names=tuple(raw.get("names", ())),
            domains=tuple(raw.get("domains", ())),
            until=float(raw.get("until", 0.0)),
            open=bool(raw.get("open", False)),
            reason=str(raw.get("reason", "")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _events(raw: list[dict[str, Any]], now: float) -> list[Event]:
    global _SEEN, _SEEN_LIST
    # The cluster's record stays in memory between writes (the same list, changed in place): its entries
    # were converted before, and only "open" ever changes. A list read afresh (a file, a GET) is converted
    # plainly: remembering it would cost more than it saves.
    again = raw is _SEEN_LIST
    seen = _SEEN if again else {}
    kept: dict[int, tuple[dict[str, Any], Event | None]] | None = {} if again else None
    events = []
    for item in raw:
        hit = seen.get(id(item)) if again else None
        if hit is not None and hit[0] is item and (hit[1] is None or hit[1].open == item.get("open", False)):
            event = hit[1]
        else:
            event = _event(item)
        if kept is not None:
            kept[id(item)] = (item, event)  # held with its id, so the id is not reused meanwhile
        if event is None:
            continue
        if event.open and event.at < now - OPEN_ORDER_S:
            event = event._replace(open=False)
        events.append(event)
    _SEEN_LIST, _SEEN = raw, kept if kept is not None else {}
    return events


def _prune(raw: list[dict[str, Any]], now: float) -> None:
    raw[:] = [e for e in raw if float(e.get("at", 0)) > now - KEEP_S or float(e.get("until", 0)) > now]


def domains_of(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted({registered_domain(n) for n in names}))


def _record(kind: str, account: str, names: Sequence[str], now: float, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": kind, "at": round(now, 3), "account": account}
    if names:
        entry["names"] = sorted(names)
        entry["domains"] = list(domains_of(names))
    entry.update(extra)
    return entry


class _Pending:
    """One thread's change waiting in a batch, and what came of it."""

    def __init__(self, change: Callable[[list[dict[str, Any]]], Any]) -> None:
        self.change = change
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class _Shared:
    """What every ``Ledger`` on one backend shares in this process: the batch of changes waiting to be
    written, the lock newOrder requests are sent under, and the CA refusals heard since start."""

    def __init__(self) -> None:
        self.send_lock = threading.Lock()
        self.holds: list[Event] = []
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._writing = False

    def update(self, backend: Backend, change: Callable[[list[dict[str, Any]]], T]) -> T:
        """``backend.update(change)``, made in one write with the changes other threads asked for meanwhile."""
        mine = _Pending(change)
        with self._cond:
            self._pending.append(mine)
            while self._writing and not mine.done:
                self._cond.wait()
            if not mine.done:
                self._writing = True
                batch, self._pending = self._pending, []
        if not mine.done:
            try:
                self._write(backend, batch)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
        if mine.error is not None:
            raise mine.error
        result: T = mine.result
        return result

    @staticmethod
    def _write(backend: Backend, batch: list[_Pending]) -> None:
        def apply_all(raw: list[dict[str, Any]]) -> list[tuple[Any, BaseException | None]]:
            # Made again from the start if the backend must re-read (another writer came first).
            outcomes: list[tuple[Any, BaseException | None]] = []
            for pending in batch:
                try:
                    outcomes.append((pending.change(raw), None))
                except Exception as error:  # that change's caller gets it; the others are still written
                    outcomes.append((None, error))
            return outcomes

        try:
            for pending, (result, error) in zip(batch, backend.update(apply_all), strict=True):
                pending.result, pending.error = result, error
        except BaseException as error:
            for pending in batch:
                pending.error = error
            raise
        finally:
            for pending in batch:
                pending.done = True

    def held(self, planned: Planned, now: float) -> Refusal | None:
        """A CA refusal this process heard that still holds the planned order."""
        self.holds[:] = [e for e in self.holds if e.until > now]
        return check((), self.holds, planned, now) if self.holds else None  # no limits: the refusals only


class RateLimited(CAError):
    """An order certkeeper did not send because it would exceed a limit (or the CA's Retry-After holds)."""

    def __init__(self, refusal: Refusal, now: float) -> None:
        head, _, fix = refusal.message().rpartition(": ")
        super().__init__(head, fix, acme_type="rateLimited")
        self.refusal = refusal
        self.retry_after = max(1.0, refusal.free_at.timestamp() - now)


class Ledger:
    def __init__(self, backend: Backend, limits: Sequence[Limit], clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.limits = tuple(limits)
        self.clock = clock
        with _SHARED_GUARD:
            self._shared = _SHARED.setdefault(backend.key, _Shared())

    def _update(self, change: Callable[[list[dict[str, Any]]], T]) -> T:
        return self._shared.update(self.backend, change)

    # -- reading -----------------------------------------------------------------------------------

    def events(self) -> list[Event]:
        return _events(self.backend.read(), self.clock())

    def headroom(self, names: Sequence[str], account: str | None = None) -> dict[str, int]:
        return headroom(self.limits, self.events(), names, domains_of(names), account, self.clock())

    # -- the order gate ------------------------------------------------------------------------------

    def gate(self, account: str, names: Sequence[str], *, ari_renewal: bool, same_names_renewal: bool) -> OrderGate:
        planned = Planned(account, tuple(sorted(names)), domains_of(names), ari_renewal, same_names_renewal)
        return OrderGate(self, planned)

    def _reserve(self, planned: Planned) -> str:
        token = uuid.uuid4().hex[:16]

        def change(raw: list[dict[str, Any]]) -> Refusal | None:
            now = self.clock()
            _prune(raw, now)
            refusal = check(self.limits, _events(raw, now), planned, now)
            if refusal is None:
                raw.append(_record("order", planned.account, planned.names, now, open=True, id=token))
            return refusal

        refusal = self._update(change)
        if refusal is not None:
            raise RateLimited(refusal, self.clock())
        return token

    def _settle(self, token: str, *, placed: bool, limited_for: float | None = None, keep: bool = True,
                account: str = "", reason: str = "", domains: tuple[str, ...] = ()) -> None:  # fmt: skip
        """After the newOrder request: the reservation becomes an order, or goes (the CA created none)."""

        def change(raw: list[dict[str, Any]]) -> None:
            now = self.clock()
            for i, entry in enumerate(raw):
                if entry.get("id") == token:
                    if not placed and not keep:
                        del raw[i]
                    elif not placed:
                        entry["open"] = False
                    break
            if limited_for is not None:
                entry = _record("limited", account, (), now, until=round(now + limited_for, 3), reason=reason)
                if domains:
                    entry["domains"] = list(domains)
                raw.append(entry)

        self._update(change)

    def limited(self, account: str, seconds: float, reason: str = "rateLimited") -> None:
        """The CA answered rateLimited (or busy) with this Retry-After: no order to it before then."""
        now = self.clock()
        self._shared.holds.append(Event("limited", now, account, until=now + seconds, reason=reason))
        entry = _record("limited", account, (), now, until=now + seconds, reason=reason)
        self._update(lambda raw: raw.append(entry))

    # -- outcomes ------------------------------------------------------------------------------------

    def issued(self, account: str, names: Sequence[str], token: str | None) -> None:
        """A certificate was issued: its order (if this run placed it) closes and the certificate counts."""

        def change(raw: list[dict[str, Any]]) -> None:
            now = self.clock()
            for entry in raw:
                if token is not None and entry.get("id") == token:
                    entry["open"] = False
            raw.append(_record("cert", account, names, now))

        self._update(change)

    def closed(self, token: str) -> None:
        """The order placed under ``token`` ended without a certificate."""
        self._settle(token, placed=False)

    def failed_validation(self, account: str, names: Sequence[str]) -> None:
        now = self.clock()
        self._update(lambda raw: raw.append(_record("failed", account, names, now)))

    def check_new_account(self) -> None:
        now = self.clock()
        refusal = check_account(self.limits, self.events(), now)
        if refusal is not None:
            raise RateLimited(refusal, now)

    def account_registered(self, account: str) -> None:
        now = self.clock()
        self._update(lambda raw: raw.append(_record("account", account, (), now)))


class OrderGate:
    """Reserve (locked across processes, batched with other threads' changes), send the newOrder (one at a
    time per ledger in this process, after a look at the refusals heard meanwhile), settle.

    ``AcmeClient`` calls ``placing()`` around its newOrder request; the engine reads ``token`` after.
    """

    def __init__(self, ledger: Ledger, planned: Planned) -> None:
        self.ledger = ledger
        self.planned = planned
        self.token: str | None = None

    @contextlib.contextmanager
    def placing(self, retry_after: Callable[[], float | None]) -> Iterator[None]:
        ledger = self.ledger
        token = ledger._reserve(self.planned)  # with other threads' changes, in one write
        hold: dict[str, Any] = {}
        keep = True
        try:
            with ledger._shared.send_lock:
                refusal = ledger._shared.held(self.planned, ledger.clock())
                if refusal is not None:  # heard while this order waited its turn: it is not sent
                    keep = False
                    raise RateLimited(refusal, ledger.clock())
                try:
                    yield
                except CAError as error:
                    # Transport failure: the CA may have created the order; it stays counted, closed.
                    hold = self._hold(error, retry_after)
                    raise
                except Exception as error:
                    # The CA answered with a problem: it created no order.
                    hold, keep = self._hold(error, retry_after), False
                    raise
                finally:
                    if hold.get("limited_for") is not None:  # before the next newOrder leaves this process
                        ledger._shared.holds.append(self._held_event(hold))
        except BaseException:
            self._settle(token, hold, keep)
            raise
        self.token = token

    def _held_event(self, hold: dict[str, Any]) -> Event:
        now = self.ledger.clock()
        return Event("limited", now, self.planned.account, (), tuple(hold.get("domains", ())),
                     now + hold["limited_for"], reason=hold["reason"])  # fmt: skip

    def _settle(self, token: str, hold: dict[str, Any], keep: bool) -> None:
        try:
            self.ledger._settle(token, placed=False, keep=keep, account=self.planned.account, **hold)
        except (OSError, CertkeeperError) as problem:  # the CA's answer is what the user must see
            log.warning("cannot record the CA's answer in the rate-limit ledger: %s", problem)

    def _hold(self, error: Exception, retry_after: Callable[[], float | None]) -> dict[str, Any]:
        """How long the CA's answer holds further orders, and what it was (for the refusal's message)."""
        code = getattr(error, "code", None) or getattr(error, "acme_type", None)
        hinted = retry_after()
        if code == "rateLimited":
            # Let's Encrypt says which limit: "... from this account ..." holds every order of the account;
            # a limit per registered domain, name set or hostname holds only orders sharing its domains.
            detail = str(getattr(error, "detail", None) or getattr(error, "problem", None) or "")
            return {"limited_for": hinted if hinted is not None else 3600.0, "reason": "rateLimited",
                    "domains": () if "account" in detail else self.planned.domains}  # fmt: skip
        # A CA down for a while (503) with a Retry-After: its order endpoint is held as long.
        return {"limited_for": hinted, "reason": f"{code or 'an error'} with a Retry-After"}
