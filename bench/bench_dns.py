"""DNS-01 benchmark (issue 9): certificates proven over RFC 2136 at a real bind9, validated by a real Pebble.

Measured, against one bind9 and one Pebble resolving through it (``PEBBLE_VA_NOSLEEP=1``):

1. one wildcard + apex certificate from a cold start (fresh store: account registration, zone discovery,
   two TXT updates, the propagation check at every authoritative server, validation, cleanup), median of 7;
2. 50 wildcard + apex certificates in one ``certkeeper issue --file`` run, median of 3 (fresh names and
   store each round), then a zone transfer: how many TXT records are left (must be 0).

Results go to bench/out/dns.json; a markdown table is printed.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from testbench.bind import Bind, start_bind
from testbench.pebble import Pebble, start_pebble

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
CERTKEEPER = ROOT / ".venv" / "bin" / "certkeeper"
TARGET_ONE_S = 1.5
ROUNDS_ONE = 7
ROUNDS_MANY = 3
N_MANY = 50


def env_for(pebble: Pebble, bind: Bind, store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTKEEPER_")}
    env.update(
        CERTKEEPER_SERVER=pebble.directory_url,
        CERTKEEPER_CA_BUNDLE=str(pebble.ca_bundle),
        CERTKEEPER_HTTP_BIND=f"127.0.0.1:{pebble.http_port}",
        CERTKEEPER_STORE=str(store),
        CERTKEEPER_DNS="rfc2136",
        CERTKEEPER_DNS_SERVER=bind.server,
        CERTKEEPER_TSIG_KEY_FILE=str(bind.key_file),
    )
    return env


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])}... failed: {result.stderr[-2000:]}")
    return wall


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-dns-"))
    bind = start_bind(work / "bind", {"bench.test": ""})
    pebble = start_pebble(work / "pebble", dns_server=bind.server, env={"PEBBLE_WFE_NONCEREJECT": "0"})
    try:
        one = []
        for i in range(ROUNDS_ONE):
            env = env_for(pebble, bind, work / f"one-{i}")
            one.append(timed([str(CERTKEEPER), "issue", f"*.one{i}.bench.test", f"one{i}.bench.test"], env))
        many = []
        left = []
        for r in range(ROUNDS_MANY):
            names = work / f"many-{r}.txt"
            names.write_text("".join(f"*.m{r}x{i}.bench.test m{r}x{i}.bench.test\n" for i in range(N_MANY)))
            env = env_for(pebble, bind, work / f"many-{r}")
            many.append(timed([str(CERTKEEPER), "issue", "--file", str(names)], env))
            left.append(len(bind.txt("bench.test")))
    finally:
        pebble.stop()
        bind.stop()
    load = os.getloadavg()
    result: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "load_average_1m_at_end": round(load[0], 2),
        "one_wildcard_cold_s": {"median": statistics.median(one), "max": max(one), "all": one},
        "fifty_wildcards_s": {"median": statistics.median(many), "all": many},
        "txt_records_left": left,
    }
    (OUT / "dns.json").write_text(json.dumps(result, indent=2))
    print("| figure | measured | target |")
    print("|---|---|---|")
    print(f"| one wildcard + apex certificate, cold start (median of {ROUNDS_ONE}) | "
          f"{statistics.median(one):.2f} s (max {max(one):.2f} s) | <= {TARGET_ONE_S} s |")  # fmt: skip
    print(f"| {N_MANY} wildcard + apex certificates in one run (median of {ROUNDS_MANY}) | "
          f"{statistics.median(many):.2f} s | - |")  # fmt: skip
    print(f"| TXT records left in the zone after each {N_MANY}-certificate run | {left} | 0 |")
    print(f"load average (1 min) at the end: {load[0]:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
