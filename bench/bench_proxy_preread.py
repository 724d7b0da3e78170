"""What the TLS-ALPN-01 front costs normal HTTPS traffic: ``certkeeper proxy`` with TLS_ALPN_SERVICE (nginx
``stream`` + ``ssl_preread`` on the port, the HTTPS server behind it on a unix socket with the PROXY
protocol) against the same proxy without it, same run. Writes bench/out/proxy_preread.json.

Rounds alternate the two sides (ABBA) so drift on a shared machine hits both alike; the ratio is the
median of the per-round ratios. Growing load: 10 and 50 connections, keep-alive and ``Connection: close``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from statistics import median

import psutil
from bench_proxy import BACKEND_CONF, CA, CERTKEEPER, NGINX, ROOT, BareNginx, WrkResult, wait_listening, wrk

from testbench.pebble import free_port
from testbench.volumes import write_secret_volume

OUT = ROOT / "bench" / "out" / "proxy_preread.json"
SECONDS = int(os.environ.get("BENCH_PROXY_SECONDS", "4"))
ROUNDS = int(os.environ.get("BENCH_PREREAD_ROUNDS", "6"))
CONNECTIONS = (10, 50)


class Proxy:
    def __init__(self, directory: Path, secrets: Path, port: int, backend: int, alpn: bool) -> None:
        self.dir = directory
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin",
            "ENABLE_SSL": "true",
            "TARGET_SERVICE": f"127.0.0.1:{backend}",
            "SECRETS_DIR": str(secrets),
            "RUN_DIR": str(directory),
            "HTTP_PORT": str(free_port()),
            "HTTPS_PORT": str(port),
            "LISTEN_ADDRESS": "127.0.0.1",
            "ACCESS_LOG": "off",
        }
        if alpn:
            env["TLS_ALPN_SERVICE"] = f"127.0.0.1:{free_port()}"  # never asked here: normal traffic only
        self.process = subprocess.Popen(
            [CERTKEEPER, "proxy"], env=env, stdout=(directory.parent / f"{directory.name}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    @property
    def master_pid(self) -> int:
        for _ in range(100):
            text = (self.dir / "nginx.pid").read_text().strip() if (self.dir / "nginx.pid").exists() else ""
            if text:
                return int(text)
            time.sleep(0.05)
        raise RuntimeError("nginx wrote no pid")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)


def serving_https(port: int, seconds: float = 20) -> None:
    """The HTTPS server answers (behind the front it starts a moment after the port listens)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        probe = subprocess.run(
            ["wrk", "-t1", "-c1", "-d1s", f"https://127.0.0.1:{port}/"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0 and "Non-2xx" not in probe.stdout and " 0 requests" not in probe.stdout:
            return
        time.sleep(0.2)
    raise RuntimeError(f"no HTTPS on 127.0.0.1:{port}")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ckbench-preread-"))
    work.chmod(0o755)
    results: dict[str, object] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {round(psutil.virtual_memory().total / 2**30)} GiB, {platform.system()}",
        "nginx": subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip(),
        "wrk": f"-t2 -d{SECONDS}s against 127.0.0.1, ECDSA P-256, median of {ROUNDS} alternating rounds",
        "load_average_at_start": os.getloadavg()[0],
    }
    started: list[BareNginx | Proxy] = []
    try:
        backend_port = free_port()
        backend_dir = work / "backend"
        backend_dir.mkdir()
        started.append(BareNginx(backend_dir, BACKEND_CONF.format(dir=backend_dir, port=backend_port)))
        wait_listening(backend_port)
        chain, key = CA().issue("ecdsa")
        secrets = work / "secrets"
        secrets.mkdir(mode=0o755)
        write_secret_volume(secrets, {"proxycert": chain, "proxykey": key})
        sides: dict[str, tuple[Proxy, int]] = {}
        for side, alpn in (("plain", False), ("preread", True)):
            port = free_port()
            proxy = Proxy(work / side, secrets, port, backend_port, alpn)
            started.append(proxy)
            wait_listening(port)
            serving_https(port)
            sides[side] = (proxy, port)
        compare: dict[str, dict[str, float]] = {}
        for connections in CONNECTIONS:
            for mode, close in (("keepalive", False), ("close", True)):
                runs: dict[str, list[WrkResult]] = {"plain": [], "preread": []}
                order = list(sides)
                for n in range(ROUNDS):
                    for side in order if n % 2 == 0 else order[::-1]:
                        proxy, port = sides[side]
                        runs[side].append(wrk(port, SECONDS, close, proxy.master_pid, connections))
                pairs = zip(runs["preread"], runs["plain"], strict=True)
                ratios = [p.requests_per_s / q.requests_per_s for p, q in pairs]
                entry = {
                    "plain_rps": median(w.requests_per_s for w in runs["plain"]),
                    "preread_rps": median(w.requests_per_s for w in runs["preread"]),
                    "ratio": round(median(ratios), 3),
                    "ratio_min": round(min(ratios), 3),
                    "ratio_max": round(max(ratios), 3),
                    "plain_worker_cpu_us_per_request": median(w.worker_cpu_us_per_request for w in runs["plain"]),
                    "preread_worker_cpu_us_per_request": median(w.worker_cpu_us_per_request for w in runs["preread"]),
                    "failed": sum(w.failed for r in runs.values() for w in r),
                }
                compare[f"c{connections}-{mode}"] = entry
                print(f"c={connections:<3} {mode:9} plain {entry['plain_rps']:>8.0f} req/s  preread "
                      f"{entry['preread_rps']:>8.0f} req/s  ratio {entry['ratio']} ({entry['ratio_min']}-"
                      f"{entry['ratio_max']})  worker CPU/request {entry['plain_worker_cpu_us_per_request']} vs "
                      f"{entry['preread_worker_cpu_us_per_request']} us", flush=True)  # fmt: skip
        results["compare"] = compare
    finally:
        for item in started:
            item.stop()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
