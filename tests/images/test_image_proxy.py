"""The proxy image as Kubernetes runs it: its entry point, a Secret volume, a tmpfs for its files."""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from certkeeper.solvers.base import AccountKey, Challenge, Identifier
from certkeeper.solvers.tlsalpn01 import ALPN, TlsAlpn01Solver
from testbench import containers, images
from testbench.pki import TestCA
from testbench.volumes import write_secret_volume

HOST = "proxy.test"
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # RFC 8737's acmeIdentifier extension
ROOT = Path(__file__).resolve().parents[2]


class _Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"from the backend\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def backend_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()


@pytest.fixture
def secrets_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ckimage-secrets-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def https_get(port: int, ca: TestCA) -> tuple[int, bytes]:
    """(serial of the certificate served, response body) for GET / with SNI proxy.test."""
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        serial = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"").serial_number
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := tls.recv(65536):
            reply += chunk
    return serial, reply


def wait_for(what: str, condition: object, seconds: float, log: Path) -> None:
    """Generous bounded wait for something a user would see; not a timing assertion."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if callable(condition) and condition():
                return
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds} s: {what}\n{log.read_text(errors='replace')[-3000:]}")


def test_the_proxy_image_serves_https_from_a_secret_volume_and_picks_up_a_rotation(
    built: dict[str, images.Built], backend_port: int, secrets_dir: Path, tmp_path: Path
) -> None:
    ca = TestCA("image test CA", days=2)
    first, second = ca.issue([HOST]), ca.issue([HOST])
    write_secret_volume(secrets_dir, {"proxycert": first.cert_pem + ca.cert_pem, "proxykey": first.key_pem})
    http_port, https_port = free_port(), free_port()
    # As deploy/proxy runs it: its user, its volumes (the Secret read-only, an emptyDir in memory for
    # everything the proxy writes), and nothing else writable: readOnlyRootFilesystem.
    pod = containers.pod_spec(ROOT / "deploy" / "proxy" / "deployment.yaml")
    assert pod["securityContext"]["runAsUser"] == images.UID
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = containers.pod_mounts(pod, {"certs": secrets_dir})
    assert containers.Mount(images.PROXY_RUN_DIR) in mounts, "the proxy's run directory is not a volume"
    log = tmp_path / "proxy.log"
    with containers.container(built["certkeeper-proxy"].reference, mounts) as box:
        box.set_env(
            {
                "ENABLE_SSL": "true",
                "SERVER_NAME": HOST,
                "TARGET_SERVICE": f"127.0.0.1:{backend_port}",
                "HTTP_PORT": str(http_port),
                "HTTPS_PORT": str(https_port),
                "LISTEN_ADDRESS": "127.0.0.1",
                "CERT_POLL_SECONDS": "0.2",
                # nginx reopens /dev/stdout for its access log. runc hands the container's stdio pipes
                # to the container's user; buildah's chroot runtime keeps them root's, so a non-root
                # nginx may not reopen them here.
                "ACCESS_LOG": "off",
            }
        )
        assert box.run(["/bin/true"]).returncode == 0
        before = box.written()
        with log.open("wb") as out:
            running = box.start(box.entrypoint, out)
        try:
            wait_for(
                "HTTPS with the first certificate",
                lambda: https_get(https_port, ca)[0] == first.cert.serial_number,
                30,
                log,
            )
            _, reply = https_get(https_port, ca)
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"from the backend\n")

            processes = running.processes()
            nginx = [p for p in processes if p.name() == "nginx"]
            assert len(nginx) >= 2, "an nginx master and at least one worker"
            assert {p.uids().effective for p in processes} == {images.UID}, "everything must run unprivileged"

            write_secret_volume(secrets_dir, {"proxycert": second.cert_pem + ca.cert_pem, "proxykey": second.key_pem})
            wait_for(
                "the rotated certificate served",
                lambda: https_get(https_port, ca)[0] == second.cert.serial_number,
                15,
                log,
            )
        finally:
            exit_code = running.stop()
        assert exit_code == 0, log.read_text(errors="replace")[-3000:]
        assert box.written() == before, "the proxy wrote into the image outside its run directory"


def alpn_peer(port: int) -> x509.Certificate:
    """The certificate shown to a client offering only ALPN acme-tls/1 (as the CA validating TLS-ALPN-01)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the validation certificate is self-signed by design
    context.set_alpn_protocols([ALPN])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        assert tls.selected_alpn_protocol() == ALPN
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")


def alpn_refused(port: int) -> bool:
    try:
        alpn_peer(port)
    except ssl.SSLError:
        return True
    return False


def test_the_proxy_image_routes_tls_alpn01_to_certkeeper_and_the_rest_to_https(
    built: dict[str, images.Built], backend_port: int, secrets_dir: Path, tmp_path: Path
) -> None:
    ca = TestCA("image test CA", days=2)
    served = ca.issue([HOST])
    write_secret_volume(secrets_dir, {"proxycert": served.cert_pem + ca.cert_pem, "proxykey": served.key_pem})
    # certkeeper's responder, outside the image, with a challenge in flight from the start.
    responder = TlsAlpn01Solver(f"127.0.0.1:{free_port()}", check="off")
    challenge = (Identifier(HOST), Challenge("tls-alpn-01", "token"), AccountKey("thumbprint"))
    responder.present(*challenge)
    http_port, https_port = free_port(), free_port()
    mounts = containers.pod_mounts(containers.pod_spec(ROOT / "deploy" / "proxy" / "deployment.yaml"),
                                   {"certs": secrets_dir})  # fmt: skip
    log = tmp_path / "proxy.log"
    try:
        with containers.container(built["certkeeper-proxy"].reference, mounts) as box:
            box.set_env(
                {
                    "ENABLE_SSL": "true",
                    "TARGET_SERVICE": f"127.0.0.1:{backend_port}",
                    "TLS_ALPN_SERVICE": responder.bind,
                    "HTTP_PORT": str(http_port),
                    "HTTPS_PORT": str(https_port),
                    "LISTEN_ADDRESS": "127.0.0.1",
                    "ACCESS_LOG": "off",
                }
            )
            with log.open("wb") as out:
                running = box.start(box.entrypoint, out)
            try:
                serial = served.cert.serial_number
                wait_for("HTTPS behind the ALPN front", lambda: https_get(https_port, ca)[0] == serial, 30, log)
                _, reply = https_get(https_port, ca)
                assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"from the backend\n")
                validation = alpn_peer(https_port)
                assert validation.extensions.get_extension_for_oid(ACME_IDENTIFIER).critical
                assert validation.serial_number != served.cert.serial_number
                # The challenge over, the proxy takes the front off: acme-tls/1 meets the HTTPS server.
                responder.cleanup(*challenge)
                wait_for("acme-tls/1 refused by the HTTPS server", lambda: alpn_refused(https_port), 30, log)
                assert https_get(https_port, ca)[0] == serial
            finally:
                exit_code = running.stop()
            assert exit_code == 0, log.read_text(errors="replace")[-3000:]
    finally:
        responder.close()
