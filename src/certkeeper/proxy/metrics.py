"""``certkeeper proxy`` metrics on ``METRICS_BIND`` (HOST:PORT, off when unset): the certificate
generation served, when it was installed, pairs refused. nginx serves the traffic; this small server
runs on its own event loop in a daemon thread, beside the supervisor's synchronous loop."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from certkeeper.observe.prom import Metrics
from certkeeper.web import Answer, start_responder

if TYPE_CHECKING:
    from certkeeper.proxy.supervisor import Supervisor


def proxy_metrics(supervisor: Supervisor) -> Metrics:
    def expiry() -> float | None:
        serving = supervisor.live.serving
        return serving.not_after.timestamp() if serving is not None else None

    metrics = Metrics()
    metrics.gauges({
        "certkeeper_proxy_certificate_generation": (
            "Certificates installed since start (1: the first); a rotation adds one.",
            lambda: float(supervisor.generation)),
        "certkeeper_proxy_last_rotation_timestamp_seconds": (
            "When the certificate served was installed (alert on time() minus this for a stalled rotation).",
            lambda: supervisor.rotated_at),
        "certkeeper_proxy_certificate_expiration_timestamp_seconds": (
            "notAfter of the certificate served.", expiry),
        "certkeeper_proxy_refused_pairs_total": (
            "Certificate/key pairs refused (and reported) while the previous one kept being served.",
            lambda: float(supervisor.refusals)),
    })  # fmt: skip
    return metrics


def serve_metrics(supervisor: Supervisor, bind: str) -> int:
    """Start serving /metrics on ``bind``; returns the port (ConfigError if it cannot listen)."""
    metrics = proxy_metrics(supervisor)

    def route(path: str) -> Answer | None:
        return (200, metrics.text(), "text/plain; version=0.0.4; charset=utf-8") if path == "/metrics" else None

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="metrics", daemon=True).start()
    responder = asyncio.run_coroutine_threadsafe(start_responder([route], bind), loop).result()
    return responder.port
