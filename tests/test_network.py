"""Talking to the CA over HTTP: bounded badNonce retries, Retry-After, one-line transport errors.

Pebble rejects nonces only at random; this small HTTPS server (real sockets, real TLS) answers the
way a CA does at the edges: every nonce refused, a few refused, other problems, Retry-After forms.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from acme import messages
from josepy.jwa import ES256, ES384, RS256
from josepy.jwk import JWKEC, JWKRSA

from certkeeper import __version__
from certkeeper.acme.network import BAD_NONCE_RETRIES, Network, make_network, retry_after_seconds
from certkeeper.crypto import generate_key, load_key
from certkeeper.errors import CAError
from certkeeper.spec import KeyType
from testbench.pebble import free_port
from testbench.pki import TestCA


@dataclass
class CaEdge:
    """What the server does next; what it saw."""

    bad_nonces_left: int = 0
    problem: str | None = None  # an ACME problem type to answer every POST with
    retry_after: str | None = None
    posts: int = 0
    user_agents: list[str] = field(default_factory=list)
    nonces: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(edge: CaEdge) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _send(self, status: int, body: dict[str, object] | None, content_type: str) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            with edge.lock:
                edge.nonces += 1
                nonce = base64.urlsafe_b64encode(f"nonce-{edge.nonces}".encode()).decode().rstrip("=")
            self.send_response(status)
            self.send_header("Replay-Nonce", nonce)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if edge.retry_after is not None:
                self.send_header("Retry-After", edge.retry_after)
            self.end_headers()
            self.wfile.write(data)

        def do_HEAD(self) -> None:
            if self.path != "/nonce":  # nonces come from newNonce only
                self.send_response(405)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send(200, None, "application/json")

        def do_GET(self) -> None:
            self.user_agent()
            self._send(200, {"hello": "ca"}, "application/json")

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.user_agent()
            with edge.lock:
                edge.posts += 1
                bad = edge.bad_nonces_left > 0
                if bad:
                    edge.bad_nonces_left -= 1
            problem = "badNonce" if bad else edge.problem
            if problem:
                body = {"type": f"urn:ietf:params:acme:error:{problem}", "detail": f"{problem} (test CA)"}
                self._send(400, body, "application/problem+json")
            else:
                self._send(200, {"status": "valid"}, "application/json")

        def user_agent(self) -> None:
            with edge.lock:
                edge.user_agents.append(self.headers.get("User-Agent", ""))

    return Handler


@dataclass
class EdgeServer:
    edge: CaEdge
    url: str
    ca_file: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    ca = TestCA("network test CA")
    leaf = ca.issue(["localhost"], ips=["127.0.0.1"])
    folder = tmp_path_factory.mktemp("network-tls")
    (folder / "ca.pem").write_bytes(ca.cert_pem)
    (folder / "cert.pem").write_bytes(leaf.cert_pem)
    (folder / "key.pem").write_bytes(leaf.key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return folder / "ca.pem", context


@pytest.fixture
def server(tls: tuple[Path, ssl.SSLContext]) -> Iterator[EdgeServer]:
    edge = CaEdge()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(edge))
    httpd.socket = tls[1].wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield EdgeServer(edge, f"https://127.0.0.1:{httpd.server_address[1]}", tls[0])
    finally:
        httpd.shutdown()
        httpd.server_close()


def jwk(kind: KeyType = KeyType.EC_P256) -> JWKEC | JWKRSA:
    key = load_key(generate_key(kind))
    return JWKRSA(key=key) if kind.value.startswith("rsa") else JWKEC(key=key)


def post(server: EdgeServer, net: Network | None = None) -> requests.Response:
    net = net or make_network(jwk(), str(server.ca_file))
    return net.post(server.url + "/order", None, new_nonce_url=server.url + "/nonce")


def test_a_few_rejected_nonces_are_retried(server: EdgeServer, caplog: pytest.LogCaptureFixture) -> None:
    server.edge.bad_nonces_left = 5  # more than the one retry the ACME library makes by itself
    with caplog.at_level(logging.DEBUG, logger="certkeeper.acme.network"):
        assert post(server).json() == {"status": "valid"}
    assert server.edge.posts == 6
    said = [r.getMessage() for r in caplog.records if r.name == "certkeeper.acme.network"]
    assert said == [f"CA rejected the nonce; retrying ({n})" for n in range(1, 6)]


def test_a_ca_rejecting_every_nonce_is_given_up_on(server: EdgeServer) -> None:
    server.edge.bad_nonces_left = 10**6
    with pytest.raises(messages.Error) as caught:
        post(server)
    assert caught.value.code == "badNonce"
    assert server.edge.posts == BAD_NONCE_RETRIES == 30


def test_other_problems_are_not_retried(server: EdgeServer) -> None:
    server.edge.problem = "malformed"
    with pytest.raises(messages.Error) as caught:
        post(server)
    assert caught.value.code == "malformed"
    assert server.edge.posts == 1


def test_the_last_refusals_retry_after_is_kept_for_the_planner(server: EdgeServer) -> None:
    net = make_network(jwk(), str(server.ca_file))
    server.edge.retry_after = "120"
    server.edge.problem = "rateLimited"
    with pytest.raises(messages.Error):
        post(server, net)
    assert net.last_retry_after == 120.0
    # A successful answer's Retry-After (a poll's pacing) is no refusal: it does not stand in for one.
    server.edge.problem = None
    net.get(server.url + "/directory")
    assert net.last_retry_after is None


def test_requests_name_certkeeper(server: EdgeServer) -> None:
    post(server)
    expected = f"certkeeper/{__version__}"
    assert server.edge.user_agents and all(ua.startswith(expected) for ua in server.edge.user_agents)


def test_an_untrusted_ca_certificate_is_one_clear_line(server: EdgeServer) -> None:
    net = make_network(jwk(), None)  # the system's roots do not know the test CA
    with pytest.raises(CAError) as caught:
        net.get(server.url + "/directory")
    assert str(caught.value) == (
        f"cannot verify the TLS certificate of the CA at {server.url}/directory: "
        "for a private CA pass its root with --ca-bundle"
    )


def test_an_unreachable_ca_is_one_clear_line() -> None:
    url = f"https://127.0.0.1:{free_port()}/directory"
    with pytest.raises(CAError) as caught:
        make_network(jwk(), None).get(url)
    assert str(caught.value) == (
        f"cannot reach the CA at {url} (ConnectionError): check --server and that this host can reach it"
    )


@pytest.mark.parametrize(
    ("kind", "alg"), [(KeyType.EC_P256, ES256), (KeyType.EC_P384, ES384), (KeyType.RSA_2048, RS256)]
)
def test_the_signature_algorithm_follows_the_account_key(kind: KeyType, alg: object) -> None:
    assert make_network(jwk(kind), None).alg is alg


def response(retry_after: str | None) -> requests.Response:
    answer = requests.Response()
    if retry_after is not None:
        answer.headers["Retry-After"] = retry_after
    return answer


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("", None), ("120", 120.0), ("1.5", 1.5), ("-5", 0.0), ("soon", None)],
)
def test_retry_after_in_seconds(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(response(value)) == seconds


def test_retry_after_as_a_date() -> None:
    now = datetime.datetime.now(datetime.UTC)
    later = email.utils.format_datetime(now + datetime.timedelta(hours=1), usegmt=True)
    waited = retry_after_seconds(response(later))
    assert waited is not None and 3500 < waited <= 3600
    earlier = email.utils.format_datetime(now - datetime.timedelta(hours=1), usegmt=True)
    assert retry_after_seconds(response(earlier)) == 0.0


def test_a_silent_ca_times_out_with_a_clear_line() -> None:
    # A CA that accepts the connection and never answers: the request gives up after the timeout
    # it was given (30 s in use; 1 s here) instead of hanging the renewal.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/directory"
    outcome: list[BaseException] = []

    def ask() -> None:
        try:
            make_network(jwk(), None, timeout=1).get(url)
        except BaseException as error:
            outcome.append(error)

    worker = threading.Thread(target=ask, daemon=True)
    try:
        worker.start()
        worker.join(20)  # a hang guard, far beyond the timeout
        assert not worker.is_alive(), "the request to a silent CA did not time out"
    finally:
        silent.close()
    assert len(outcome) == 1 and isinstance(outcome[0], CAError)
    assert str(outcome[0]) == (
        f"cannot reach the CA at {url} (ReadTimeout): check --server and that this host can reach it"
    )


# -- one deadline for a whole task: no request outlives it ------------------------------------------


def _in_thread(call: object) -> BaseException | None:
    """Run ``call`` with a hang guard far beyond any deadline here; its exception, if any."""
    assert callable(call)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:
            outcome.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(15)
    assert not worker.is_alive(), "the request outlived its deadline"
    return outcome[0] if outcome else None


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A CA that accepts connections and never answers."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        yield f"http://127.0.0.1:{silent.getsockname()[1]}/directory"
    finally:
        silent.close()


def test_a_silent_ca_ends_the_task_at_its_deadline(silent_url: str) -> None:
    net = make_network(jwk(), None)  # 30 s per request: the task's 1 s deadline wins

    def ask() -> None:
        with net.within(1, "the directory request"):
            net.get(silent_url)

    error = _in_thread(ask)
    assert isinstance(error, CAError)
    assert str(error) == (
        "the CA did not finish the directory request within 1 s: "
        "the CA is slow or overloaded; certkeeper tries again later (--order-timeout sets the limit)"
    )


def test_a_shorter_timeout_of_a_request_is_kept_inside_a_task(silent_url: str) -> None:
    net = make_network(jwk(), None)

    def ask() -> None:
        with net.within(2.0, "the order"):
            net.get(silent_url, timeout=1.2)

    error = _in_thread(ask)
    # The request gave up after its own 1.2 s, 0.8 s before the task's deadline: not a deadline error.
    assert isinstance(error, CAError) and str(error) == (
        f"cannot reach the CA at {silent_url} (ReadTimeout): check --server and that this host can reach it"
    )


def test_no_request_is_sent_once_the_deadline_has_passed(server: EdgeServer) -> None:
    net = make_network(jwk(), str(server.ca_file))
    with net.within(0, "the order") as deadline, pytest.raises(CAError) as caught:
        net.get(server.url + "/directory")
    assert deadline <= time.monotonic()
    assert str(caught.value).startswith("the CA did not finish the order within 0 s: ")
    assert server.edge.user_agents == [], "nothing reached the CA"
    assert net.get(server.url + "/directory").json() == {"hello": "ca"}, "outside a task, no deadline applies"


def test_less_than_a_second_left_still_allows_a_quick_request(server: EdgeServer) -> None:
    net = make_network(jwk(), str(server.ca_file))
    with net.within(0.8, "the order"):
        assert net.get(server.url + "/directory").json() == {"hello": "ca"}
    assert net.deadline is None


class ConnectRecorder:
    """A proxy that records the CONNECT lines it is sent, and refuses them (no tunnel is needed to tell)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            with conn:
                self.lines.append(conn.recv(4096).split(b"\r\n", 1)[0].decode())
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")


def test_the_environments_proxy_and_no_proxy_are_honoured_once_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = ConnectRecorder()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "direct.test")
    net = make_network(generate_key(KeyType.EC_P256), None)
    for _ in range(2):
        with pytest.raises(CAError):
            net._send_request("HEAD", "https://ca.test/acme/new-nonce")
    assert [line.rsplit(" ", 1)[0] for line in proxy.lines] == ["CONNECT ca.test:443"] * 2
    with pytest.raises(CAError):  # NO_PROXY: straight to the host (which does not resolve), not to the proxy
        net._send_request("HEAD", "https://direct.test/acme/new-nonce")
    assert len(proxy.lines) == 2
