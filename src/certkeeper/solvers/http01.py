"""HTTP-01: the tokens certkeeper is answering right now, and the aiohttp handler that serves them."""

from __future__ import annotations

import re
import threading

from aiohttp import web

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
# RFC 8555 §8.3: the token is base64url without padding; CAs send 43 characters (256 bits).
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")


class ChallengeStore:
    """Token -> key authorization, written by ACME worker threads, read by the responder."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}

    def put(self, token: str, key_authorization: str) -> None:
        if not TOKEN_RE.fullmatch(token):
            raise ValueError("the CA sent a challenge token that is not base64url")
        with self._lock:
            self._tokens[token] = key_authorization

    def remove(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def get(self, token: str) -> str | None:
        with self._lock:
            return self._tokens.get(token)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokens)


def challenge_handler(store: ChallengeStore) -> web.RequestHandler:
    async def handle(request: web.Request) -> web.StreamResponse:
        # Match on the raw path so that percent-encoded slashes or dots cannot smuggle anything.
        raw = request.raw_path.split("?", 1)[0]
        token = raw[len(CHALLENGE_PREFIX) :] if raw.startswith(CHALLENGE_PREFIX) else ""
        value = store.get(token) if TOKEN_RE.fullmatch(token) else None
        if value is None:
            return web.Response(status=404, text="no such challenge\n")
        return web.Response(text=value, content_type="application/octet-stream")

    return handle
