"""TLS-ALPN-01 (RFC 8737): a TLS listener that shows the CA a validation certificate per name.

The CA connects to port 443 of the name with ALPN ``acme-tls/1`` and SNI set to the name; this
listener answers with a self-signed certificate carrying the key authorization's digest in the
critical ``acmeIdentifier`` extension, negotiates ``acme-tls/1`` and closes. It is started before the
order (so a port that cannot be bound fails before the CA is asked) and serves only while names
are presented.

The same port answers a plain ``GET /certkeeper/tls-alpn-01`` with the names presented (JSON), and
holds the answer until they change when asked ``?since=GENERATION``: ``certkeeper proxy`` watches it to
put its ``acme-tls/1`` route in front of port 443 only while a challenge is in flight. Before the CA is
told to validate, ``present`` connects where the CA will (the name's port 443, or ``check``) and waits
until it sees its own validation certificate there, so a route that is not in place yet costs no
failed validation.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from certkeeper.crypto import tls_alpn_certificate
from certkeeper.errors import ConfigError
from certkeeper.solvers.base import TLSALPN01, AccountKey, Challenge, Identifier
from certkeeper.spec import ip_of
from certkeeper.web import parse_bind

log = logging.getLogger(__name__)

ALPN = "acme-tls/1"
HANDSHAKE_TIMEOUT_S = 10.0
STATUS_PATH = "/certkeeper/tls-alpn-01"
MAX_STATUS_WAIT_S = 30.0
# The self-check: how long a route may take to appear (a proxy reloading nginx), how long its answer
# must hold (nginx's old workers keep accepting for ~100 ms after a reload), and how long nothing at
# all may answer before certkeeper answers the CA anyway (a NAT without hairpinning, a name that
# resolves elsewhere inside a cluster: the CA may still get through).
CHECK_TIMEOUT_S = 30.0
CHECK_SETTLE_S = 0.3
CHECK_UNREACHABLE_S = 2.0
PROBE_TIMEOUT_S = 2.0


def _context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ALPN])
    # ssl loads certificates from files only: a private directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="certkeeper-alpn-") as directory:
        cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        with open(cert_path, "wb") as handle:
            handle.write(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem)
        context.load_cert_chain(cert_path, key_path)
    return context


class TlsAlpn01Solver:
    challenge_type = TLSALPN01

    def __init__(
        self, bind: str = "0.0.0.0:443", check: str | None = None, check_timeout: float = CHECK_TIMEOUT_S
    ) -> None:
        """``check``: HOST:PORT where the CA connects (default: the name's port 443), or ``off``."""
        self.bind = bind
        if check not in (None, "off"):
            parse_bind(check)
        self.check = check
        self.check_timeout = check_timeout
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._shown: dict[str, bytes] = {}  # identifier name -> DER of its validation certificate
        self._generation = 0
        self._socket: socket.socket | None = None

    def describe(self) -> str:
        return f"tls-alpn-01 (listening on {self.bind})"

    @property
    def port(self) -> int | None:
        return self._socket.getsockname()[1] if self._socket is not None else None

    # -- the listener ----------------------------------------------------------------------------

    def _listen(self) -> None:
        with self._lock:
            if self._socket is not None:
                return
            host, port = parse_bind(self.bind)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                sock.listen(64)
            except OSError as error:
                sock.close()
                fix = {
                    errno.EACCES: "run as root, grant CAP_NET_BIND_SERVICE, or choose another port with --tls-bind",
                    errno.EADDRINUSE: "another program listens there (a web server?): stop it, or use HTTP-01",
                }.get(error.errno or 0, "check --tls-bind")
                raise ConfigError(f"cannot listen on {host}:{port} for TLS-ALPN-01 ({error.strerror})", fix) from None
            self._socket = sock
        threading.Thread(target=self._accept, args=(sock,), name="tls-alpn-01", daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            # A TLS record starts with 0x16; a proxy asking what is presented starts with "GET ".
            if conn.recv(1, socket.MSG_PEEK) == b"G":
                self._status(conn)
            else:
                self._handshake(conn)
        except OSError as error:
            log.debug("TLS-ALPN-01 connection ended: %s", error)
        finally:
            conn.close()

    def _select(self, tls: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> int | None:
        key = (server_name or "").lower().rstrip(".")
        if not key and isinstance(tls, ssl.SSLSocket):
            # RFC 8738 §6 asks for the reverse name as SNI; a CA that sends none reached the address itself.
            local = ipaddress.ip_address(tls.getsockname()[0].split("%")[0])
            mapped = getattr(local, "ipv4_mapped", None)
            key = str(mapped or local)
        context = self._contexts.get(key)
        if context is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        tls.context = context
        return None

    def _handshake(self, conn: socket.socket) -> None:
        base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        base.set_alpn_protocols([ALPN])
        base.sni_callback = self._select
        try:
            with base.wrap_socket(conn, server_side=True) as tls:
                if tls.selected_alpn_protocol() != ALPN:
                    log.debug("a TLS-ALPN-01 connection without acme-tls/1 was closed")
        except (OSError, ssl.SSLError) as error:
            log.debug("TLS-ALPN-01 handshake ended: %s", error)

    def _status(self, conn: socket.socket) -> None:
        """``GET /certkeeper/tls-alpn-01[?since=N&wait=S]``: the presented names, held until they change."""
        request = b""
        while b"\r\n\r\n" not in request and len(request) < 4096:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        parts = request.split(b"\r\n", 1)[0].decode("latin-1").split()
        url = urlsplit(parts[1] if len(parts) == 3 and parts[0] == "GET" else "")
        if url.path != STATUS_PATH:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        query = parse_qs(url.query)
        try:
            since = int(query["since"][0]) if "since" in query else None
            wait = min(max(float(query.get("wait", ["0"])[0]), 0.0), MAX_STATUS_WAIT_S)
        except ValueError:
            since, wait = None, 0.0
        with self._changed:
            if since is not None:
                self._changed.wait_for(lambda: self._generation != since, timeout=wait)
            body = json.dumps({"generation": self._generation, "names": sorted(self._shown)}).encode()
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        conn.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)

    def close(self) -> None:
        with self._changed:
            if self._socket is not None:
                # shutdown first: close alone leaves the socket listening while a thread waits in accept().
                with contextlib.suppress(OSError):
                    self._socket.shutdown(socket.SHUT_RDWR)
                self._socket.close()
                self._socket = None
            # A watching proxy hears at once that nothing is presented any more.
            self._contexts.clear()
            self._shown.clear()
            self._generation += 1
            self._changed.notify_all()

    # -- the Solver protocol ---------------------------------------------------------------------

    def prepare(self, identifiers: Sequence[Identifier]) -> None:
        self._listen()

    def present(self, identifier: Identifier, challenge: Challenge, account: AccountKey) -> None:
        self._listen()
        cert_pem, key_pem = tls_alpn_certificate(identifier.name, account.key_authorization(challenge.token))
        context = _context(cert_pem, key_pem)
        with self._changed:
            for key in _keys(identifier.name):
                self._contexts[key] = context
            self._shown[identifier.name] = ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii"))
            self._generation += 1
            self._changed.notify_all()
        self._self_check(identifier.name, self._shown[identifier.name])

    def cleanup(self, identifier: Identifier, challenge: Challenge, account: AccountKey) -> None:
        with self._changed:
            for key in _keys(identifier.name):
                self._contexts.pop(key, None)
            self._shown.pop(identifier.name, None)
            self._generation += 1
            self._changed.notify_all()

    # -- the self-check --------------------------------------------------------------------------

    def _self_check(self, name: str, shown: bytes) -> None:
        """Return once the CA's way in shows ``shown``; raise if it keeps showing something else."""
        if self.check == "off":
            return
        address = ip_of(name)
        host, port = parse_bind(self.check) if self.check else (address or name, 443)
        where = f"{host}:{port}"
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            log.info("not checking TLS-ALPN-01 for %s before answering: %s does not resolve here", name, host)
            return
        sni = _keys(name)[-1]  # for an address, its reverse name (RFC 8738 §6), as the CA sends it
        started = time.monotonic()
        first_seen: float | None = None
        answered: str | None = None  # what a server that did answer showed instead
        while True:
            outcome, detail = _probe(host, port, sni, shown)
            now = time.monotonic()
            if outcome == "ours":
                first_seen = first_seen if first_seen is not None else now
                if now - first_seen >= CHECK_SETTLE_S:
                    log.info("%s shows the TLS-ALPN-01 certificate for %s: answering the challenge", where, name)
                    return
            else:
                first_seen = None
                if outcome == "other":
                    answered = detail
                elif answered is None and now - started >= CHECK_UNREACHABLE_S:
                    log.warning("cannot check TLS-ALPN-01 for %s at %s (%s); answering the challenge anyway",
                                name, where, detail)  # fmt: skip
                    return
            if now - started >= self.check_timeout:
                raise ConfigError(
                    f"{where} did not show certkeeper's TLS-ALPN-01 certificate for {name} within "
                    f"{self.check_timeout:g} s ({answered or detail}); the CA was not asked to validate",
                    f"route ALPN acme-tls/1 on {where} to {self.bind} (certkeeper proxy: TLS_ALPN_SERVICE), "
                    "or give --tls-alpn-check HOST:PORT where the CA connects (off: no check)",
                )
            time.sleep(0.05 if outcome == "ours" else 0.2)


def _probe(host: str, port: int, sni: str, shown: bytes) -> tuple[str, str]:
    """One connection as the CA makes it: ("ours", ""), ("other", what was seen) or ("unreachable", why)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the validation certificate is self-signed by design
    context.set_alpn_protocols([ALPN])
    try:
        raw = socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S)
    except OSError as error:
        return "unreachable", error.strerror or type(error).__name__
    try:
        with context.wrap_socket(raw, server_hostname=sni) as tls:
            peer = tls.getpeercert(binary_form=True)
            chosen = tls.selected_alpn_protocol()
    except ssl.SSLError as error:
        return "other", f"the TLS handshake failed: {error.reason or 'no reason given'}"
    except OSError as error:
        return "other", f"the connection ended: {error.strerror or type(error).__name__}"
    finally:
        raw.close()
    if peer == shown and chosen == ALPN:
        return "ours", ""
    return "other", "another certificate" if chosen == ALPN else "a server that does not speak acme-tls/1"


def _keys(name: str) -> tuple[str, ...]:
    """What the CA may send as SNI for ``name``: itself, and for an IP address its reverse name too."""
    address = ip_of(name)
    return (name, ipaddress.ip_address(address).reverse_pointer) if address else (name,)
