"""A host's view: metrics and the status page read from the file store (``renew --metrics-file``,
``status --serve``). Each read is of the files as they are, so a separate renew process's results show."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from certkeeper.errors import ConfigError
from certkeeper.ledger import FileBackend, Ledger
from certkeeper.observe.prom import Metrics
from certkeeper.observe.ratelimit_view import merged, usage_reader
from certkeeper.observe.records import CertRecord, from_store
from certkeeper.observe.routes import observe_routes
from certkeeper.ratelimits import Limit, parse_limits
from certkeeper.stores.files import FileStore
from certkeeper.web import start_responder


def store_limits(files: FileStore, rate_limits: str) -> tuple[Limit, ...]:
    """The limits of the CAs this store has accounts at (``--rate-limits`` as renew reads it)."""
    return merged(parse_limits(rate_limits, url) for url in files.account_directories())


def store_metrics(files: FileStore, rate_limits: str = "auto") -> Metrics:
    metrics = Metrics()
    metrics.certificates(lambda: list(from_store(files)))
    metrics.acme_client()  # this process's requests to the CA (issue/renew: this run's)
    # The host's ledger (ratelimits.json), shared by every run on this host.
    metrics.rate_limits(usage_reader(Ledger(FileBackend(files.root), ()), lambda: store_limits(files, rate_limits)))
    read = ("When these figures were read from the store.", time.time)
    metrics.gauges({"certkeeper_textfile_timestamp_seconds": read})
    return metrics


def check_metrics_file(path: str) -> None:
    """Refuse a path the file cannot be written to, before anything is ordered."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"--metrics-file {path}: directory {directory} does not exist",
                          "create it, or point --metrics-file at node_exporter's textfile directory")  # fmt: skip
    if not path.endswith(".prom"):
        raise ConfigError(f"--metrics-file {path} does not end in .prom",
                          "node_exporter's textfile collector reads only *.prom files")  # fmt: skip
    if not os.access(directory, os.W_OK):
        raise ConfigError(f"--metrics-file {path}: cannot write in {directory}", "fix its permissions")


def write_metrics_file(files: FileStore, path: str, rate_limits: str = "auto") -> None:
    try:
        store_metrics(files, rate_limits).write_textfile(path)
    except OSError as error:
        raise ConfigError(f"cannot write --metrics-file {path} ({error.strerror})", "check the path") from None


def rows_of(files: FileStore) -> list[CertRecord]:
    return list(from_store(files))


async def serve(files: FileStore, bind: str, title: str) -> None:
    """Serve / and /metrics for the store until SIGTERM or SIGINT."""
    metrics = store_metrics(files)
    accounts = ", ".join(files.account_directories()) or "none yet"
    routes = observe_routes(
        metrics, lambda: rows_of(files), title, lambda: {"store": str(files.root), "accounts": accounts}
    )
    responder = await start_responder(routes, bind)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"certkeeper: serving the status page on http://{bind.rsplit(':', 1)[0]}:{responder.port}/", flush=True)
    try:
        await stop.wait()
    finally:
        await responder.stop()
