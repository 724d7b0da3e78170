"""HTTP to the CA: retries ``badNonce`` (bounded) and turns transport failures into one-line errors."""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import logging
import os
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import requests
from acme import client as acme_client
from acme import messages

from certkeeper import __version__
from certkeeper.errors import CAError
from certkeeper.observe.acme_stats import STATS

log = logging.getLogger(__name__)

# A CA rejecting half of all nonces fails a POST after n tries with probability 2**-n: with 10 tries,
# one in ten runs of ten certificates (~100 POSTs) failed. 30 makes that about one POST in 10**9.
BAD_NONCE_RETRIES = 30
USER_AGENT = f"certkeeper/{__version__}"


class Unreachable(CAError):
    """No answer from the CA (refused, reset, timed out before the task's deadline): the request may or may
    not have reached it."""


class Network(acme_client.ClientNetwork):
    """One per worker thread: ``acme`` and its requests session are not thread-safe."""

    # Retry-After of the last response, in seconds: the library drops headers when it raises a
    # problem, and a rate limit's Retry-After must still reach the planner.
    last_retry_after: float | None = None
    # While a task runs (an order, the directory request): its deadline (time.monotonic()), length
    # and name. Every request, the nonce HEADs included, waits at most the time left, so a slow CA
    # cannot stretch the task past it.
    deadline: float | None = None
    budget_s: float = 0.0
    task: str = "the order"
    _proxies: dict[str, dict[str, str]] | None = None  # per scheme://host: the environment's proxies for it

    def _proxies_for(self, url: str) -> dict[str, str]:
        """HTTP(S)_PROXY / ALL_PROXY for ``url``, or none when NO_PROXY covers its host."""
        parts = urllib.parse.urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if self._proxies is None:
            self._proxies = {}
        if origin not in self._proxies:
            self._proxies[origin] = dict(requests.utils.get_environ_proxies(url))
        return self._proxies[origin]

    @contextlib.contextmanager
    def within(self, seconds: float, task: str) -> Iterator[float]:
        """Bound every request made inside by one deadline ``seconds`` from now; yields the deadline."""
        self.deadline, self.budget_s, self.task = time.monotonic() + seconds, seconds, task
        try:
            yield self.deadline
        finally:
            self.deadline = None

    def deadline_error(self) -> CAError:
        return CAError(
            f"the CA did not finish {self.task} within {self.budget_s:g} s",
            "the CA is slow or overloaded; certkeeper tries again later (--order-timeout sets the limit)",
        )

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        # The library retries a rejected nonce once; a CA that rejects half of them (as Pebble
        # can be told to) needs more tries, still bounded so a broken CA cannot spin us.
        for attempt in range(BAD_NONCE_RETRIES):
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce" or attempt == BAD_NONCE_RETRIES - 1:
                    raise
                STATS.nonce_retry(str(args[0]) if args else "")
                log.debug("CA rejected the nonce; retrying (%d)", attempt + 1)
        raise AssertionError("unreachable")

    def _past_deadline(self) -> bool:
        # The timeout given to requests was the time left, so it ends (within a tick) at the deadline.
        return self.deadline is not None and time.monotonic() >= self.deadline - 0.1

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        if not self.session.trust_env:
            kwargs.setdefault("proxies", self._proxies_for(url))
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise self.deadline_error()
            kwargs["timeout"] = min(kwargs.get("timeout") or self._default_timeout, left)
        self.last_retry_after = None  # a reset connection has none: an earlier response's must not stand in
        started = time.monotonic()
        try:
            response = super()._send_request(method, url, *args, **kwargs)
            # Only a refusal's (429, a problem) or a CA's down time's (503): a successful poll's
            # Retry-After paces that poll alone and must not become a failure's back-off.
            if response.status_code >= 400:
                self.last_retry_after = retry_after_seconds(response)
            STATS.request(url, method, response.status_code, time.monotonic() - started,
                          self.last_retry_after is not None)  # fmt: skip
            return response
        except requests.exceptions.SSLError as error:
            STATS.request(url, method, "error", time.monotonic() - started, False)
            raise CAError(
                f"cannot verify the TLS certificate of the CA at {url}",
                "for a private CA pass its root with --ca-bundle",
            ) from error
        except requests.exceptions.RequestException as error:
            STATS.request(url, method, "error", time.monotonic() - started, False)
            if isinstance(error, requests.exceptions.Timeout) and self._past_deadline():
                raise self.deadline_error() from error
            raise Unreachable(
                f"cannot reach the CA at {url} ({type(error).__name__})",
                "check --server and that this host can reach it",
            ) from error


def retry_after_seconds(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def make_network(key: Any, ca_bundle: str | None, timeout: int = 30) -> Network:
    network = Network(
        key=key,
        alg=_alg_for(key),
        # What requests would take from the environment at every request, taken once.
        verify_ssl=ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True,  # type: ignore[arg-type]
        user_agent=USER_AGENT,
        timeout=timeout,
    )
    # requests reads the whole environment twice per request for proxies (about a millisecond with a
    # container's environment, at every nonce, poll and POST); they are looked up once per CA instead.
    # A .netrc is no longer consulted: ACME requests are signed, never sent with a password.
    network.session.trust_env = False
    return network


def _alg_for(key: Any) -> Any:
    from josepy.jwa import ES256, ES384, RS256
    from josepy.jwk import JWKEC

    if isinstance(key, JWKEC):
        return {"P-256": ES256, "P-384": ES384}[key.fields_to_partial_json()["crv"]]
    return RS256
