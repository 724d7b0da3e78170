"""One target in, its next wake-up out: the one sequence every source shares.

A target comes from a Certificate (``certkeeper controller``) or from the environment (``certkeeper
run``, one synthetic target); either way the same steps run here: prove an account could be kept,
the engine's check (plan, order, store), repair keys that no longer hold the stored certificate, roll
out (or finish a rollout left pending), and the next wake-up. What each mode says about it (log lines,
Events, a Certificate's status) is its ``Reporter``; nothing here asks which mode it serves.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from typing import Protocol

from lightkube import Client

from certkeeper.engine import Engine, Outcome
from certkeeper.errors import CertkeeperError
from certkeeper.kube.rollout import RETRY_S, RolloutResult, roll
from certkeeper.kube.secret_store import SecretStore
from certkeeper.kube.sources import Target

MAX_WAKE_S = 12 * 3600.0


class Reporter(Protocol):
    """What one mode says about a target: logs, Events, status. Told in the order things happen."""

    log: logging.Logger

    async def outcome(self, outcome: Outcome) -> None: ...

    async def repaired(self, keys: list[str]) -> None: ...

    async def rolled(self, results: list[RolloutResult]) -> None: ...


def _backoff(delays: tuple[float, ...], failures: int) -> float:
    return delays[min(failures, len(delays)) - 1]


def _until(moment: datetime.datetime) -> float:
    return (moment - datetime.datetime.now(datetime.UTC)).total_seconds()


def when(moment: datetime.datetime | None) -> str:
    """A moment as the log lines show it ("-": none)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


class TargetSync:
    """The per-target sequence, and what it remembers per target between runs (failures in a row)."""

    def __init__(
        self,
        client: Client,
        *,
        rollout_timeout: float,
        failure_backoff: tuple[float, ...],
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.client = client
        self.rollout_timeout = rollout_timeout
        # After a failure the engine gave no time for (the CA unreachable, say): these, one per failure in a row.
        self.failure_backoff = failure_backoff
        self.stopping = stopping  # a long RC rollout stops between pods when this says so
        self._failures: dict[str, int] = {}
        self._roll_failures: dict[str, int] = {}

    def failed(self, key: str) -> float:
        """Count one more failure in a row for ``key``; seconds until it is tried again."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        return _backoff(self.failure_backoff, failures)

    async def sync(
        self, target: Target, engine: Engine, store: SecretStore, account: SecretStore, reporter: Reporter
    ) -> float:
        """Bring ``target`` up to date through ``store``; seconds until it wants to be looked at again."""
        outcome = await self._check(target, engine, account)
        await reporter.outcome(outcome)
        if outcome.ok and not outcome.changed and store.damaged_keys:
            await self._repair(store, reporter)
        roll_again = None
        if outcome.changed or (outcome.ok and store.rollout_pending):
            if not outcome.changed:
                reporter.log.info(
                    "the stored certificate's consumers were not restarted yet (interrupted?): doing it now"
                )
            roll_again = await self._roll(target, store, reporter)
        return self._next_wake(target.key, outcome, roll_again)

    async def _check(self, target: Target, engine: Engine, account: SecretStore) -> Outcome:
        if engine.account is None:
            try:
                await asyncio.to_thread(account.check_account_writable)
            except CertkeeperError as error:
                # Before the CA is asked: no account registered that could not be kept.
                return Outcome(target.spec, "failed", str(error), None, 0.0)
        return (await engine.run([target.spec]))[0]

    async def _repair(self, store: SecretStore, reporter: Reporter) -> None:
        """Keys that do not hold the good certificate (garbage in tls.crt beside a good proxycert, say) are
        rewritten from it: an Ingress reading tls.* works again, with no new order and no rollout."""
        try:
            repaired = await asyncio.to_thread(store.repair)
        except CertkeeperError as error:
            reporter.log.error("%s", error)
            return
        if repaired:
            await reporter.repaired(repaired)

    async def _roll(self, target: Target, store: SecretStore, reporter: Reporter) -> float | None:
        """Roll out; seconds until a failed rollout is tried again (None: done and recorded)."""
        results = await asyncio.to_thread(
            roll,
            self.client,
            target.namespace,
            target.rollout,
            store,
            timeout=self.rollout_timeout,
            stopping=self.stopping,
        )
        await reporter.rolled(results)
        if all(r.ok for r in results):
            self._roll_failures.pop(target.key, None)
            if not store.rollout_pending:
                return None  # written as rolled out already (nothing to restart)
            try:
                await asyncio.to_thread(store.mark_rolled)
            except CertkeeperError as error:
                reporter.log.warning("%s", error)
            return None
        # Still pending on the Secret: tried again (with backoff) and after a restart.
        failures = self._roll_failures.get(target.key, 0) + 1
        self._roll_failures[target.key] = failures
        delay = float(_backoff(RETRY_S, failures))
        again = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=delay)
        reporter.log.info("the rollout is tried again at %s", when(again))
        return delay

    def _next_wake(self, key: str, outcome: Outcome, roll_again: float | None) -> float:
        if outcome.ok or (outcome.status == "deferred" and outcome.next_check is not None):
            self._failures.pop(key, None)
            seconds = _until(outcome.next_check) if outcome.next_check is not None else MAX_WAKE_S
        else:
            backoff = self.failed(key)
            seconds = _until(outcome.next_check) if outcome.next_check is not None else backoff
        seconds = min(seconds, MAX_WAKE_S, roll_again if roll_again is not None else MAX_WAKE_S)
        return max(1.0, seconds)
