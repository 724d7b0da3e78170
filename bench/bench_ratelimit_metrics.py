"""What the rate-limit headroom metrics add to a scrape (issue 11): ``certkeeper_ratelimit_*`` written from
a host's ledger with D registered domains in it.

For D = 10, 100, 1,000, 10,000 registered domains, each with 5 orders and their 5 certificates in the
last week under one account (10 events a domain), Let's Encrypt's limits: the time to read the ledger and
write the three families (median of 11 scrapes), the text's size and its series. The cluster's ledger
Secret costs one GET more per scrape (not measured here: it is the same bytes over loopback).

Results go to bench/out/ratelimit_metrics.json; a markdown table is printed.
"""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from certkeeper.ledger import FileBackend, Ledger
from certkeeper.observe.prom import Metrics
from certkeeper.observe.ratelimit_view import usage_reader
from certkeeper.ratelimits import LETSENCRYPT_LIMITS

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SIZES = (10, 100, 1_000, 10_000)
ROUNDS = 11
ACCOUNT = "https://ca.bench/acct/1"
WEEK_S = 7 * 24 * 3600.0
PER_DOMAIN = 5


def seed(root: Path, domains: int, now: float) -> None:
    events: list[dict[str, Any]] = []
    total = domains * PER_DOMAIN
    for i in range(total):
        domain = f"site{i % domains}.example"
        name = f"www{i}.{domain}"
        at = now - WEEK_S * (total - i) / (total + 1)
        events.append({"kind": "order", "at": at, "account": ACCOUNT, "names": [name], "domains": [domain],
                       "open": False, "id": f"o{i}"})  # fmt: skip
        events.append({"kind": "cert", "at": at + 5, "account": ACCOUNT, "names": [name], "domains": [domain]})
    (root / "ratelimits.json").write_text(json.dumps({"version": 1, "events": events}))


def one(domains: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seed(root, domains, time.time())
        metrics = Metrics()
        metrics.rate_limits(usage_reader(Ledger(FileBackend(root), ()), lambda: LETSENCRYPT_LIMITS))
        times = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            text = metrics.text()
            times.append(time.perf_counter() - started)
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        size = (root / "ratelimits.json").stat().st_size
    return {"domains": domains, "events": domains * PER_DOMAIN * 2, "scrape_ms": statistics.median(times) * 1000,
            "text_kib": len(text) / 1024, "series": series, "ledger_kib": size / 1024}  # fmt: skip


def main() -> None:
    rows = [one(n) for n in SIZES]
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.date.today().isoformat(), "machine": platform.machine(), "rows": rows}
    (OUT / "ratelimit_metrics.json").write_text(json.dumps(result, indent=2))
    print("| registered domains | ledger events | ledger file | added to a scrape | series | text |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['domains']:,} | {row['events']:,} | {row['ledger_kib']:.0f} KiB | {row['scrape_ms']:.1f} ms | "
              f"{row['series']:,} | {row['text_kib']:.0f} KiB |")  # fmt: skip


if __name__ == "__main__":
    main()
