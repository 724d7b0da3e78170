"""The one aiohttp application certkeeper serves: HTTP-01 challenges and health."""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass

from aiohttp import web

from certkeeper.errors import ConfigError
from certkeeper.solvers.http01 import CHALLENGE_PREFIX, ChallengeStore, challenge_handler


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"bind address {bind!r} is not HOST:PORT", "e.g. 0.0.0.0:80 or 127.0.0.1:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


def build_app(challenges: ChallengeStore) -> web.Application:
    app = web.Application()

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="OK")

    app.router.add_get("/healthz", ok)
    # The original image's probe path.
    app.router.add_get(CHALLENGE_PREFIX + "health", ok)
    app.router.add_get(CHALLENGE_PREFIX + "{token:.*}", challenge_handler(challenges))
    return app


@dataclass
class Responder:
    """The running web app; ``port`` is the bound port (useful with port 0)."""

    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_responder(app: web.Application, bind: str) -> Responder:
    host, port = parse_bind(bind)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        if error.errno == errno.EACCES:
            fix = "run as root, grant CAP_NET_BIND_SERVICE, or choose another port with --http-bind"
        elif error.errno == errno.EADDRINUSE:
            fix = "another program listens there: stop it or choose another port with --http-bind"
        else:
            fix = "check --http-bind"
        raise ConfigError(f"cannot listen on {host}:{port} for HTTP-01 ({error.strerror})", fix) from None
    server = site._server
    bound = port
    if isinstance(server, asyncio.base_events.Server) and server.sockets:
        bound = server.sockets[0].getsockname()[1]
    return Responder(runner=runner, port=bound)
