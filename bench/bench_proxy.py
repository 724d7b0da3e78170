"""certkeeper proxy vs bare nginx, and certificate rotation under load. Writes bench/out/proxy.json.

All traffic goes to 127.0.0.1. Three nginx instances take part: a tiny backend answering "ok", the
proxy under test (``certkeeper proxy``), and a bare nginx with an equivalent hand-written configuration
that loads its certificate once (the way people write it by hand).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median

import psutil
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from testbench.pebble import free_port
from testbench.pki import TestCA
from testbench.volumes import write_secret_volume

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "proxy.json"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CERTKEEPER = str(Path(sys.executable).parent / "certkeeper")
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
SECONDS = int(os.environ.get("BENCH_PROXY_SECONDS", "4"))
ROUNDS = 8
ROTATION_SECONDS = 30
ROTATE_EVERY = 3.0


def wait_listening(port: int, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


# -- certificates ---------------------------------------------------------------------------------------
class CA:
    def __init__(self) -> None:
        self._ca = TestCA("bench CA", days=2)
        self.cert = self._ca.cert

    def issue(self, key_type: str, padding: int = 0) -> tuple[bytes, bytes]:
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
            rsa.generate_private_key(65537, 2048) if key_type == "rsa" else ec.generate_private_key(ec.SECP256R1())
        )
        leaf = self._ca.issue(["bench.test"], key=key)
        # padding: extra copies of the CA in the chain, only to widen a race window on purpose.
        return leaf.cert_pem + self._ca.cert_pem * (1 + padding), leaf.key_pem


def write_static(directory: Path, chain: bytes, key: bytes) -> None:
    for name, data, mode in (("cert.pem", chain, 0o644), ("key.pem", key, 0o600)):
        tmp = directory / f".{name}"
        tmp.write_bytes(data)
        tmp.chmod(mode)
        os.replace(tmp, directory / name)


# -- nginx instances ------------------------------------------------------------------------------------
BACKEND_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp;
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 100000;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""

# What an operator would write by hand for the same job: certificate loaded once at (re)load.
BARE_CONF = """
{user}worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    server_tokens off;
    access_log off;
    client_body_temp_path {dir}/tmp/client_body;
    proxy_temp_path {dir}/tmp/proxy;
    sendfile on;
    keepalive_timeout 65;
    client_max_body_size 20M;
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 32;
    }}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host;
    proxy_read_timeout 90;
    {map}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        {root}
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {ciphers};
        ssl_ecdh_curve X25519:prime256v1:secp384r1;
        ssl_prefer_server_ciphers off;
        ssl_session_cache shared:bare:10m;
        ssl_session_timeout 1d;
        ssl_session_tickets off;
        add_header Strict-Transport-Security "max-age=63072000" always;
        location / {{ proxy_pass http://backend; }}
    }}
}}
"""


class BareNginx:
    def __init__(self, directory: Path, conf: str) -> None:
        self.dir = directory
        (directory / "tmp").mkdir(parents=True, exist_ok=True)
        (directory / "nginx.conf").write_text(conf)
        self.process = subprocess.Popen(
            [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e", "stderr", "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=(directory / "stderr.log").open("wb"),
        )

    @property
    def master_pid(self) -> int:
        return self.process.pid

    def reload(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGQUIT)
        self.process.wait(timeout=20)


def bare_conf(directory: Path, port: int, backend: int, cert_dir: Path, how: str) -> str:
    user = "user www-data;\n" if os.geteuid() == 0 else ""
    root, mapping = "", ""
    if how == "static":
        cert, key = cert_dir / "cert.pem", cert_dir / "key.pem"
    elif how == "naive-variable":  # per handshake, path resolved at each open(): cert and key may differ
        mapping = f"map $host $live {{ default {cert_dir}; }}"
        cert, key = Path("$live/cert.pem"), Path("$live/key.pem")
    else:  # "pinned-variable": certkeeper's way, symlink resolved once per handshake
        mapping = "map $realpath_root $live { default $realpath_root; }"
        root = f"root {cert_dir};"
        cert, key = Path("$live/cert.pem"), Path("$live/key.pem")
    return BARE_CONF.format(
        user=user, dir=directory, port=port, backend=backend, cert=cert, key=key, ciphers=CIPHERS, map=mapping,
        root=root,
    )  # fmt: skip


class CertkeeperProxy:
    def __init__(self, directory: Path, secrets: Path, port: int, backend: int) -> None:
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
        self.log = directory.parent / f"{directory.name}.log"
        self.process = subprocess.Popen(
            [CERTKEEPER, "proxy"], env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )

    @property
    def master_pid(self) -> int:
        # nginx creates the pid file, then writes it: right after start it can be empty for a moment.
        for _ in range(100):
            text = (self.dir / "nginx.pid").read_text().strip()
            if text:
                return int(text)
            time.sleep(0.05)
        raise RuntimeError("nginx wrote no pid")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)


# -- load -----------------------------------------------------------------------------------------------
@dataclass
class WrkResult:
    requests: int
    requests_per_s: float
    socket_errors: int
    non_2xx: int
    worker_cpu_us_per_request: float

    @property
    def failed(self) -> int:
        return self.socket_errors + self.non_2xx


def worker_cpu(master_pid: int) -> float:
    total = 0.0
    for child in psutil.Process(master_pid).children():
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass  # an old worker that exited during a reload
    return total


def wrk(port: int, seconds: int, close: bool, master_pid: int, connections: int = 50) -> WrkResult:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    if close:
        args += ["-H", "Connection: close"]
    cpu_before = worker_cpu(master_pid)
    out = subprocess.run([*args, f"https://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    cpu = worker_cpu(master_pid) - cpu_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        requests=requests,
        requests_per_s=rps,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        worker_cpu_us_per_request=round(cpu / max(requests, 1) * 1e6, 1),
    )


def rotating(action: Callable[[int], None], every: float, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        n = 0
        while not stop.wait(every):
            action(n)
            n += 1

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


# -- the benchmark --------------------------------------------------------------------------------------
def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ckbench-proxy-"))
    work.chmod(0o755)
    started: list[BareNginx | CertkeeperProxy] = []
    results: dict[str, object] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {round(psutil.virtual_memory().total / 2**30)} GiB, {platform.system()}",
        "nginx": subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip(),
        "wrk": f"-t2 -c50 -d{SECONDS}s against 127.0.0.1, median of {ROUNDS} alternating rounds (ratio: median of "
        "per-round ratios)",
        "backend": "nginx (1 worker) answering 200 on 127.0.0.1",
        "load_average_at_start": os.getloadavg()[0],
    }
    try:
        ca = CA()
        backend_port = free_port()
        backend_dir = work / "backend"
        backend_dir.mkdir()
        started.append(BareNginx(backend_dir, BACKEND_CONF.format(dir=backend_dir, port=backend_port)))
        wait_listening(backend_port)

        compare: dict[str, dict[str, float]] = {}
        for key_type in ("rsa", "ecdsa"):
            chain, key = ca.issue(key_type)
            secrets = work / f"secrets-{key_type}"
            secrets.mkdir(mode=0o755)
            write_secret_volume(secrets, {"proxycert": chain, "proxykey": key})
            static = work / f"static-{key_type}"
            static.mkdir(mode=0o755)
            write_static(static, chain, key)

            ck_port, bare_port = free_port(), free_port()
            ck = CertkeeperProxy(work / f"ck-{key_type}", secrets, ck_port, backend_port)
            bare_dir = work / f"bare-{key_type}"
            bare_dir.mkdir()
            bare = BareNginx(bare_dir, bare_conf(bare_dir, bare_port, backend_port, static, "static"))
            started += [ck, bare]
            wait_listening(ck_port)
            wait_listening(bare_port)
            modes = [("keepalive", False), ("close", True)] if key_type == "rsa" else [("close", True)]
            for mode, close in modes:
                runs: dict[str, list[WrkResult]] = {"certkeeper": [], "bare": []}
                for n in range(ROUNDS):  # alternate (ABBA), so drift on a shared machine hits both sides alike
                    sides = [("certkeeper", ck_port, ck.master_pid), ("bare", bare_port, bare.master_pid)]
                    for side, port, master in sides if n % 2 == 0 else sides[::-1]:
                        runs[side].append(wrk(port, SECONDS, close, master))
                rps = {side: median(w.requests_per_s for w in r) for side, r in runs.items()}
                cpu = {side: median(w.worker_cpu_us_per_request for w in r) for side, r in runs.items()}
                entry = {
                    "certkeeper_rps": rps["certkeeper"],
                    "bare_rps": rps["bare"],
                    # Each round's two runs are adjacent in time: their ratio is the least disturbed by other load.
                    "ratio": round(median(c.requests_per_s / b.requests_per_s for c, b in pairs_of(runs)), 3),
                    "certkeeper_worker_cpu_us_per_request": cpu["certkeeper"],
                    "bare_worker_cpu_us_per_request": cpu["bare"],
                    "failed": sum(w.failed for r in runs.values() for w in r),
                }
                compare[f"{key_type}-{mode}"] = entry
                print(f"{key_type:5} {mode:9} certkeeper {rps['certkeeper']:>8.0f} req/s  bare {rps['bare']:>8.0f} "
                      f"req/s  ratio {entry['ratio']}  worker CPU/request {cpu['certkeeper']} vs {cpu['bare']} us",
                      flush=True)  # fmt: skip
            bare.stop()
            started.remove(bare)
            if key_type == "ecdsa":
                ck.stop()
                started.remove(ck)
            else:
                rsa_proxy, rsa_secrets = ck, secrets
        results["throughput"] = compare

        # Rotation under load through certkeeper proxy: a new RSA key and certificate every 3 s.
        pairs = [ca.issue("rsa") for _ in range(12)]
        counter = itertools.count()  # consecutive pairs always differ
        rotation: dict[str, object] = {}
        served_before = rsa_proxy.log.read_text().count("serving certificate")
        for mode, close in (("keepalive", False), ("close", True)):
            stop = threading.Event()
            rotations = [0]

            def swap(n: int, rotations: list[int] = rotations) -> None:
                chain, key = pairs[next(counter) % len(pairs)]
                write_secret_volume(rsa_secrets, {"proxycert": chain, "proxykey": key})
                rotations[0] += 1

            thread = rotating(swap, ROTATE_EVERY, stop)
            result = wrk(ck_port_of(rsa_proxy), ROTATION_SECONDS, close, rsa_proxy.master_pid)
            stop.set()
            thread.join()
            time.sleep(1.5)
            served = rsa_proxy.log.read_text().count("serving certificate") - served_before
            served_before += served
            rotation[mode] = {"rotations": rotations[0], "served_by_proxy": served, **asdict(result),
                              "failed": result.failed}  # fmt: skip
            print(f"rotation {mode:9} {ROTATION_SECONDS}s, {rotations[0]} rotations ({served} picked up): "
                  f"{result.requests} requests, {result.failed} failed", flush=True)  # fmt: skip
        results["rotation_certkeeper"] = rotation
        rsa_proxy.stop()
        started.remove(rsa_proxy)

        # The alternative: the same rotation with a reload of bare nginx each time.
        static = work / "static-reload"
        static.mkdir(mode=0o755)
        write_static(static, *ca.issue("rsa"))
        reload_dir, reload_port = work / "bare-reload", free_port()
        reload_dir.mkdir()
        reloading = BareNginx(reload_dir, bare_conf(reload_dir, reload_port, backend_port, static, "static"))
        started.append(reloading)
        wait_listening(reload_port)
        reload_result: dict[str, object] = {}
        for mode, close in (("keepalive", False), ("close", True)):
            stop = threading.Event()

            def reload(n: int) -> None:
                write_static(static, *pairs[next(counter) % len(pairs)])
                reloading.reload()

            thread = rotating(reload, ROTATE_EVERY, stop)
            result = wrk(reload_port, ROTATION_SECONDS, close, reloading.master_pid)
            stop.set()
            thread.join()
            reload_result[mode] = {**asdict(result), "failed": result.failed}
            print(f"reload   {mode:9} {ROTATION_SECONDS}s, nginx reload every {ROTATE_EVERY:.0f}s: "
                  f"{result.requests} requests, {result.failed} failed", flush=True)  # fmt: skip
        results["rotation_bare_reload"] = reload_result
        reloading.stop()
        started.remove(reloading)

        results["handshake_cost"] = handshake_cost(work, ca, backend_port)
        results["pinning"] = pinning_check(work, ca, backend_port)
    finally:
        for process in started:
            try:
                process.stop()
            except Exception:
                process.process.kill()
        shutil.rmtree(work, ignore_errors=True)
    results["load_average_at_end"] = os.getloadavg()[0]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


def pairs_of(runs: dict[str, list[WrkResult]]) -> list[tuple[WrkResult, WrkResult]]:
    return list(zip(runs["certkeeper"], runs["bare"], strict=True))


def ck_port_of(proxy: CertkeeperProxy) -> int:
    conf = (proxy.dir / "nginx.conf").read_text()
    return int(re.search(r"listen 127\.0\.0\.1:(\d+) ssl", conf).group(1))  # type: ignore[union-attr]


def handshake_cost(work: Path, ca: CA, backend_port: int) -> dict[str, object]:
    """Worker CPU per full handshake, the same hand-written config with the certificate loaded once vs
    per handshake from a pinned generation (certkeeper's way): the cost of the choice, isolated."""
    report: dict[str, object] = {}
    for key_type in ("rsa", "ecdsa"):
        chain, key = ca.issue(key_type)
        servers: dict[str, tuple[BareNginx, int]] = {}
        for how in ("static", "pinned-variable"):
            base = work / f"hs-{key_type}-{how}"
            (base / "g").mkdir(parents=True, mode=0o755)
            base.chmod(0o755)
            write_static(base / "g", chain, key)
            os.chmod(base / "g" / "key.pem", 0o644)  # throwaway bench key; workers run as another user
            (base / "current").symlink_to("g")
            (base / "nginx").mkdir()
            port = free_port()
            servers[how] = (
                BareNginx(base / "nginx", bare_conf(base / "nginx", port, backend_port, base / "current", how)),
                port,
            )
            wait_listening(port)
        cpu: dict[str, list[float]] = {how: [] for how in servers}
        for n in range(ROUNDS // 2):
            for how, (server, port) in list(servers.items())[:: 1 if n % 2 == 0 else -1]:
                cpu[how].append(wrk(port, SECONDS, True, server.master_pid, connections=2).worker_cpu_us_per_request)
        for server, _ in servers.values():
            server.stop()
        static, pinned = median(cpu["static"]), median(cpu["pinned-variable"])
        report[key_type] = {"static_us": static, "per_handshake_us": pinned, "cost_us": round(pinned - static, 1),
                            "cost_percent": round((pinned - static) / static * 100, 1), "runs": cpu}  # fmt: skip
        print(f"handshake {key_type:5} worker CPU per full handshake: loaded once {static} us, per handshake "
              f"{pinned} us: cost {pinned - static:.1f} us ({(pinned - static) / static * 100:.1f}%)",
              flush=True)  # fmt: skip
    return report


def pinning_check(work: Path, ca: CA, backend_port: int) -> dict[str, object]:
    """Why certkeeper resolves the symlink once per handshake: swap every 2 ms and count failed handshakes.

    The chain is padded with 120 extra certificates so the gap between nginx opening the certificate and
    the key is wide enough to hit within seconds; with a normal chain the naive way fails rarely, not never.
    """
    pairs = [ca.issue("rsa", padding=120) for _ in range(2)]
    report: dict[str, object] = {}
    for how in ("naive-variable", "pinned-variable"):
        base = work / f"pin-{how}"
        base.mkdir(mode=0o755)
        for n, (chain, key) in enumerate(pairs):
            (base / f"g{n}").mkdir(mode=0o755)
            write_static(base / f"g{n}", chain, key)
            os.chmod(base / f"g{n}" / "key.pem", 0o644)  # throwaway bench keys; workers run as another user
        (base / "current").symlink_to("g0")
        port = free_port()
        server_dir = base / "nginx"
        server_dir.mkdir()
        server = BareNginx(server_dir, bare_conf(server_dir, port, backend_port, base / "current", how))
        wait_listening(port)
        stop = threading.Event()

        def swap(n: int, base: Path = base) -> None:
            (base / "next").symlink_to(f"g{(n + 1) % 2}")
            os.replace(base / "next", base / "current")

        thread = rotating(swap, 0.002, stop)
        result = wrk(port, SECONDS, True, server.master_pid, connections=20)
        stop.set()
        thread.join()
        server.stop()
        report[how] = {"requests": result.requests, "failed": result.failed}
        print(f"pinning  {how:15} swap every 2 ms, {SECONDS}s: {result.requests} requests, {result.failed} failed",
              flush=True)  # fmt: skip
    return report


if __name__ == "__main__":
    main()
