"""Start a real Pebble ACME CA (Debian package ``pebble``) on free loopback ports.

Used by the test suite, ``make demo`` and the benchmarks. Pebble resolves every name through
``pebble-challtestsrv``'s DNS, which answers 127.0.0.1, so HTTP-01 validation reaches the
responder on ``http_port``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from testbench.pki import TestCA


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class TLSFiles:
    """A throw-away CA and a serving certificate for localhost / 127.0.0.1."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def make_tls_files(directory: Path, names: tuple[str, ...] = ("localhost",)) -> TLSFiles:
    ca = TestCA("certkeeper test bench CA")
    leaf = ca.issue(names, ips=("127.0.0.1",))
    files = TLSFiles(directory / "tls-ca.pem", directory / "tls-cert.pem", directory / "tls-key.pem")
    files.ca_pem.write_bytes(ca.cert_pem)
    files.cert_pem.write_bytes(leaf.cert_pem)
    fd = os.open(files.key_pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(leaf.key_pem)
    return files


@dataclass
class Pebble:
    """A running Pebble. ``directory_url`` is what an ACME client is given."""

    workdir: Path
    tls: TLSFiles
    listen_port: int
    management_port: int
    http_port: int
    dns_port: int
    tls_port: int = 0  # where Pebble connects for TLS-ALPN-01
    eab_keys: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.listen_port}/dir"

    @property
    def ca_bundle(self) -> Path:
        """Trust anchor for Pebble's own HTTPS (not for the certificates it issues)."""
        return self.tls.ca_pem

    def _management_get(self, path: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.tls.ca_pem))
        url = f"https://127.0.0.1:{self.management_port}{path}"
        with urllib.request.urlopen(url, context=ctx, timeout=5) as response:
            body: bytes = response.read()
            return body

    def root_pem(self, index: int = 0) -> bytes:
        """The root that issued certificates chain to (``index`` > 0: an alternate root)."""
        return self._management_get(f"/roots/{index}")

    def intermediate_pem(self, index: int = 0) -> bytes:
        return self._management_get(f"/intermediates/{index}")

    def restart(self, down_s: float = 0.5) -> None:
        """Kill Pebble (SIGKILL) and start it again on the same ports: it forgets every account, order and
        authorization, as a CA that lost its database does. Its DNS helper keeps running."""
        old = self.processes[-1]
        argv = [str(a) for a in old.args]  # type: ignore[union-attr]
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1")
        env_file = self.workdir / "pebble-env.json"
        if env_file.exists():
            env.update(json.loads(env_file.read_text()))
        old.kill()
        old.wait(10)
        time.sleep(down_s)
        log = self.workdir / "pebble.log"
        proc = subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.processes[-1] = proc
        _wait_for_port(self.listen_port, proc, log)
        _wait_for_port(self.management_port, proc, log)

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{proc.args!r} did not listen on port {port} within {deadline_s} s")


def start_pebble(
    workdir: Path | None = None,
    *,
    http_port: int | None = None,
    env: Mapping[str, str] | None = None,
    eab_keys: Mapping[str, str] | None = None,
    dns_server: str | None = None,
) -> Pebble:
    """Start pebble-challtestsrv (DNS only) and pebble; stop them with ``Pebble.stop()``.

    ``dns_server`` (HOST:PORT, e.g. ``testbench.bind.Bind.server``) points Pebble at that DNS server
    instead of challtestsrv, so it resolves names and DNS-01 TXT records there.
    ``env`` adds Pebble's fault switches (``PEBBLE_WFE_NONCEREJECT``, ``PEBBLE_ALTERNATE_ROOTS``, ...).
    ``eab_keys`` (key id -> base64url HMAC key) makes External Account Binding required.
    """
    # A free port can be taken by another process between choosing it and Pebble binding it (tests
    # and benchmarks run side by side): choose again a few times rather than fail.
    for attempt in range(3):
        try:
            return _start_pebble_once(workdir, http_port=http_port, env=env, eab_keys=eab_keys, dns_server=dns_server)
        except RuntimeError as error:
            if "address already in use" not in str(error) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start_pebble_once(
    workdir: Path | None,
    *,
    http_port: int | None,
    env: Mapping[str, str] | None,
    eab_keys: Mapping[str, str] | None,
    dns_server: str | None = None,
) -> Pebble:
    for binary in ("pebble", "pebble-challtestsrv"):
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary} is not installed: run `make install` (Debian package pebble)")
    workdir = Path(tempfile.mkdtemp(prefix="pebble-")) if workdir is None else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    tls = make_tls_files(workdir)
    pebble = Pebble(
        workdir=workdir,
        tls=tls,
        listen_port=free_port(),
        management_port=free_port(),
        http_port=http_port or free_port(),
        dns_port=int(dns_server.rsplit(":", 1)[1]) if dns_server else free_port(),
        tls_port=free_port(),
        eab_keys=dict(eab_keys or {}),
    )
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{pebble.listen_port}",
            "managementListenAddress": f"127.0.0.1:{pebble.management_port}",
            "certificate": str(tls.cert_pem),
            "privateKey": str(tls.key_pem),
            "httpPort": pebble.http_port,
            "tlsPort": pebble.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": bool(pebble.eab_keys),
            "externalAccountMACKeys": pebble.eab_keys,
        }
    }
    config_path = workdir / "pebble-config.json"
    config_path.write_text(json.dumps(config))
    if dns_server is None:
        _start_challtestsrv(pebble)
    run_env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", **(env or {})}
    (workdir / "pebble-env.json").write_text(json.dumps(dict(env or {})))  # for restart()
    log = workdir / "pebble.log"
    proc = subprocess.Popen(
        ["pebble", "-config", str(config_path), "-dnsserver", dns_server or f"127.0.0.1:{pebble.dns_port}"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=run_env,
        start_new_session=True,
    )
    pebble.processes.append(proc)
    try:
        _wait_for_port(pebble.listen_port, proc, log)
        _wait_for_port(pebble.management_port, proc, log)
    except Exception:
        pebble.stop()
        raise
    return pebble


def _start_challtestsrv(pebble: Pebble) -> None:
    dns_log = pebble.workdir / "challtestsrv.log"
    dns = subprocess.Popen(
        [
            "pebble-challtestsrv",
            "-dns01", f"127.0.0.1:{pebble.dns_port}",
            "-management", f"127.0.0.1:{free_port()}",
            "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
        ],
        stdout=dns_log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    pebble.processes.append(dns)


@contextmanager
def running_pebble(**kwargs: object) -> Iterator[Pebble]:
    pebble = start_pebble(**kwargs)  # type: ignore[arg-type]
    try:
        yield pebble
    finally:
        pebble.stop()
