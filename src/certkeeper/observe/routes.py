"""``/`` (the status page) and ``/metrics`` for certkeeper's HTTP server (certkeeper.web)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from certkeeper.observe.page import render
from certkeeper.observe.prom import CONTENT_TYPE, Metrics
from certkeeper.observe.records import CertRecord
from certkeeper.web import Route

HTML = "text/html; charset=utf-8"


def observe_routes(
    metrics: Metrics,
    rows: Callable[[], Iterable[CertRecord]],
    title: str,
    facts: Callable[[], dict[str, str]] = dict,
) -> list[Route]:
    def answer(path: str) -> tuple[int, str, str] | None:
        if path == "/metrics":
            return 200, metrics.text(), CONTENT_TYPE
        if path in ("/", "/index.html"):
            return 200, render(rows(), title, facts()), HTML
        return None

    return [answer]
