"""certkeeper's own small HTTP server: HTTP-01 challenges and health.

Plain asyncio rather than aiohttp: importing aiohttp costs about a quarter of a second, a third of
the whole budget for a certificate from a cold start, and this server answers three kinds of GET.
It speaks enough HTTP/1.1 for CAs, probes and curl: one request per connection, bounded reads.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from certkeeper.errors import ConfigError
from certkeeper.solvers.http01 import CHALLENGE_PREFIX, ChallengeStore, challenge_response

MAX_HEAD = 8192
READ_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 2.0
# Sent with every answer, so that a second run finding the port taken can tell it is certkeeper's.
SERVER = "certkeeper"
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}

# A route answers (status, body) for a path, or (status, body, content type), or None to let the next
# route try. Plain text unless it says otherwise.
Answer = tuple[int, str] | tuple[int, str, str]
Route = Callable[[str], "Answer | None"]
# Asked, when no route answered, before the 404 (e.g. a controller replica looking a token up in the API).
Fallback = Callable[[str], Awaitable["tuple[int, str] | None"]]


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"bind address {bind!r} is not HOST:PORT", "e.g. 0.0.0.0:80 or 127.0.0.1:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


def default_routes(challenges: ChallengeStore, healthy: Callable[[], bool] = lambda: True) -> list[Route]:
    def health(path: str) -> tuple[int, str] | None:
        # /.well-known/acme-challenge/health is the original image's probe path.
        if path in ("/healthz", CHALLENGE_PREFIX + "health"):
            return (200, "OK\n") if healthy() else (503, "not ready\n")
        return None

    return [health, lambda path: challenge_response(challenges, path)]


@dataclass
class Responder:
    server: asyncio.base_events.Server
    port: int
    routes: list[Route] = field(default_factory=list)
    fallback: Fallback | None = None

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def _answer(routes: list[Route], fallback: Fallback | None, method: str, path: str) -> Answer:
    if method not in ("GET", "HEAD"):
        return 405, "only GET\n"
    missed: Answer | None = None
    for route in routes:
        found = route(path)
        if found is not None and (fallback is None or found[0] != 404):
            return found
        missed = missed or found
    if fallback is not None:
        late = await fallback(path)
        if late is not None:
            return late
    return missed or (404, "not found\n")


async def _serve(
    routes: list[Route], fallback: Fallback | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            answer: Answer = 400, "bad request\n"
            method = "GET"
        else:
            # Routes see the path without its query string.
            method, path = parts[0], parts[1].split("?", 1)[0]
            answer = await _answer(routes, fallback, method, path)
        status, body = answer[0], answer[1]
        content_type = answer[2] if len(answer) == 3 else "text/plain"
        data = body.encode()
        writer.write(
            f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nServer: {SERVER}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + (b"" if method == "HEAD" else data)
        )
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def start_responder(
    routes: list[Route], bind: str, *, reuse_port: bool = False, fallback: Fallback | None = None
) -> Responder:
    """Serve ``routes`` on ``bind``. ``reuse_port``: several processes share the port (controller replicas
    on one host), the kernel spreading connections among them as a Service would."""
    host, port = parse_bind(bind)
    try:
        server = await asyncio.start_server(
            lambda r, w: _serve(routes, fallback, r, w),
            host,
            port,
            limit=MAX_HEAD,
            reuse_address=True,
            reuse_port=reuse_port,
        )
    except OSError as error:
        failure = error
    else:
        return Responder(server=server, port=server.sockets[0].getsockname()[1], routes=routes, fallback=fallback)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if failure.errno == errno.EADDRINUSE:
        if await held_by_certkeeper(host, port):
            raise ConfigError(
                f"another certkeeper is answering HTTP-01 on {where}",
                "it finishes its own orders first; run this again when it is done, or use another --http-bind port",
            )
        raise ConfigError(
            f"cannot listen on {where} for HTTP-01: another program holds the port",
            "stop it, or give --http-bind a port the CA's requests reach",
        )
    if failure.errno == errno.EACCES:
        fix = "run as root, grant CAP_NET_BIND_SERVICE, or choose another port with --http-bind"
    else:
        fix = "check --http-bind"
    raise ConfigError(f"cannot listen on {where} for HTTP-01 ({failure.strerror})", fix)


async def held_by_certkeeper(host: str, port: int) -> bool:
    """Whether the program listening on ``host:port`` answers as certkeeper's responder does."""
    target = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(target, port), PROBE_TIMEOUT_S)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: certkeeper\r\nConnection: close\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROBE_TIMEOUT_S)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return False
    finally:
        writer.close()
    return any(line.lower() == f"server: {SERVER}".encode() for line in head.split(b"\r\n"))
