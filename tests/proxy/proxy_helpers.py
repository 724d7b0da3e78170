"""Test-side tools for the proxy: a small local CA, Secret-like directories, an HTTPS client."""

from __future__ import annotations

import datetime as dt
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from testbench.pki import TestCA

HOST = "proxy.test"
CERTKEEPER = str(Path(sys.executable).parent / "certkeeper")


@dataclass(frozen=True)
class Issued:
    chain_pem: bytes
    key_pem: bytes = field(repr=False)
    serial: int


class LocalCA:
    def __init__(self) -> None:
        self._ca = TestCA("certkeeper proxy test CA", days=2)
        self.cert = self._ca.cert
        self.pem = self._ca.cert_pem

    def issue(
        self, names: tuple[str, ...] = (HOST,), *, expired: bool = False, not_before: dt.datetime | None = None
    ) -> Issued:
        now = dt.datetime.now(dt.UTC)
        end = now - dt.timedelta(hours=1) if expired else now + dt.timedelta(days=1)
        leaf = self._ca.issue(names, not_before=not_before or now - dt.timedelta(days=1), not_after=end)
        return Issued(leaf.cert_pem + self.pem, leaf.key_pem, leaf.cert.serial_number)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.pem.decode())


def write_plain(secrets: Path, cert: bytes, key: bytes, names: tuple[str, str] = ("proxycert", "proxykey")) -> None:
    """Plain in-place writes, as a hand-run script or a hostPath volume would do them."""
    (secrets / names[0]).write_bytes(cert)
    key_path = secrets / names[1]
    key_path.touch(mode=0o600)
    key_path.write_bytes(key)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    serial: int
    tls_version: str
    alpn: str | None


def https_get(
    port: int,
    context: ssl.SSLContext,
    path: str = "/",
    headers: dict[str, str] | None = None,
    alpn: list[str] | None = None,
) -> Reply:
    if alpn:
        context.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname=HOST) as tls:
        peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
        version, chosen = tls.version() or "", tls.selected_alpn_protocol()
        if chosen == "h2":
            return Reply(0, {}, b"", peer.serial_number, version, chosen)
        lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = http.client.HTTPResponse(tls)
        response.begin()
        body = response.read()
        reply_headers = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, reply_headers, body, peer.serial_number, version, chosen)


def http_get(port: int, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": HOST, **(headers or {})})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Generous bounded wait for something a user would see happen; not a timing assertion."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


def served_serial(port: int, context: ssl.SSLContext) -> int:
    return https_get(port, context).serial


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningProxy:
    process: subprocess.Popen[bytes]
    http_port: int
    https_port: int
    run_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def master_pid(self) -> int:
        # nginx creates the pid file, then writes it: right after start it can be empty for a moment.
        wait_for(lambda: bool((self.run_dir / "nginx.pid").read_text().strip()), 10, "nginx's pid file")
        return int((self.run_dir / "nginx.pid").read_text())

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=15)
        self._stop_orphaned_nginx()
        return code

    def _stop_orphaned_nginx(self) -> None:
        """A test that failed (or a supervisor that died) must not leave its nginx running."""
        try:
            pid = int((self.run_dir / "nginx.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"nginx: master" in cmdline and str(self.run_dir).encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not Path(f"/proc/{pid}").exists(), 15, "the orphaned nginx gone")


# root without the capabilities that let it read any file: what a pod's non-root user meets.
NO_DAC_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def run_certkeeper_proxy(
    env: dict[str, str], log_path: Path, *, no_dac_override: bool = False
) -> subprocess.Popen[bytes]:
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin", **env}
    prefix = NO_DAC_OVERRIDE if no_dac_override else []
    with log_path.open("ab") as log:
        return subprocess.Popen([*prefix, CERTKEEPER, "proxy"], env=full_env, stdout=log, stderr=subprocess.STDOUT)


StartProxy = Callable[..., RunningProxy]
