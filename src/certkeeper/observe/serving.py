"""What a long-running process (``run``, ``controller``) adds to its HTTP server: a tracker told of
every engine outcome, its metrics registry, and the / and /metrics routes reading both."""

from __future__ import annotations

from collections.abc import Callable

from certkeeper.observe.prom import Metrics
from certkeeper.observe.records import Tracker
from certkeeper.observe.routes import observe_routes
from certkeeper.spec import CertSpec
from certkeeper.web import Route

Gauges = dict[str, tuple[str, Callable[[], float | None]]]


class ProcessView:
    def __init__(self, label: Callable[[CertSpec], tuple[str, str, str]], gauges: Gauges | None = None) -> None:
        self.tracker = Tracker(label)
        self.metrics = Metrics()
        self.metrics.certificates(self.tracker.records, lambda: dict(self.tracker.outcomes))
        self.metrics.acme_client()
        if gauges:
            self.metrics.gauges(gauges)

    def routes(self, title: str, facts: Callable[[], dict[str, str]] = dict) -> list[Route]:
        return observe_routes(self.metrics, self.tracker.records, title, facts)
