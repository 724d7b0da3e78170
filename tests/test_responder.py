"""The HTTP-01 responder under fuzzed paths: only exact known tokens are answered, nothing crashes it."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certkeeper.solvers.http01 import CHALLENGE_PREFIX, ChallengeStore
from certkeeper.web import Responder, default_routes, start_responder

TOKENS = {
    "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0": "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0.thumbprint-one",
    "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA": "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.thumbprint-two",
    "a_-_token_with_only_the-url_safe_alphabet99": "a_-_token_with_only_the-url_safe_alphabet99.thumbprint-3",
}
KEY_AUTHORIZATIONS = set(TOKENS.values())
HEALTH_PATHS = {"/healthz", CHALLENGE_PREFIX + "health"}


@dataclass
class Server:
    port: int
    responder: Responder
    loop: asyncio.AbstractEventLoop


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    challenges = ChallengeStore()
    for token, key_authorization in TOKENS.items():
        challenges.put(token, key_authorization)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    responder = asyncio.run_coroutine_threadsafe(
        start_responder(default_routes(challenges), "127.0.0.1:0"), loop
    ).result(timeout=10)
    try:
        yield Server(responder.port, responder, loop)
    finally:
        asyncio.run_coroutine_threadsafe(responder.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def request(port: int, raw: bytes) -> tuple[int, bytes]:
    """Send raw bytes; return (status, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split(b" ")
    assert status_line[0] == b"HTTP/1.1", response[:200]
    return int(status_line[1]), body


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    return request(port, f"{method} {path} HTTP/1.1\r\nHost: fuzz.test\r\n\r\n".encode())


def expected_answer(path: str) -> bytes | None:
    """The body a 200 must carry for this path, or None when it must be refused."""
    bare = path.split("?", 1)[0]
    if bare in HEALTH_PATHS:
        return b"OK\n"
    if bare.startswith(CHALLENGE_PREFIX) and bare[len(CHALLENGE_PREFIX) :] in TOKENS:
        return TOKENS[bare[len(CHALLENGE_PREFIX) :]].encode()
    return None


def test_known_tokens_are_answered_with_their_key_authorization(server: Server) -> None:
    for token, key_authorization in TOKENS.items():
        assert get(server.port, CHALLENGE_PREFIX + token) == (200, key_authorization.encode())


def test_unknown_token_and_other_methods_are_refused(server: Server) -> None:
    unknown = "X" * 43
    assert get(server.port, CHALLENGE_PREFIX + unknown)[0] == 404
    token = next(iter(TOKENS))
    assert get(server.port, CHALLENGE_PREFIX + token, method="POST")[0] == 405
    status, body = get(server.port, CHALLENGE_PREFIX + token, method="HEAD")
    assert (status, body) == (200, b"")
    assert request(server.port, b"GARBAGE\r\n\r\n")[0] == 400


def test_a_token_removed_is_no_longer_answered() -> None:
    challenges = ChallengeStore()
    token = "removed-token-0123456789abcdefghijklmnopqr"
    challenges.put(token, token + ".thumb")

    async def scenario() -> tuple[int, int]:
        responder = await start_responder(default_routes(challenges), "127.0.0.1:0")
        try:
            before = await asyncio.to_thread(get, responder.port, CHALLENGE_PREFIX + token)
            challenges.remove(token)
            after = await asyncio.to_thread(get, responder.port, CHALLENGE_PREFIX + token)
        finally:
            await responder.stop()
        return before[0], after[0]

    assert asyncio.run(scenario()) == (200, 404)


# -- fuzzing ---------------------------------------------------------------------------------------

_known = st.sampled_from(sorted(TOKENS))
_pieces = st.one_of(
    st.sampled_from(["..", ".", "/", "//", "%2F", "%2f", "%2e%2e", "%2E", "%00", "?", "?x=1", "#", ";", "\\", "~"]),
    st.sampled_from([".well-known", "acme-challenge", "health", "healthz", "/.well-known/acme-challenge/"]),
    _known,
    _known.map(lambda t: t[:-1]),
    _known.map(lambda t: t + "A"),
    _known.map(lambda t: t.upper()),
    st.tuples(_known, st.integers(0, 42)).map(lambda p: p[0][: p[1]] + f"%{ord(p[0][p[1]]):02X}" + p[0][p[1] + 1 :]),
    st.text(st.characters(codec="utf-8", exclude_characters=" \r\n"), max_size=40),
)
_paths = st.one_of(
    st.tuples(_known, st.sampled_from(["", "?", "?x=1", "/", "%2F", "/..", "#", "%20", "."])).map(
        lambda p: CHALLENGE_PREFIX + p[0] + p[1]
    ),
    st.lists(_pieces, max_size=12).map(lambda ps: CHALLENGE_PREFIX + "".join(ps)),
    st.lists(_pieces, max_size=12).map(lambda ps: "/" + "".join(ps)),
    st.lists(_pieces, max_size=12).map("".join),
    st.text(st.characters(codec="utf-8", exclude_characters=" \r\n"), min_size=200, max_size=1500),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=_paths)
def test_fuzzed_paths_only_exact_tokens_are_answered(server: Server, path: str) -> None:
    status, body = get(server.port, path)
    wanted = expected_answer(path)
    if wanted is not None:
        assert (status, body) == (200, wanted)
    else:
        assert status in (400, 404), (path, status)
        assert not any(k.encode() in body for k in KEY_AUTHORIZATIONS)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.binary(max_size=2000))
def test_fuzzed_request_heads_never_crash_the_responder(server: Server, head: bytes) -> None:
    raw = head.replace(b"\r\n\r\n", b"") + b"\r\n\r\n"
    status, body = request(server.port, raw)
    assert status in (400, 404, 405)
    assert not any(k.encode() in body for k in KEY_AUTHORIZATIONS)
    # And it still answers the next request properly.
    token = next(iter(TOKENS))
    assert get(server.port, CHALLENGE_PREFIX + token) == (200, TOKENS[token].encode())
