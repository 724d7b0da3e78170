"""Rate-limit ledger cost (issue 11), as the ledger grows: what checking and recording one order costs, and
what the headroom metrics add to a scrape.

Orders: for N = 10, 100, 1,000, 10,000 orders already recorded in a host store's ``ratelimits.json``
(spread over the last week, Let's Encrypt's limits, 1 in 10 names under one registered domain), measured
per order: the gate (lock, read, check every limit, reserve, write) plus recording its certificate, median
of 21; and ``headroom`` for one certificate (what ``certkeeper status`` computes per row).

Metrics: for D = 10, 100, 1,000, 10,000 registered domains, each with 5 orders and their 5 certificates in
the last week under one account, the time to read the ledger and write the three ``certkeeper_ratelimit_*``
families (median of 11 scrapes), the text's size and its series. The cluster's ledger Secret costs one GET
more per scrape (not measured here: it is the same bytes over loopback).

Results go to bench/out/ratelimits.json and bench/out/ratelimit_metrics.json; markdown tables are printed.
"""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from certkeeper.ledger import FileBackend, Ledger
from certkeeper.observe.prom import Metrics
from certkeeper.observe.ratelimit_view import usage_reader
from certkeeper.ratelimits import LETSENCRYPT_LIMITS

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SIZES = (10, 100, 1_000, 10_000)
ORDER_ROUNDS = 21
SCRAPE_ROUNDS = 11
ACCOUNT = "https://ca.bench/acct/1"
WEEK_S = 7 * 24 * 3600.0
PER_DOMAIN = 5  # orders per registered domain in the metrics rows


def seed(root: Path, n: int, domain_of: Callable[[int], str], now: float) -> None:
    """``n`` orders and their certificates spread over the last week, order ``i`` under ``domain_of(i)``."""
    events: list[dict[str, Any]] = []
    for i in range(n):
        domain = domain_of(i)
        name = f"www{i}.{domain}"
        at = now - WEEK_S * (n - i) / (n + 1)
        events.append({"kind": "order", "at": at, "account": ACCOUNT, "names": [name], "domains": [domain],
                       "open": False, "id": f"o{i}"})  # fmt: skip
        events.append({"kind": "cert", "at": at + 5, "account": ACCOUNT, "names": [name], "domains": [domain]})
    (root / "ratelimits.json").write_text(json.dumps({"version": 1, "events": events}))


def orders(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seed(root, n, lambda i: "shared.example" if i % 10 == 0 else f"site{i}.example", time.time())
        ledger = Ledger(FileBackend(root), LETSENCRYPT_LIMITS)
        placed, rooms = [], []
        for r in range(ORDER_ROUNDS):
            names = [f"bench{r}.new{r}.example"]
            started = time.perf_counter()
            gate = ledger.gate(ACCOUNT, names, ari_renewal=False, same_names_renewal=False)
            with gate.placing(lambda: None):
                pass
            ledger.issued(ACCOUNT, names, gate.token)
            placed.append(time.perf_counter() - started)
            started = time.perf_counter()
            ledger.headroom(["www0.shared.example"], ACCOUNT)
            rooms.append(time.perf_counter() - started)
        size = (root / "ratelimits.json").stat().st_size
    return {"recorded": n, "order_ms": statistics.median(placed) * 1000, "headroom_ms": statistics.median(rooms) * 1000,
            "file_kib": size / 1024}  # fmt: skip


def scrapes(domains: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seed(root, domains * PER_DOMAIN, lambda i: f"site{i % domains}.example", time.time())
        metrics = Metrics()
        metrics.rate_limits(usage_reader(Ledger(FileBackend(root), ()), lambda: LETSENCRYPT_LIMITS))
        times = []
        for _ in range(SCRAPE_ROUNDS):
            started = time.perf_counter()
            text = metrics.text()
            times.append(time.perf_counter() - started)
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        size = (root / "ratelimits.json").stat().st_size
    return {"domains": domains, "events": domains * PER_DOMAIN * 2, "scrape_ms": statistics.median(times) * 1000,
            "text_kib": len(text) / 1024, "series": series, "ledger_kib": size / 1024}  # fmt: skip


def save(name: str, rows: list[dict[str, float]]) -> None:
    result = {"date": datetime.date.today().isoformat(), "machine": platform.machine(), "rows": rows}
    (OUT / name).write_text(json.dumps(result, indent=2))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [orders(n) for n in SIZES]
    save("ratelimits.json", rows)
    print("| orders recorded | gate + record one order | headroom of one certificate | ledger file |")
    print("| ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['recorded']:,} | {row['order_ms']:.1f} ms | {row['headroom_ms']:.1f} ms | "
              f"{row['file_kib']:.0f} KiB |")  # fmt: skip
    rows = [scrapes(n) for n in SIZES]
    save("ratelimit_metrics.json", rows)
    print()
    print("| registered domains | ledger events | ledger file | added to a scrape | series | text |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['domains']:,} | {row['events']:,} | {row['ledger_kib']:.0f} KiB | {row['scrape_ms']:.1f} ms | "
              f"{row['series']:,} | {row['text_kib']:.0f} KiB |")  # fmt: skip


if __name__ == "__main__":
    main()
