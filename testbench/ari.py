"""A small ACME front for tests: Pebble plus ACME Renewal Information (RFC 9773).

Pebble 2.4 has no ARI. ``AcmeFront`` listens over HTTPS on loopback and reverse-proxies every
request to Pebble unchanged, keeping the ``Host`` header so that Pebble builds all its URLs (and
checks every JWS ``url``) against the front. It adds ``renewalInfo`` to the directory, answers
``GET /renewal-info/<certid>`` with a window the test sets, and records what clients sent: every
request line, the payload of each order the CA created (to assert ``replaces``) and every
renewal-info query.

It can also play a CA gone wrong (``reset()`` puts everything right again):
``rate_limit_retry_after`` refuses new orders as at a rate limit; ``authorizations_stay_pending``
reports every authorization as pending forever; ``certificate_fault`` spoils each certificate
downloaded in one of the ways in ``CERTIFICATE_FAULTS``; ``delay_s`` / ``post_delay_s`` answer every
request (or every POST) late; ``new_order_html_status`` answers new orders with an HTML error page;
``bad_nonce_rate`` rejects that share of POSTs as ``badNonce`` (as Pebble's ``PEBBLE_WFE_NONCEREJECT``
does, but counted here);
``authorizations_expire`` reports that many validated authorizations ``expired`` (the CA's clock ran
out mid-order); ``unavailable_retry_after`` answers new orders 503 with a Retry-After; ``reset_rate`` drops that
share of POST connections without an answer. ``new_order_times`` holds when each newOrder arrived.

The front runs its own event loop on a background thread; the test drives a client (typically the
``certkeeper`` command in a subprocess) against ``front.directory_url`` with ``front.ca_bundle``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDict

from testbench.pebble import Pebble, start_pebble
from testbench.pki import TestCA

RENEWAL_INFO_PATH = "/renewal-info"
RETRY_AFTER_S = 21600
# Hop-by-hop and framing headers that each side sets for itself.
_DROP_REQUEST = {"connection", "keep-alive", "transfer-encoding", "content-length", "accept-encoding", "te"}
_DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


# How ``certificate_fault`` spoils a certificate: each breaks one rule a client must check.
CERTIFICATE_FAULTS = {
    "lacks-name": "the last name the order asked for is left out",
    "expires-sooner": "it expires a day before the certificate the CA issued",
    "wrong-key": "it is for another key than the one in the CSR",
    "not-yet-valid": "it becomes valid only tomorrow",
    "replay": "the certificate downloaded before this one is sent again",
}
_PEM_CHAIN = "application/pem-certificate-chain"
_BAD_CA = TestCA("a CA gone wrong")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class AcmeFront:
    """A running front. Set ``window`` to decide what renewal-info answers."""

    pebble: Pebble
    port: int = 0
    # The suggested renewal window (start, end) served for every certificate, unless ``windows``
    # has one for its certificate id.
    window: tuple[datetime.datetime, datetime.datetime] | None = None
    windows: dict[str, tuple[datetime.datetime, datetime.datetime]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) as received
    orders: list[dict[str, Any]] = field(default_factory=list)  # decoded newOrder JWS payloads
    order_times: list[float] = field(default_factory=list)  # time.time() when the CA created each of ``orders``
    order_urls: list[str] = field(default_factory=list)  # the CA's URL (Location) of each order it answered
    renewal_info_queries: list[str] = field(default_factory=list)  # certificate ids asked about
    # ACME profiles advertised in the directory's meta (Pebble 2.4 has none and ignores the order field).
    profiles: dict[str, str] = field(default_factory=dict)
    # When set, every newOrder is refused as Let's Encrypt does at a rate limit, with this Retry-After.
    rate_limit_retry_after: int | None = None
    # When set, every authorization is reported pending, however Pebble's validation went.
    authorizations_stay_pending: bool = False
    # How many validated authorizations to report ``expired`` instead (the CA's clock ran out mid-order).
    authorizations_expire: int = 0
    authorizations_expired: int = 0  # how many were
    # When set (a key of CERTIFICATE_FAULTS), every certificate downloaded is spoiled that way.
    certificate_fault: str | None = None
    _last_chain: bytes | None = None
    # Seconds every request waits before it is answered: a slow or overloaded CA.
    delay_s: float = 0.0
    # When set, every newOrder gets this HTTP status with an HTML page, as a proxy in front of a CA sends.
    new_order_html_status: int | None = None
    # Seconds more for every POST: the order's requests hang while the directory and nonces stay fast.
    post_delay_s: float = 0.0
    accounts_created: list[str] = field(default_factory=list)  # URLs of accounts the CA registered (201)
    # Called with (method, path) before each request is passed on: a test's way to act at an exact
    # moment of an order (e.g. fill the disk when the certificate is downloaded). Runs on the front's loop.
    before_request: Callable[[str, str], None] | None = None
    # When set, each finalize request waits this long before it reaches the CA: a client can be
    # killed mid-order at a known moment.
    hold_finalize_s: float = 0.0
    # Share (0..1) of POSTs rejected with badNonce before they reach Pebble; and how many were.
    bad_nonce_rate: float = 0.0
    bad_nonces_sent: int = 0
    # When set, every newOrder gets a 503 problem with this Retry-After (a CA down for maintenance).
    unavailable_retry_after: int | None = None
    # Share (0..1) of POSTs whose connection is closed without an answer (after Pebble got them).
    reset_rate: float = 0.0
    reset_paths: list[str] = field(default_factory=list)  # the requests whose connection was dropped
    orders_lost: int = 0  # orders the CA created whose answer was dropped (the client never heard of them)
    # time.time() of every newOrder request received (answered or not): to count them against a Retry-After.
    new_order_times: list[float] = field(default_factory=list)
    _random: random.Random = field(default_factory=lambda: random.Random(11))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _new_order_path: str = ""
    _new_account_path: str = ""
    _new_nonce_path: str = ""

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}{urlsplit(self.pebble.directory_url).path}"

    @property
    def new_order_path(self) -> str:
        return self._new_order_path

    @property
    def new_account_path(self) -> str:
        return self._new_account_path

    @property
    def ca_bundle(self) -> Path:
        """The front serves Pebble's own TLS certificate: trust the same anchor."""
        return self.pebble.ca_bundle

    @property
    def http_port(self) -> int:
        """Where Pebble's HTTP-01 validation connects (unchanged by the front)."""
        return self.pebble.http_port

    # -- what the test controls and reads ------------------------------------------------------

    def set_window(self, start: datetime.datetime, end: datetime.datetime, cert_id: str | None = None) -> None:
        """The window for one certificate id, or (``cert_id`` None) for all others."""
        with self._lock:
            if cert_id is None:
                self.window = (start, end)
            else:
                self.windows[cert_id] = (start, end)

    def window_in_past(self, cert_id: str | None = None) -> None:
        """Renewal is due now: the window ended a day ago."""
        now = datetime.datetime.now(datetime.UTC)
        self.set_window(now - datetime.timedelta(days=2), now - datetime.timedelta(days=1), cert_id)

    def window_in_future(self, cert_id: str | None = None) -> None:
        """Renewal is not due: the window opens in 30 days."""
        now = datetime.datetime.now(datetime.UTC)
        self.set_window(now + datetime.timedelta(days=30), now + datetime.timedelta(days=31), cert_id)

    def reset(self) -> None:
        """Forget recorded traffic; no profiles; the window goes back to 'in the future'."""
        with self._lock:
            self.profiles.clear()
            self.rate_limit_retry_after = None
            self.authorizations_stay_pending = False
            self.authorizations_expire = 0
            self.authorizations_expired = 0
            self.certificate_fault = None
            self.delay_s = 0.0
            self.post_delay_s = 0.0
            self.new_order_html_status = None
            self.hold_finalize_s = 0.0
            self.bad_nonce_rate = 0.0
            self.bad_nonces_sent = 0
            self.unavailable_retry_after = None
            self.reset_rate = 0.0
            self.reset_paths.clear()
            self.orders_lost = 0
            self.new_order_times.clear()
            self.requests.clear()
            self.orders.clear()
            self.order_times.clear()
            self.order_urls.clear()
            self.accounts_created.clear()
            self.before_request = None
            self.renewal_info_queries.clear()
            self.windows.clear()
        self.window_in_future()

    def restart_ca_at(self, path_part: str = "/finalize-order/") -> list[bool]:
        """Once, at the first request whose path holds ``path_part`` (before it reaches the CA, on the front's
        loop, which waits meanwhile): Pebble SIGKILLed and started again, a CA that lost its database. The
        list returned gets True when that happened."""
        restarted: list[bool] = []

        def lose_the_database(method: str, path: str) -> None:
            if path_part in path and not restarted:
                restarted.append(True)
                self.pebble.restart()

        self.before_request = lose_the_database
        return restarted

    def recorded_orders(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.orders)

    def recorded_order_times(self) -> dict[str, float]:
        """When the CA created the first order for each name (a name's later orders are not shown)."""
        with self._lock:
            pairs = list(zip(self.orders, self.order_times, strict=True))
        first: dict[str, float] = {}
        for order, at in pairs:
            for identifier in order.get("identifiers", []):
                first.setdefault(str(identifier.get("value", "")), at)
        return first

    def recorded_accounts(self) -> list[str]:
        with self._lock:
            return list(self.accounts_created)

    def recorded_new_order_times(self) -> list[float]:
        with self._lock:
            return list(self.new_order_times)

    def recorded_requests(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.requests)

    def recorded_renewal_info_queries(self) -> list[str]:
        with self._lock:
            return list(self.renewal_info_queries)

    # -- the server ----------------------------------------------------------------------------

    def _upstream(self) -> str:
        parts = urlsplit(self.pebble.directory_url)
        return f"{parts.scheme}://{parts.netloc}"

    def _spoil(self, chain: bytes) -> bytes:
        """The chain as a faulty CA would send it (``certificate_fault``); remembers good ones for replay."""
        with self._lock:
            fault, previous = self.certificate_fault, self._last_chain
            self._last_chain = chain
        if fault is None:
            return chain
        if fault == "replay":
            assert previous is not None, "nothing was downloaded before: nothing to replay"
            with self._lock:
                self._last_chain = previous
            return previous
        end = b"-----END CERTIFICATE-----\n"
        leaf_pem, _, rest = chain.partition(end)
        leaf = x509.load_pem_x509_certificate(leaf_pem + end)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
        tomorrow = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
        changes: dict[str, dict[str, Any]] = {
            "lacks-name": {"names": names[:-1]},
            "expires-sooner": {"not_after": leaf.not_valid_after_utc - datetime.timedelta(days=1)},
            "wrong-key": {"public_key": ec.generate_private_key(ec.SECP256R1()).public_key()},
            "not-yet-valid": {"not_before": tomorrow},
        }
        spoiled = _BAD_CA.reissue(leaf, **changes[fault])
        return spoiled.public_bytes(serialization.Encoding.PEM) + rest

    def _authorization_pending(self, payload: bytes) -> bytes:
        body = json.loads(payload)
        if not (isinstance(body, dict) and "identifier" in body and "challenges" in body):
            return payload  # not an authorization
        body["status"] = "pending"
        for challenge in body["challenges"]:
            challenge["status"] = "pending"
            challenge.pop("validated", None)
        return json.dumps(body).encode()

    def _authorization_expired(self, payload: bytes) -> bytes:
        body = json.loads(payload)
        if not (isinstance(body, dict) and "identifier" in body and "challenges" in body):
            return payload  # not an authorization
        with self._lock:
            if body.get("status") != "valid" or self.authorizations_expire <= 0:
                return payload
            self.authorizations_expire -= 1
            self.authorizations_expired += 1
        body["status"] = "expired"
        return json.dumps(body).encode()

    async def _renewal_info(self, request: web.Request) -> web.Response:
        cert_id = request.match_info["cert_id"]
        with self._lock:
            self.requests.append((request.method, request.path_qs))
            self.renewal_info_queries.append(cert_id)
            window = self.windows.get(cert_id, self.window)
            delay = self.delay_s
        await asyncio.sleep(delay)
        if window is None or "." not in cert_id:
            return web.json_response({"type": "urn:ietf:params:acme:error:malformed"}, status=404)
        body = {"suggestedWindow": {"start": _rfc3339(window[0]), "end": _rfc3339(window[1])}}
        return web.json_response(body, headers={"Retry-After": str(RETRY_AFTER_S)})

    async def _proxy(self, request: web.Request) -> web.Response:
        body = await request.read()
        order: dict[str, Any] | None = None
        is_post, is_new_order = request.method == "POST", request.path == self._new_order_path
        with self._lock:
            self.requests.append((request.method, request.path_qs))
            delay = self.delay_s + (self.post_delay_s if is_post else 0.0)
            before = self.before_request
            if is_post and is_new_order:
                self.new_order_times.append(time.time())
            bad_nonce = is_post and self._random.random() < self.bad_nonce_rate
            self.bad_nonces_sent += bad_nonce
            reset = is_post and not bad_nonce and self._random.random() < self.reset_rate
            unavailable = self.unavailable_retry_after if is_post and is_new_order else None
        await asyncio.sleep(delay)
        if before is not None:
            before(request.method, request.path)
        if bad_nonce:
            problem = {
                "type": "urn:ietf:params:acme:error:badNonce",
                "detail": "JWS has an invalid anti-replay nonce (test front)",
                "status": 400,
            }
            # Pebble's own fresh nonce rides along, as a CA sends one with every answer.
            assert self._session is not None
            async with self._session.head(self._upstream() + self._new_nonce_path) as fresh:
                nonce = fresh.headers.get("Replay-Nonce", "")
            return web.Response(status=400, text=json.dumps(problem), content_type="application/problem+json",
                                headers={"Replay-Nonce": nonce})  # fmt: skip
        if unavailable:
            problem = {
                "type": "urn:ietf:params:acme:error:serverInternal",
                "detail": "down for maintenance (test front)",
                "status": 503,
            }
            return web.Response(
                status=503,
                text=json.dumps(problem),
                content_type="application/problem+json",
                headers={"Retry-After": str(unavailable)},
            )
        if request.method == "POST" and request.path == self._new_order_path and self.new_order_html_status:
            page = "<html><body><h1>Bad Gateway</h1></body></html>\n"
            return web.Response(status=self.new_order_html_status, text=page, content_type="text/html")
        if request.method == "POST" and request.path == self._new_order_path and self.rate_limit_retry_after:
            problem = {
                "type": "urn:ietf:params:acme:error:rateLimited",
                "detail": "too many new orders recently (test front)",
                "status": 429,
            }
            limited = {"Retry-After": str(self.rate_limit_retry_after), "Content-Type": "application/problem+json"}
            return web.Response(status=429, text=json.dumps(problem), headers=limited)
        if request.method == "POST" and "/finalize-order/" in request.path and self.hold_finalize_s:
            await asyncio.sleep(self.hold_finalize_s)
        if request.method == "POST" and request.path == self._new_order_path:
            try:
                order = json.loads(_b64url_decode(json.loads(body)["payload"]))
            except (ValueError, KeyError, TypeError):
                order = {"unreadable": body.decode("latin-1")}
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST)
        headers["Host"] = request.host
        headers["Accept-Encoding"] = "identity"
        assert self._session is not None
        async with self._session.request(
            request.method,
            self._upstream() + request.path_qs,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            content_type = upstream.headers.get("Content-Type", "")
            if upstream.status == 200 and content_type.startswith(_PEM_CHAIN):
                payload = self._spoil(payload)
            if (
                self.authorizations_stay_pending
                and upstream.status == 200
                and content_type.startswith("application/json")
            ):
                payload = self._authorization_pending(payload)
            if self.authorizations_expire and upstream.status == 200 and content_type.startswith("application/json"):
                payload = self._authorization_expired(payload)
            if reset:
                # The CA did the work; the client never hears of it (a load balancer dropping the connection).
                with self._lock:
                    self.reset_paths.append(request.path)
                    if order is not None and upstream.status == 201:
                        self.orders.append(order)
                        self.order_times.append(time.time())
                        self.orders_lost += 1
                assert request.transport is not None
                request.transport.abort()
                raise ConnectionResetError("connection reset (test front)")
            if request.path == self._new_account_path and upstream.status == 201:
                with self._lock:
                    self.accounts_created.append(upstream.headers.get("Location", ""))
            if order is not None and upstream.status == 201:
                # Only orders the CA created: a request refused for a stale nonce (Pebble rejects
                # some at random) and sent again is one order, not two.
                with self._lock:
                    self.orders.append(order)
                    self.order_times.append(time.time())
                    self.order_urls.append(upstream.headers.get("Location", ""))
            out = CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE)
            if request.method == "GET" and request.path == urlsplit(self.pebble.directory_url).path:
                directory = json.loads(payload)
                directory["renewalInfo"] = f"https://{request.host}{RENEWAL_INFO_PATH}"
                with self._lock:
                    if self.profiles:
                        directory.setdefault("meta", {})["profiles"] = dict(self.profiles)
                payload = json.dumps(directory).encode()
            return web.Response(status=upstream.status, body=payload, headers=out)

    async def _start(self) -> None:
        upstream_tls = ssl.create_default_context(cafile=str(self.pebble.ca_bundle))
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=upstream_tls))
        async with self._session.get(self.pebble.directory_url) as response:
            directory = await response.json()
        self._new_order_path = urlsplit(directory["newOrder"]).path
        self._new_account_path = urlsplit(directory["newAccount"]).path
        self._new_nonce_path = urlsplit(directory["newNonce"]).path
        app = web.Application()
        app.router.add_get(RENEWAL_INFO_PATH + "/{cert_id}", self._renewal_info)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        serving_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        serving_tls.load_cert_chain(str(self.pebble.tls.cert_pem), str(self.pebble.tls.key_pem))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=serving_tls)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None


def start_front(pebble: Pebble) -> AcmeFront:
    """Start an ARI front for a running Pebble; stop it with ``AcmeFront.stop()``."""
    front = AcmeFront(pebble=pebble)
    front.window_in_future()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="acme-front", daemon=True)
    thread.start()
    front._loop, front._thread = loop, thread
    try:
        asyncio.run_coroutine_threadsafe(front._start(), loop).result(timeout=10)
    except BaseException:
        front.stop()
        raise
    return front


@contextmanager
def private_front(
    workdir: Path, env: Mapping[str, str] | None = None, http_port: int | None = None
) -> Iterator[AcmeFront]:
    """A Pebble of its own behind a front, for a test that restarts the CA or changes how it behaves (``env``),
    or that needs a second CA validating HTTP-01 at the same ``http_port`` as the first."""
    pebble = start_pebble(workdir, env=dict(env or {}), http_port=http_port)
    front = start_front(pebble)
    try:
        yield front
    finally:
        front.stop()
        pebble.stop()
