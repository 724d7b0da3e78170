"""Start a real BIND 9 (Debian package ``bind9``) on a free loopback port, for DNS-01 over RFC 2136.

It serves the zones it is given (each with ``ns1`` and a wildcard ``A`` at 127.0.0.1, so HTTP-01 to
the same names still reaches a local responder), accepts TXT updates signed with a TSIG key it
generates, and allows zone transfers so tests can list what is left in a zone.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import dns.zone

from testbench.pebble import free_port

KEY_NAME = "certkeeper-test"
ALGORITHM = "hmac-sha256"


@dataclass
class Bind:
    """A running ``named``. ``server`` is HOST:PORT; ``key_file`` holds the TSIG key in BIND's syntax."""

    workdir: Path
    port: int
    zones: tuple[str, ...]
    key_file: Path
    key_secret: str
    process: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def records(self, zone: str, rdtype: str | None = None) -> list[tuple[str, str, str]]:
        """(owner, type, value) of every record in ``zone``, by zone transfer."""
        transferred = dns.zone.from_xfr(dns.query.xfr("127.0.0.1", zone, port=self.port, lifetime=10))
        found: list[tuple[str, str, str]] = []
        origin = transferred.origin
        assert origin is not None
        for name, node in transferred.nodes.items():
            owner = name.derelativize(origin).to_text(omit_final_dot=True)
            for rdataset in node.rdatasets:
                kind = dns.rdatatype.to_text(rdataset.rdtype)
                if rdtype is None or kind == rdtype:
                    found.extend((owner, kind, rdata.to_text()) for rdata in rdataset)
        return sorted(found)

    def txt(self, zone: str) -> list[tuple[str, str, str]]:
        return self.records(zone, "TXT")

    def zone_file(self, zone: str) -> Path:
        return self.workdir / f"{zone}.db"

    def reload(self) -> None:
        """Reload the zone files (SIGHUP, as ``rndc reload`` does)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGHUP)

    @contextmanager
    def reloading_on_change(self, zone: str, interval: float = 0.02) -> Iterator[None]:
        """Reload whenever ``zone``'s file changes: a provider's backend publishing its zone."""
        path, done = self.zone_file(zone), threading.Event()

        def watch() -> None:
            seen = path.stat().st_mtime_ns
            while not done.wait(interval):
                now = path.stat().st_mtime_ns if path.exists() else seen
                if now != seen:
                    seen = now
                    self.reload()

        thread = threading.Thread(target=watch, name=f"reload-{zone}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def write_key_file(path: Path, name: str, secret: str, algorithm: str = ALGORITHM) -> Path:
    """A TSIG key in the syntax ``tsig-keygen`` writes (what ``--tsig-key-file`` reads)."""
    path.write_text(f'key "{name}" {{\n\talgorithm {algorithm};\n\tsecret "{secret}";\n}};\n')
    path.chmod(0o600)
    return path


def _zone_file(zone: str, extra: str) -> str:
    return (
        "$TTL 60\n"
        f"@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n"
        f"@ IN NS ns1.{zone}.\n"
        "ns1 IN A 127.0.0.1\n"
        "@ IN A 127.0.0.1\n"
        "* IN A 127.0.0.1\n"
        f"{extra}\n"
    )


def _answers(port: int, zone: str) -> bool:
    query = dns.message.make_query(zone, "SOA")
    try:
        response = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.3)
    except (OSError, dns.exception.Timeout):
        return False
    return bool(response.answer)


def start_bind(
    workdir: Path | None = None,
    zones: Mapping[str, str] | None = None,
    *,
    static: tuple[str, ...] = (),
    timeout: float = 20.0,
) -> Bind:
    """Start ``named`` serving ``zones`` (zone -> extra zone-file lines); stop it with ``Bind.stop()``.

    Zones in ``static`` take no updates: they change by editing ``Bind.zone_file(zone)`` and ``Bind.reload()``
    (what lexicon's zone-file provider does).
    """
    if shutil.which("named") is None and not Path("/usr/sbin/named").exists():
        raise RuntimeError("named is not installed: run `make install` (Debian package bind9)")
    named = shutil.which("named") or "/usr/sbin/named"
    zones = dict(zones or {"example.test": ""})
    workdir = Path(tempfile.mkdtemp(prefix="bind-")) if workdir is None else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    secret = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    key_file = write_key_file(workdir / "tsig.key", KEY_NAME, secret)
    for attempt in range(3):
        bind = Bind(workdir, free_port(), tuple(zones), key_file, secret)
        zone_blocks = []
        for zone, extra in zones.items():
            (workdir / f"{zone}.db").write_text(_zone_file(zone, extra))
            policy = "" if zone in static else f"update-policy {{ grant {KEY_NAME} zonesub TXT; }}; "
            zone_blocks.append(f'zone "{zone}" {{ type primary; file "{zone}.db"; {policy}}};')
        (workdir / "named.conf").write_text(
            f"""options {{
    directory "{workdir}";
    pid-file "{workdir}/named.pid";
    session-keyfile "{workdir}/session.key";
    managed-keys-directory "{workdir}";
    listen-on port {bind.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-recursion {{ 127.0.0.1; }};
    allow-transfer {{ 127.0.0.1; }};
    notify no;
    dnssec-validation no;
}};
controls {{ }};
include "{key_file}";
{chr(10).join(zone_blocks)}
"""
        )
        log = workdir / "named.log"
        bind.process = subprocess.Popen(
            [named, "-g", "-4", "-n", "1", "-c", str(workdir / "named.conf")],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if bind.process.poll() is not None:
                break
            if all(_answers(bind.port, zone) for zone in zones):
                return bind
            time.sleep(0.05)
        output = log.read_text(errors="replace")
        bind.stop()
        if "address in use" in output and attempt < 2:
            continue
        raise RuntimeError(f"named did not serve {', '.join(zones)} on port {bind.port}: {output[-2000:]}")
    raise AssertionError("unreachable")


@contextmanager
def running_bind(workdir: Path | None = None, zones: Mapping[str, str] | None = None) -> Iterator[Bind]:
    bind = start_bind(workdir, zones)
    try:
        yield bind
    finally:
        bind.stop()
