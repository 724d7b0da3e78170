"""HTTP-01: the tokens certkeeper is answering right now, and the responder's view of them."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

from certkeeper.solvers.base import HTTP01, AccountKey, Challenge, Identifier

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


class Http01Solver:
    """HTTP-01 through a ``ChallengeStore`` that certkeeper's responder (or the proxy's) serves."""

    challenge_type = HTTP01

    def __init__(self, store: ChallengeStore) -> None:
        self.store = store

    def describe(self) -> str:
        return "http-01"

    def prepare(self, identifiers: Sequence[Identifier]) -> None:
        return None

    def present(self, identifier: Identifier, challenge: Challenge, account: AccountKey) -> None:
        self.store.put(challenge.token, account.key_authorization(challenge.token))

    def cleanup(self, identifier: Identifier, challenge: Challenge, account: AccountKey) -> None:
        self.store.remove(challenge.token)

    def close(self) -> None:
        return None  # the tokens die with the process


def challenge_response(store: ChallengeStore, raw_path: str) -> tuple[int, str] | None:
    """(status, body) for a challenge path, or None if the path is not under the challenge prefix.

    Matching is on the raw request path: a percent-encoded slash or dot is just an invalid token.
    """
    path = raw_path.split("?", 1)[0]
    if not path.startswith(CHALLENGE_PREFIX):
        return None
    token = path[len(CHALLENGE_PREFIX) :]
    value = store.get(token) if TOKEN_RE.fullmatch(token) else None
    if value is None:
        return 404, "no such challenge\n"
    return 200, value
