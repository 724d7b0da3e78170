"""What TLS-ALPN-01 through ``certkeeper proxy`` costs normal HTTPS traffic, same run, three proxies:

- ``plain``: no TLS_ALPN_SERVICE (the proxy as it was before TLS-ALPN-01), and ``plain_again``, a second
  one alike: plain_again/plain is the noise floor of the machine (an A/A comparison);
- ``rest``: TLS_ALPN_SERVICE set, certkeeper's responder up with no challenge in flight (the stream front is
  off: the HTTPS server listens on the port itself);
- ``inflight`` (for information): the same while a challenge is in flight (nginx ``stream`` + ``ssl_preread``
  on the port, the HTTPS server behind it on a unix socket with the PROXY protocol).

Rounds rotate the order of the four sides so drift on a shared machine hits them alike; each ratio is the
median of the per-round ratios to ``plain``. 10 and 50 connections, keep-alive and ``Connection: close``.
Then the same pairs run at the same time (``simultaneous``): wrk on ``plain`` and on the other side together,
so both meet the same interference from the rest of a shared machine and share its two cores; a side that
costs more CPU per request gets fewer requests per second. Then, for information, one challenge (front on,
then off: two reloads) during a wrk run on ``rest``: what the reloads cost the requests in flight. Writes
bench/out/proxy_preread.json.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

import psutil
from bench_proxy import BACKEND_CONF, CA, CERTKEEPER, NGINX, ROOT, BareNginx, WrkResult, wait_listening, wrk

from certkeeper.solvers.base import AccountKey, Challenge, Identifier
from certkeeper.solvers.tlsalpn01 import TlsAlpn01Solver
from testbench.pebble import free_port
from testbench.volumes import write_secret_volume

OUT = ROOT / "bench" / "out" / "proxy_preread.json"
SECONDS = int(os.environ.get("BENCH_PROXY_SECONDS", "4"))
ROUNDS = int(os.environ.get("BENCH_PREREAD_ROUNDS", "6"))
SIMULTANEOUS_ROUNDS = int(os.environ.get("BENCH_PREREAD_SIMULTANEOUS_ROUNDS", "8"))
CONNECTIONS = (10, 50)
SIDES = ("plain", "plain_again", "rest", "inflight")
CHALLENGE = (Identifier("bench.test"), Challenge("tls-alpn-01", "token"), AccountKey("thumbprint"))


class Proxy:
    def __init__(self, directory: Path, secrets: Path, port: int, backend: int, alpn: str | None) -> None:
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
            env["TLS_ALPN_SERVICE"] = alpn  # certkeeper's responder
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
        "wrk": f"-t2 -d{SECONDS}s against 127.0.0.1, ECDSA P-256, median of {ROUNDS} rotating rounds",
        "load_average_at_start": os.getloadavg()[0],
    }
    started: list[BareNginx | Proxy] = []
    responders: dict[str, TlsAlpn01Solver] = {}
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
        for side in SIDES:
            alpn = None
            if not side.startswith("plain"):
                responder = TlsAlpn01Solver(f"127.0.0.1:{free_port()}", check="off")
                responder.prepare([])
                responders[side] = responder
                alpn = responder.bind
                if side == "inflight":
                    responder.present(*CHALLENGE)
            port = free_port()
            proxy = Proxy(work / side, secrets, port, backend_port, alpn)
            started.append(proxy)
            wait_listening(port)
            serving_https(port)
            sides[side] = (proxy, port)
        front = {side: "ssl_preread on;" in (work / side / "nginx.conf").read_text() for side in SIDES}
        assert front == {"plain": False, "plain_again": False, "rest": False, "inflight": True}, front
        compare: dict[str, dict[str, float]] = {}
        for connections in CONNECTIONS:
            for mode, close in (("keepalive", False), ("close", True)):
                compare[f"c{connections}-{mode}"] = compare_sides(sides, connections, mode, close)
        results["compare"] = compare
        simultaneous: dict[str, dict[str, float]] = {}
        for connections in CONNECTIONS:
            for mode, close in (("keepalive", False), ("close", True)):
                simultaneous[f"c{connections}-{mode}"] = compare_simultaneous(sides, connections, mode, close)
        results["simultaneous"] = simultaneous
        results["one_challenge_during_load"] = challenge_during_load(sides["rest"], responders["rest"])
    finally:
        for responder in responders.values():
            responder.close()
        for item in started:
            item.stop()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


def compare_sides(sides: dict[str, tuple[Proxy, int]], connections: int, mode: str, close: bool) -> dict[str, float]:
    runs: dict[str, list[WrkResult]] = {side: [] for side in SIDES}
    for n in range(ROUNDS):
        order = list(SIDES[n % len(SIDES) :] + SIDES[: n % len(SIDES)])
        for side in order if n % 2 == 0 else order[::-1]:
            proxy, port = sides[side]
            runs[side].append(wrk(port, SECONDS, close, proxy.master_pid, connections))
    entry: dict[str, float] = {}
    for side in SIDES:
        entry[f"{side}_rps"] = median(w.requests_per_s for w in runs[side])
        entry[f"{side}_worker_cpu_us_per_request"] = round(median(w.worker_cpu_us_per_request for w in runs[side]), 1)
    for side in SIDES[1:]:
        ratios = [p.requests_per_s / q.requests_per_s for p, q in zip(runs[side], runs["plain"], strict=True)]
        entry[f"{side}_ratio"] = round(median(ratios), 3)
        entry[f"{side}_ratio_min"] = round(min(ratios), 3)
        entry[f"{side}_ratio_max"] = round(max(ratios), 3)
    entry["failed"] = sum(w.failed for r in runs.values() for w in r)
    rps = " ".join(f"{side} {entry[side + '_rps']:.0f}" for side in SIDES)
    ratios = ", ".join(
        f"{side}/plain {entry[side + '_ratio']} ({entry[side + '_ratio_min']}-{entry[side + '_ratio_max']})"
        for side in SIDES[1:]
    )
    cpu = " / ".join(f"{entry[side + '_worker_cpu_us_per_request']:.1f}" for side in SIDES)
    print(f"c={connections:<3} {mode:9} req/s {rps}; {ratios}; worker CPU/request {cpu} us; failed {entry['failed']}",
          flush=True)  # fmt: skip
    return entry


def compare_simultaneous(
    sides: dict[str, tuple[Proxy, int]], connections: int, mode: str, close: bool
) -> dict[str, float]:
    ratios: dict[str, list[float]] = {side: [] for side in SIDES[1:]}
    for n in range(SIMULTANEOUS_ROUNDS):
        for side in SIDES[1:] if n % 2 == 0 else SIDES[:0:-1]:
            both: dict[str, WrkResult] = {}

            def run(name: str) -> None:
                proxy, port = sides[name]
                both[name] = wrk(port, SECONDS, close, proxy.master_pid, connections)  # noqa: B023

            threads = [threading.Thread(target=run, args=(name,)) for name in ("plain", side)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            ratios[side].append(both[side].requests_per_s / both["plain"].requests_per_s)
    entry: dict[str, float] = {}
    for side, values in ratios.items():
        entry[f"{side}_ratio"] = round(median(values), 3)
        entry[f"{side}_ratio_min"] = round(min(values), 3)
        entry[f"{side}_ratio_max"] = round(max(values), 3)
    shown = ", ".join(
        f"{side}/plain {entry[side + '_ratio']} ({entry[side + '_ratio_min']}-{entry[side + '_ratio_max']})"
        for side in SIDES[1:]
    )
    print(f"simultaneous c={connections:<3} {mode:9} {shown}", flush=True)
    return entry


def challenge_during_load(side: tuple[Proxy, int], responder: TlsAlpn01Solver) -> dict[str, object]:
    """wrk on the proxy at rest while one challenge comes and goes (the front put on, then taken off)."""
    proxy, port = side
    responder.check = f"127.0.0.1:{port}"  # present() returns once the front is in place
    log_path = proxy.dir.parent / f"{proxy.dir.name}.log"
    seconds = max(SECONDS, 12)
    found: dict[str, object] = {}
    for connections in CONNECTIONS:
        for mode, close in (("keepalive", False), ("close", True)):

            def one_challenge() -> None:
                time.sleep(1)
                responder.present(*CHALLENGE)
                time.sleep(1)
                responder.cleanup(*CHALLENGE)  # the proxy takes the front off 5 s later

            thread = threading.Thread(target=one_challenge)
            thread.start()
            result = wrk(port, seconds, close, proxy.master_pid, connections)
            thread.join()
            found[f"c{connections}-{mode}"] = {
                "seconds": seconds,
                "requests": result.requests,
                "requests_per_s": result.requests_per_s,
                "socket_errors": result.socket_errors,
                "non_2xx": result.non_2xx,
            }
            print(f"one challenge during c={connections} {mode}: {result.requests} requests in {seconds} s, "
                  f"{result.socket_errors} socket errors, {result.non_2xx} non-2xx", flush=True)  # fmt: skip
            deadline = time.monotonic() + 30  # the front gone before the next run
            while time.monotonic() < deadline:
                log = log_path.read_text(errors="replace")
                if log.count("has port") >= log.count("acme-tls/1 on port"):
                    break
                time.sleep(0.2)
    return found


if __name__ == "__main__":
    main()
