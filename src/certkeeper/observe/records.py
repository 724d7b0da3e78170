"""One row per certificate, from the engine's outcomes or from a host's store; ``verdict`` classifies outcomes."""

from __future__ import annotations

import datetime
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from certkeeper.model import RenewalState

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from certkeeper.engine import Outcome
    from certkeeper.spec import CertSpec
    from certkeeper.stores.files import FileStore

# What an outcome means for an operator. "held": due, but held back by backoff or the CA's Retry-After.
Verdict = Literal["ready", "failed", "held"]


def verdict(outcome: Outcome) -> Verdict:
    """The only place that classifies outcomes: metrics, page and counters all ask here."""
    if outcome.status == "failed":
        return "failed"
    if outcome.status == "deferred":
        return "held"
    return "ready"


def _ts(value: datetime.datetime | None) -> float | None:
    return value.timestamp() if value else None


def ca_host(directory_url: str | None) -> str:
    """The issuer label for a certificate ordered from a directory URL: its host (no path, no secrets)."""
    return (urlsplit(directory_url).hostname or "") if directory_url else ""


@dataclass(frozen=True, slots=True)
class CertRecord:
    """What an operator asks about one certificate. Times are Unix seconds (None: not known)."""

    name: str  # Secret or Certificate name; the lineage on a host
    namespace: str  # "" on a host
    issuer: str  # Issuer name, or the CA's host
    names: tuple[str, ...] = ()
    not_before: float | None = None
    not_after: float | None = None
    renew_at: float | None = None
    reason: str | None = None  # why renewal is then (ARI window, lifetime rule, backoff)
    next_check: float | None = None
    ready: bool | None = None  # None: not yet checked
    failures: int = 0  # consecutive
    last_failure: float | None = None
    last_error: str | None = None


class Tracker:
    """An engine observer keeping the latest record per certificate and counts of outcomes.

    Written from the event loop, read by scrapes on the same loop or other threads: one lock.
    """

    def __init__(self, label: Callable[[CertSpec], tuple[str, str, str]]) -> None:
        self._label = label  # spec -> (name, namespace, issuer) of the certificate's labels
        self._lock = threading.Lock()
        # Keyed by the spec's lineage: a string the caller holds anyway (no key tuple per certificate).
        self._records: dict[str, CertRecord] = {}
        self.outcomes: dict[str, int] = {"ready": 0, "failed": 0, "held": 0}

    def __call__(self, outcome: Outcome) -> None:
        name, namespace, issuer = self._label(outcome.spec)
        kind = verdict(outcome)
        now = datetime.datetime.now(datetime.UTC).timestamp()
        with self._lock:
            old = self._records.get(outcome.spec.lineage) or CertRecord(name, namespace, issuer)
            info = outcome.info
            new = replace(
                old,
                names=outcome.spec.names,  # shared with the spec, not copied
                next_check=_ts(outcome.next_check) or old.next_check,
                ready=kind == "ready",
                failures=old.failures + 1 if kind == "failed" else 0 if kind == "ready" else old.failures,
                last_failure=now if kind == "failed" else old.last_failure,
                last_error=outcome.detail if kind != "ready" else old.last_error,
            )
            if info is not None:
                new = replace(new, not_before=_ts(info.not_before), not_after=_ts(info.not_after))
            if kind == "ready":
                new = replace(new, renew_at=_ts(outcome.renew_at) or old.renew_at, reason=outcome.detail)
            self._records[outcome.spec.lineage] = new
            self.outcomes[kind] += 1

    def forget(self, lineage: str) -> None:
        """A certificate no longer kept (its resource deleted): its series go away."""
        with self._lock:
            self._records.pop(lineage, None)

    def records(self) -> list[CertRecord]:
        with self._lock:
            return list(self._records.values())


def from_store(files: FileStore) -> Iterator[CertRecord]:
    """Records for every lineage in a host's store, as the files say (renewal state included)."""
    now = datetime.datetime.now(datetime.UTC)
    for lineage in files.lineages():
        try:
            stored = files.load(lineage)
            state, _ = RenewalState.from_dict(files.load_state(lineage))
        except OSError:
            stored, state = None, RenewalState()
        info = stored.info if stored is not None and stored.usable else None
        meta = stored.meta if stored is not None else {}
        directory = meta.get("directory_url") if isinstance(meta.get("directory_url"), str) else state.directory_url
        yield CertRecord(
            name=lineage,
            namespace="",
            issuer=ca_host(directory),
            names=info.names if info else state.names,
            not_before=_ts(info.not_before) if info else None,
            not_after=_ts(info.not_after) if info else None,
            renew_at=_ts(state.renew_at),
            reason=state.reason,
            next_check=_ts(state.next_check),
            ready=info is not None and info.not_after > now and state.failures == 0,
            failures=state.failures,
            last_failure=_ts(state.last_failure),
            last_error=state.last_error if state.failures else None,
        )
