"""Metrics scrape and status page at growing N. Writes bench/out/observe.json.

- scrape: N certificates' rows in the tracker (as ``certkeeper run``/``controller`` hold them), the
  time to produce /metrics (median of 7) and the RSS the rows plus the scrapes add to a process that
  already holds the N certificates' specs and names (each N in a fresh process, so allocations of one
  N do not hide another's);
- page: the status page for N certificates loaded in headless Chromium, navigation to load event
  (median of 5), and its size.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "observe.json"
SCRAPE_N = (10, 100, 1_000, 10_000)
PAGE_N = (10, 100, 1_000, 10_000)


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def specs(n: int) -> tuple[list[object], dict[str, tuple[str, str, str]]]:
    """What a process keeping n certificates holds anyway: their specs and resource names."""
    from certkeeper.spec import CertSpec

    made = [CertSpec((f"service-{i}.apps.example.com",), store_key=f"default/certs-{i}") for i in range(n)]
    return list(made), {s.lineage: (f"certs-{i}", "default", "letsencrypt") for i, s in enumerate(made)}


def fill(n: int, held: tuple[list[object], dict[str, tuple[str, str, str]]] | None = None) -> object:
    """A tracker told of n certificates, as the engine would: an outcome per certificate."""
    from certkeeper.engine import Outcome
    from certkeeper.model import CertInfo
    from certkeeper.observe.records import Tracker
    from certkeeper.spec import CertSpec

    made, labels = held or specs(n)
    tracker = Tracker(lambda spec: labels[spec.lineage])
    now = dt.datetime.now(dt.UTC)
    for i, spec in enumerate(made):
        assert isinstance(spec, CertSpec)
        info = CertInfo(spec.names, now - dt.timedelta(days=i % 60), now + dt.timedelta(days=90 - i % 60),
                        f"{i:032x}", "CN=Example R1", None, f"{i:064x}")  # fmt: skip
        tracker(Outcome(spec, "unchanged", "still good", info, 0.01, next_check=now + dt.timedelta(hours=12),
                        renew_at=now + dt.timedelta(days=60 - i % 60)))  # fmt: skip
    return tracker


def scrape_child(n: int) -> dict[str, float]:
    from certkeeper.observe.prom import Metrics
    from certkeeper.observe.records import Tracker

    # Imports and the code paths warmed with one row, then the baseline.
    warm = fill(1)
    assert isinstance(warm, Tracker)
    Metrics().certificates(warm.records)
    held = specs(n)
    gc.collect()
    before = rss()
    tracker = fill(n, held)
    assert isinstance(tracker, Tracker)
    metrics = Metrics()
    metrics.certificates(tracker.records, lambda: tracker.outcomes)
    times = []
    for _ in range(7):
        started = time.perf_counter()
        text = metrics.text()
        times.append(time.perf_counter() - started)
    del text
    gc.collect()
    grown = rss() - before
    return {"n": n, "scrape_ms": median(times) * 1000, "rss_mb": grown / 1e6,
            "http_scrape_ms": http_scrape(metrics, tracker) * 1000, "body_mb": len(metrics.text()) / 1e6}  # fmt: skip


def http_scrape(metrics: object, tracker: object) -> float:
    """GET /metrics from certkeeper's HTTP server (on its own loop in a thread), median of 7."""
    import asyncio
    import threading
    import urllib.request

    from certkeeper.observe.prom import Metrics
    from certkeeper.observe.records import Tracker
    from certkeeper.observe.routes import observe_routes
    from certkeeper.web import start_responder

    assert isinstance(metrics, Metrics) and isinstance(tracker, Tracker)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    routes = observe_routes(metrics, tracker.records, "bench")
    responder = asyncio.run_coroutine_threadsafe(start_responder(routes, "127.0.0.1:0"), loop).result()
    times = []
    for _ in range(7):
        started = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{responder.port}/metrics") as answer:
            answer.read()
        times.append(time.perf_counter() - started)
    asyncio.run_coroutine_threadsafe(responder.stop(), loop).result()
    return median(times)


def scrape_figures() -> list[dict[str, float]]:
    figures = []
    for n in SCRAPE_N:
        out = subprocess.run([sys.executable, __file__, "scrape", str(n)], capture_output=True, text=True, check=True)
        figures.append(json.loads(out.stdout))
        f = figures[-1]
        print(f"scrape  N={n:>6}: {f['scrape_ms']:7.1f} ms in process, {f['http_scrape_ms']:7.1f} ms over HTTP "
              f"({f['body_mb']:.2f} MB), +{f['rss_mb']:.2f} MB RSS", flush=True)  # fmt: skip
    return figures


def page_figures() -> list[dict[str, float]]:
    from certkeeper.observe.page import render
    from certkeeper.observe.records import Tracker
    from testbench.chromium import Browser

    figures = []
    with Browser() as browser, tempfile.TemporaryDirectory() as tmp:
        for n in PAGE_N:
            tracker = fill(n)
            assert isinstance(tracker, Tracker)
            page = Path(tmp) / f"status-{n}.html"
            started = time.perf_counter()
            page.write_text(render(tracker.records(), "certkeeper: bench"))
            render_s = time.perf_counter() - started
            loads = [browser.load(page.as_uri(), timeout=120).seconds for _ in range(5)]
            figures.append({"n": n, "render_ms": render_s * 1000, "chromium_load_s": median(loads),
                            "kb": page.stat().st_size / 1000})  # fmt: skip
            f = figures[-1]
            print(f"page    N={n:>6}: rendered in {f['render_ms']:.0f} ms, {f['kb']:.0f} kB, "
                  f"Chromium load {f['chromium_load_s']:.3f} s", flush=True)  # fmt: skip
    return figures


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "scrape":
        print(json.dumps(scrape_child(int(sys.argv[2]))))
        return
    load = os.getloadavg()[0]
    result = {"date": dt.date.today().isoformat(), "machine": platform.machine(), "load_before": load,
              "scrape": scrape_figures(), "page": page_figures()}  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT} (load average before: {load:.1f})")


if __name__ == "__main__":
    main()
