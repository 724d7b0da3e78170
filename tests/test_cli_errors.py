"""What the user sees when the input, the CA or the port is wrong: one line that says what and how to fix it.

Every case runs the real ``certkeeper`` command against real servers: Pebble, the ACME front (made slow
for the deadline), a small local HTTP server that is not a CA, and a real socket holding the port.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbench.ari import AcmeFront
from testbench.command import CERTKEEPER, Env, Run, one_error_line
from testbench.pebble import Pebble

# -- a --file that is not UTF-8 ------------------------------------------------------------------


def test_name_file_that_is_not_utf8_is_one_line(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    names = tmp_path / "names.txt"
    names.write_bytes(b"good.test\ncaf\xe9.test\n")  # Latin-1, as an old editor saves it
    result = certkeeper(ari_env, "issue", "--file", str(names))
    assert result.returncode == 2
    line = one_error_line(result)
    assert "line 2 is not UTF-8" in line and "save the file as UTF-8" in line
    assert ari.recorded_requests() == []
    assert not store.exists()


# -- a server URL that is not an ACME directory --------------------------------------------------

NOT_A_CA = {
    "/missing": (404, "text/plain", b"404 page not found\n"),
    "/bad-request": (400, "text/plain", b"bad request\n"),
    "/html": (200, "text/html", b"<!doctype html><html><body>Welcome to nginx!</body></html>\n"),
    "/json": (200, "application/json", json.dumps({"status": "ok", "version": 3}).encode()),
    "/list": (200, "application/json", b"[1, 2, 3]"),
}


class _NotACa(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, kind, body = NOT_A_CA.get(self.path, (404, "text/plain", b"no\n"))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def not_a_ca() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotACa)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("path", list(NOT_A_CA), ids=[p.strip("/") for p in NOT_A_CA])
def test_server_url_that_is_not_an_acme_directory_is_one_line(
    path: str, not_a_ca: str, env: Env, store: Path, certkeeper: Run
) -> None:
    url = not_a_ca + path
    result = certkeeper({**env, "CERTKEEPER_SERVER": url}, "issue", "nodir.test")
    assert result.returncode not in (0, 2)
    line = one_error_line(result)
    assert f"{url} is not an ACME directory" in line, line
    assert "check --server" in line
    assert "Response [" not in line and "Error:" not in line
    assert not (store / "nodir.test" / "cert.pem").exists()


def test_pebble_path_that_is_not_its_directory_is_one_line(
    pebble: Pebble, env: Env, store: Path, certkeeper: Run
) -> None:
    """Over HTTPS, as a user mistyping the path of a real CA would see it."""
    url = pebble.directory_url.rsplit("/", 1)[0] + "/directory-typo"
    result = certkeeper({**env, "CERTKEEPER_SERVER": url}, "issue", "typo.test")
    assert result.returncode not in (0, 2)
    line = one_error_line(result)
    assert f"{url} is not an ACME directory (HTTP 404)" in line, line


def test_error_page_instead_of_a_problem_document_is_one_line(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run
) -> None:
    ari.new_order_html_status = 502
    result = certkeeper(ari_env, "issue", "gateway.test")
    assert result.returncode == 1
    line = one_error_line(result)
    assert "the CA answered HTTP 502 at https://127.0.0.1:" in line and "without saying why" in line, line
    assert "Response [" not in line


def test_plain_http_server_off_loopback_is_warned_about(env: Env, certkeeper: Run) -> None:
    url = "http://acme.invalid/directory"
    result = certkeeper({**env, "CERTKEEPER_SERVER": url}, "issue", "plain.test")
    assert result.returncode != 0
    first = result.stderr.splitlines()[0]
    assert first.startswith("certkeeper: warning: ") and url in first and "https://" in first


def test_plain_http_server_on_loopback_is_not_warned_about(not_a_ca: str, env: Env, certkeeper: Run) -> None:
    result = certkeeper({**env, "CERTKEEPER_SERVER": not_a_ca + "/missing"}, "issue", "plain.test")
    assert "warning" not in result.stderr


# -- a --ca-bundle that is not a certificate -----------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"this is not a certificate\n", b"", b"\x00\x01binary\xff"],
    ids=["text", "empty", "binary"],
)
def test_ca_bundle_without_a_certificate_is_refused_at_start(
    content: bytes, ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(content)
    result = certkeeper({**ari_env, "CERTKEEPER_CA_BUNDLE": str(bundle)}, "issue", "bundle.test")
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"--ca-bundle {bundle} holds no PEM certificate" in line, line
    assert ari.recorded_requests() == []
    assert not store.exists()


def test_private_key_given_as_ca_bundle_is_refused_without_echoing_it(
    pebble: Pebble, ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run
) -> None:
    key_file = pebble.tls.key_pem
    result = certkeeper({**ari_env, "CERTKEEPER_CA_BUNDLE": str(key_file)}, "renew")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "holds no PEM certificate" in line
    assert "PRIVATE KEY" not in result.stderr + result.stdout
    assert ari.recorded_requests() == []


# -- the HTTP-01 port ----------------------------------------------------------------------------


def test_http_bind_port_zero_is_refused(ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run) -> None:
    result = certkeeper({**ari_env, "CERTKEEPER_HTTP_BIND": "127.0.0.1:0"}, "issue", "zero.test")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "port 0" in line and "--http-bind" in line
    assert ari.recorded_requests() == []


def test_port_held_by_another_program_names_the_port(env: Env, store: Path, certkeeper: Run) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = certkeeper({**env, "CERTKEEPER_HTTP_BIND": f"127.0.0.1:{port}"}, "issue", "held.test")
    assert result.returncode != 0
    line = one_error_line(result)
    assert f"127.0.0.1:{port}" in line and "another program" in line and "--http-bind" in line
    assert "certkeeper is" not in line


def _wait_for_listener(port: int, proc: subprocess.Popen[str]) -> None:
    for _ in range(600):
        assert proc.poll() is None, "the first run ended before it listened"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listened on {port}")


def test_port_held_by_another_certkeeper_says_so(
    pebble: Pebble, ari: AcmeFront, ari_env: Env, env: Env, tmp_path: Path, certkeeper: Run
) -> None:
    ari.delay_s = 2.0  # the first run is slow to get its certificate, so it holds the port a while
    first = subprocess.Popen([CERTKEEPER, "issue", "first.test"], env=ari_env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        _wait_for_listener(pebble.http_port, first)
        second = certkeeper({**env, "CERTKEEPER_STORE": str(tmp_path / "other")}, "issue", "second.test")
        ari.delay_s = 0.0
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode != 0
    line = one_error_line(second)
    assert f"another certkeeper is answering HTTP-01 on 127.0.0.1:{pebble.http_port}" in line, line
    assert "finish" in line
    assert first.returncode == 0, err
    assert out.startswith("issued first.test")


# -- one deadline per order, progress at -v ------------------------------------------------------


@pytest.mark.parametrize(
    ("delay", "post_delay", "task"),
    [(1.0, 0.0, "the order"), (0.0, 8.0, "the order"), (8.0, 0.0, "the directory request")],
    ids=["every-request-slow", "one-order-request-past-the-deadline", "directory-past-the-deadline"],
)
def test_slow_ca_gives_one_error_within_the_order_deadline(
    delay: float, post_delay: float, task: str, ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run
) -> None:
    # The account is registered at full speed: the deadline is per order.
    assert certkeeper(ari_env, "issue", "fast.test").returncode == 0
    ari.delay_s, ari.post_delay_s = delay, post_delay
    result = certkeeper(ari_env, "issue", "--order-timeout", "3", "slow.test")
    assert result.returncode == 1
    line = one_error_line(result)
    assert f"slow.test: the CA did not finish {task} within 3 s" in line, line
    assert "--order-timeout" in line
    assert not (store / "slow.test" / "cert.pem").exists()


def test_order_timeout_is_checked(ari_env: Env, certkeeper: Run) -> None:
    result = certkeeper(ari_env, "issue", "--order-timeout", "0", "zero.test")
    assert result.returncode == 2
    assert "--order-timeout" in result.stderr


def test_progress_lines_at_verbose(ari: AcmeFront, ari_env: Env, certkeeper: Run) -> None:
    result = certkeeper(ari_env, "issue", "-v", "progress.test", "www.progress.test")
    assert result.returncode == 0, result.stderr
    log = result.stderr
    for step in (
        "ordering progress.test www.progress.test",
        "validating progress.test",
        "validating www.progress.test",
        "finalizing progress.test",
        "downloaded progress.test",
    ):
        assert step in log, log
    quiet = certkeeper(ari_env, "issue", "--force", "progress.test", "www.progress.test")
    assert quiet.returncode == 0 and quiet.stderr == ""
