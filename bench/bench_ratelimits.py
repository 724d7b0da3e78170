"""Rate-limit ledger cost (issue 11): what checking and recording one order costs as the ledger grows.

For N = 10, 100, 1,000, 10,000 orders already recorded in a host store's ``ratelimits.json`` (spread over
the last week, Let's Encrypt's limits, 1 in 10 names under one registered domain), measured per order:
the gate (lock, read, check every limit, reserve, write) plus recording its certificate, median of 21;
and ``headroom`` for one certificate (what ``certkeeper status`` computes per row).

Results go to bench/out/ratelimits.json; a markdown table is printed.
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
from certkeeper.ratelimits import LETSENCRYPT_LIMITS

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SIZES = (10, 100, 1_000, 10_000)
ROUNDS = 21
ACCOUNT = "https://ca.bench/acct/1"
WEEK_S = 7 * 24 * 3600.0


def seed(root: Path, n: int, now: float) -> None:
    events: list[dict[str, Any]] = []
    for i in range(n):
        domain = "shared.example" if i % 10 == 0 else f"site{i}.example"
        name = f"www{i}.{domain}"
        at = now - WEEK_S * (n - i) / (n + 1)
        events.append({"kind": "order", "at": at, "account": ACCOUNT, "names": [name], "domains": [domain],
                       "open": False, "id": f"o{i}"})  # fmt: skip
        events.append({"kind": "cert", "at": at + 5, "account": ACCOUNT, "names": [name], "domains": [domain]})
    (root / "ratelimits.json").write_text(json.dumps({"version": 1, "events": events}))


def one(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        now = time.time()
        seed(root, n, now)
        ledger = Ledger(FileBackend(root), LETSENCRYPT_LIMITS)
        orders, rooms = [], []
        for r in range(ROUNDS):
            names = [f"bench{r}.new{r}.example"]
            started = time.perf_counter()
            gate = ledger.gate(ACCOUNT, names, ari_renewal=False, same_names_renewal=False)
            with gate.placing(lambda: None):
                pass
            ledger.issued(ACCOUNT, names, gate.token)
            orders.append(time.perf_counter() - started)
            started = time.perf_counter()
            ledger.headroom(["www0.shared.example"], ACCOUNT)
            rooms.append(time.perf_counter() - started)
        size = (root / "ratelimits.json").stat().st_size
    return {"recorded": n, "order_ms": statistics.median(orders) * 1000, "headroom_ms": statistics.median(rooms) * 1000,
            "file_kib": size / 1024}  # fmt: skip


def main() -> None:
    rows = [one(n) for n in SIZES]
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.date.today().isoformat(), "machine": platform.machine(), "rows": rows}
    (OUT / "ratelimits.json").write_text(json.dumps(result, indent=2))
    print("| orders recorded | gate + record one order | headroom of one certificate | ledger file |")
    print("| ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['recorded']:,} | {row['order_ms']:.1f} ms | {row['headroom_ms']:.1f} ms | "
              f"{row['file_kib']:.0f} KiB |")  # fmt: skip


if __name__ == "__main__":
    main()
