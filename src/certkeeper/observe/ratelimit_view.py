"""The rate-limit ledger as metrics: which limits apply where, and the ledger read at scrape time.

One read of the ledger (the store's ratelimits.json, or the cluster's Secret: one GET) per scrape; a
ledger that cannot be read leaves the families empty for that scrape (logged), never fails /metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

from certkeeper.errors import CertkeeperError
from certkeeper.ledger import Ledger
from certkeeper.ratelimits import Limit, Usage, usage

log = logging.getLogger(__name__)
UsageReader = Callable[[], tuple[list[Usage], float]]


def merged(limit_sets: Iterable[Sequence[Limit]]) -> tuple[Limit, ...]:
    """One limit per scope from several CAs' sets (the first CA's wins): the ledger is one record for all."""
    chosen: dict[str, Limit] = {}
    for limits in limit_sets:
        for limit in limits:
            chosen.setdefault(limit.scope, limit)
    return tuple(chosen.values())


def usage_reader(ledger: Ledger, limits: Callable[[], Sequence[Limit]]) -> UsageReader:
    """Rows for ``certkeeper_ratelimit_*``: ``limits`` is asked at each scrape (the controller's issuers
    change); with no limits (a CA without any) the ledger is not read at all."""

    def read() -> tuple[list[Usage], float]:
        now = time.time()
        wanted = limits()
        if not wanted:
            return [], now
        try:
            events = ledger.events()
        except (CertkeeperError, OSError) as error:
            log.warning("metrics: cannot read the rate-limit ledger (%s); its figures are left out", error)
            return [], now
        return usage(wanted, events, now), now

    return read
