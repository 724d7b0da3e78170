"""The Prometheus adapter: the only module importing prometheus_client.

Certificates' families are written at scrape time from the tracker's rows, instead of one labelled
child object per certificate and metric kept forever: 10,000 certificates then cost their rows, not
~80,000 long-lived gauge objects (see cert_text for why they bypass the library's writer).
Names follow cert-manager's (certmanager_ -> certkeeper_) so its dashboards port by a prefix change.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from certkeeper.observe.acme_stats import BUCKETS, STATS
from certkeeper.observe.records import CertRecord
from certkeeper.ratelimits import Usage

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
LABELS = ["name", "namespace", "issuer_name"]
CONDITIONS = ("True", "False", "Unknown")


# name, type, help: the per-certificate families, written by ``cert_text``.
CERT_FAMILIES = (
    ("certkeeper_certificate_expiration_timestamp_seconds", "gauge",
     "The date after which the certificate expires (its notAfter)."),
    ("certkeeper_certificate_not_before_timestamp_seconds", "gauge",
     "The date before which the certificate is not valid (its notBefore)."),
    ("certkeeper_certificate_renewal_timestamp_seconds", "gauge",
     "When the certificate is planned to be renewed (ARI window or lifetime rule)."),
    ("certkeeper_certificate_ready_status", "gauge",
     "Whether the certificate is valid and up to date: 1 for its condition (True, False, Unknown)."),
    ("certkeeper_certificate_consecutive_failures", "gauge",
     "Failed attempts to issue or renew since the last success."),
    ("certkeeper_certificate_last_failure_timestamp_seconds", "gauge",
     "When issuing or renewing last failed."),
)  # fmt: skip


def _label(value: str) -> str:
    if "\\" not in value and '"' not in value and "\n" not in value:
        return value  # the usual name: nothing to escape, nothing copied
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def cert_text(rows: Iterable[CertRecord]) -> str:
    """The per-certificate families in the 0.0.4 text format, written directly.

    prometheus_client's generic writer validates and escapes every label of every sample (about
    20 µs a sample: 1.6 s for 10,000 certificates' 80,000 samples); here each row's labels are
    escaped once and its lines are one f-string each.
    """
    # One growing buffer per family: each line is written and freed at once, so a scrape leaves no
    # heap of small strings behind (80,000 list items would keep ~1 MB of arenas after it).
    buffers = [io.StringIO() for _ in CERT_FAMILIES]
    for (name, kind, help_text), buffer in zip(CERT_FAMILIES, buffers, strict=True):
        buffer.write(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
    expiry, not_before, renewal, ready, failures, last_failure = (b.write for b in buffers)
    n_expiry, n_not_before, n_renewal, n_ready, n_failures, n_last_failure = (f[0] for f in CERT_FAMILIES)
    for row in rows:
        key = f'name="{_label(row.name)}",namespace="{_label(row.namespace)}",issuer_name="{_label(row.issuer)}"'
        if row.not_after is not None:
            expiry(f"{n_expiry}{{{key}}} {row.not_after!r}\n")
        if row.not_before is not None:
            not_before(f"{n_not_before}{{{key}}} {row.not_before!r}\n")
        if row.renew_at is not None:
            renewal(f"{n_renewal}{{{key}}} {row.renew_at!r}\n")
        state = "Unknown" if row.ready is None else "True" if row.ready else "False"
        for condition in CONDITIONS:
            ready(f'{n_ready}{{{key},condition="{condition}"}} {1.0 if condition == state else 0.0}\n')
        failures(f"{n_failures}{{{key}}} {row.failures}.0\n")
        if row.last_failure is not None:
            last_failure(f"{n_last_failure}{{{key}}} {row.last_failure!r}\n")
    return "".join(b.getvalue() for b in buffers)


class CountsCollector(Collector):
    def __init__(self, outcomes: Callable[[], dict[str, int]]) -> None:
        self._outcomes = outcomes

    def collect(self) -> Iterator[Metric]:
        counts = CounterMetricFamily("certkeeper_certificate_checks",
                                     "Checks of a certificate by verdict: ready, failed, or held back "
                                     "(due, but waiting for backoff or the CA's Retry-After).",
                                     labels=["verdict"])  # fmt: skip
        for kind, count in sorted(self._outcomes().items()):
            counts.add_metric([kind], count)
        yield counts


def _per_host(name: str, documentation: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["host"])
    for host, count in sorted(counts.items()):
        family.add_metric([host], count)
    return family


class AcmeCollector(Collector):
    """The ACME client's requests (certkeeper.observe.acme_stats), read at scrape time."""

    def collect(self) -> Iterator[Metric]:
        requests, bad_nonce, retry_after = STATS.snapshot()
        labels = ["host", "endpoint", "method", "status"]
        durations = HistogramMetricFamily("certkeeper_acme_client_request_duration_seconds",
                                          "Requests to the ACME CA by host, endpoint, method and status "
                                          "(status 'error': no answer).", labels=labels)  # fmt: skip
        for key, row in sorted(requests.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip(BUCKETS, row, strict=False):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", row[-2]))
            durations.add_metric(list(key), buckets, row[-1])
        yield durations
        yield _per_host("certkeeper_acme_client_bad_nonce_retries",
                        "Requests sent again because the CA rejected the nonce.", bad_nonce)  # fmt: skip
        yield _per_host("certkeeper_acme_client_retry_after_responses",
                        "Answers from the CA carrying Retry-After (honoured before the next try).",
                        retry_after)  # fmt: skip


class RateLimitCollector(Collector):
    """The CA's limits against the rate-limit ledger, read at scrape time: for each limit and subject (an
    account, a registered domain with events in the window, this host) what is allowed, what is left and
    when one more frees. ``read`` gives the rows and the time they were computed at (``ratelimits.usage``)."""

    FAMILIES = (
        ("certkeeper_ratelimit_limit", "What the CA allows per window for this limit and subject."),
        ("certkeeper_ratelimit_remaining", "How many more fit now under this limit for this subject (the ledger's "
                                           "count of what certkeeper sent; 0 when full)."),
        ("certkeeper_ratelimit_reset_seconds", "Seconds until the headroom grows by one (the oldest counted event "
                                               "leaves the window); 0 with nothing counted."),
    )  # fmt: skip

    def __init__(self, read: Callable[[], tuple[list[Usage], float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        rows, now = self._read()
        if not rows:
            return  # a CA without limits (or an unreadable ledger): no empty families either
        families = [GaugeMetricFamily(name, help_text) for name, help_text in self.FAMILIES]
        for row in rows:
            labels = {"limit": row.limit} | ({row.label: row.subject} if row.label else {})
            values = (row.allowed, max(0, row.allowed - row.used), max(0.0, round(row.reset_at - now, 3)))
            for family, figure in zip(families, values, strict=True):
                family.add_sample(family.name, labels, float(figure))
        yield from families


class ValuesCollector(Collector):
    """Single values read at scrape time (queue depth, leader, proxy generation...): name -> (help, read).
    A name ending in _total is a counter (the suffix is the library's to add)."""

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float | None]]]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        for name, (help_text, read) in self._gauges.items():
            value = read()
            if value is None:
                continue
            if name.endswith("_total"):
                yield CounterMetricFamily(name.removesuffix("_total"), help_text, value=value)
            else:
                yield GaugeMetricFamily(name, help_text, value=value)


class Metrics:
    """One registry per process, holding the collectors a command registers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._rows: Callable[[], Iterable[CertRecord]] = tuple

    def certificates(
        self, rows: Callable[[], Iterable[CertRecord]], outcomes: Callable[[], dict[str, int]] | None = None
    ) -> None:
        self._rows = rows
        if outcomes is not None:
            self.registry.register(CountsCollector(outcomes))

    def acme_client(self) -> None:
        self.registry.register(AcmeCollector())

    def rate_limits(self, read: Callable[[], tuple[list[Usage], float]]) -> None:
        self.registry.register(RateLimitCollector(read))

    def gauges(self, gauges: dict[str, tuple[str, Callable[[], float | None]]]) -> None:
        self.registry.register(ValuesCollector(gauges))

    def text(self) -> str:
        """The Prometheus text format, version 0.0.4."""
        return generate_latest(self.registry).decode() + cert_text(self._rows())

    def write_textfile(self, path: str) -> None:
        """For node_exporter's textfile collector: written beside ``path`` then renamed over it, so the
        collector never reads half a file (its temporary name does not end in .prom: never collected)."""
        data = self.text().encode()
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".certkeeper-metrics.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
