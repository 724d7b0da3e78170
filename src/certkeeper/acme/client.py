"""Ordering a certificate: new order (with ``replaces``), challenges through solvers, finalize, download.

One ``AcmeClient`` per worker thread. Polling is ours rather than the library's (which sleeps a
whole second between polls): it starts at 100 ms, grows, honours ``Retry-After`` and stops at a
deadline, so a certificate from a fast CA takes a fraction of a second and a slow CA is not hammered.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import requests
from acme import challenges, messages
from acme import client as acme_client
from josepy.json_util import field

from certkeeper.acme.account import Account
from certkeeper.acme.directory import fetch_directory
from certkeeper.acme.network import Unreachable, make_network, retry_after_seconds
from certkeeper.acme.problems import from_problem, translate
from certkeeper.crypto import cert_info, chain_issuer_names, key_matches_cert, load_csr, make_csr, split_pem_chain
from certkeeper.errors import CAError, CertkeeperError, ConfigError
from certkeeper.model import CertInfo, IssuedCert, RenewalWindow
from certkeeper.observe.acme_stats import STATS
from certkeeper.solvers.base import AccountKey, Challenge, Identifier, Solver, Solvers
from certkeeper.spec import CertSpec, IssuerSpec, ip_of

log = logging.getLogger(__name__)

FIRST_POLL_S = 0.1
POLL_GROWTH = 1.5
MAX_POLL_S = 5.0
MAX_RETRY_AFTER_S = 600.0
SHORT_LIVED = "shortlived"
# A request inside an order whose connection dropped is sent again after these pauses (within the order's
# deadline): each is safe to repeat (RFC 8555: POST-as-GET, a challenge's {}, finalize), and giving up
# would cost a whole new order. newOrder itself is never repeated blind: the CA may have created it.
RESEND_PAUSES_S = (0.2, 1.0, 3.0)
# Authorization states that say nothing about the names: the CA let it lapse or withdrew it mid-order.
GONE_AUTHZ = frozenset({"expired", "deactivated", "revoked"})


class AuthorizationGone(Exception):
    """An authorization the CA reports expired (or withdrawn) mid-order: a new order gets fresh ones."""

    def __init__(self, name: str, status: str) -> None:
        super().__init__(f"authorization for {name} is {status}")
        self.name = name
        self.status = status


def _gone(body: dict[str, Any]) -> str | None:
    """The authorization's status when it lapsed rather than failed validation (no challenge error), else None."""
    status = str(body.get("status", ""))
    failed = any(c.get("error") for c in body.get("challenges", []) if isinstance(c, dict))
    return status if status in GONE_AUTHZ or (status == "invalid" and not failed) else None


class NewOrder(messages.NewOrder):
    """RFC 9773 §5: ``replaces`` names the certificate this order renews (exempts it from LE's limits)."""

    replaces: str | None = field("replaces", omitempty=True)


Presented = tuple[Solver, Identifier, Challenge]


class OrderGate(Protocol):
    """Wraps the newOrder request (``certkeeper.ledger``): may refuse it, records what the CA answered."""

    def placing(self, retry_after: Callable[[], float | None]) -> contextlib.AbstractContextManager[None]: ...


class AcmeClient:
    """Talks to one CA as one account. Not thread-safe: make one per worker thread."""

    def __init__(self, issuer: IssuerSpec, account: Account, directory: messages.Directory | None = None) -> None:
        self.issuer = issuer
        self.account = account
        self.jwk = account.jwk()
        self.account_key = AccountKey(base64.urlsafe_b64encode(self.jwk.thumbprint()).rstrip(b"=").decode("ascii"))
        self.net = make_network(self.jwk, issuer.ca_bundle)
        if directory is None:
            STATS.directory(issuer.directory_url, {})
            with self.net.within(issuer.order_timeout_s, "the directory request"):
                directory = fetch_directory(issuer, self.net)
        self.directory = directory
        STATS.directory(issuer.directory_url, directory.to_partial_json())  # names its URLs in /metrics
        self.net.account = messages.RegistrationResource(body=messages.Registration(), uri=account.url)
        self.client = acme_client.ClientV2(self.directory, self.net)

    # -- transport -------------------------------------------------------------------------------

    def _post(self, url: str, obj: Any) -> requests.Response:
        response: requests.Response = self.net.post(url, obj, new_nonce_url=self.directory["newNonce"])
        return response

    def _post_again(self, url: str, obj: Any) -> requests.Response:
        """``_post``, sent again (bounded) when the connection dropped before an answer."""
        for pause in RESEND_PAUSES_S:
            try:
                return self._post(url, obj)
            except Unreachable as error:
                log.info("no answer from the CA (%s); sending the request again in %g s", error.problem, pause)
                time.sleep(pause)
        return self._post(url, obj)

    def _poll(self, url: str, done: Callable[[dict[str, Any]], bool], deadline: float, what: str) -> dict[str, Any]:
        delay = FIRST_POLL_S
        while True:
            time.sleep(delay)
            response = self._post_again(url, None)
            body: dict[str, Any] = response.json()
            if done(body):
                return body
            wait = delay
            hinted = retry_after_seconds(response)
            if hinted is not None:
                wait = max(wait, min(hinted, MAX_RETRY_AFTER_S))
            if time.monotonic() + wait > deadline:
                log.info("the CA is still busy with %s; giving up at the order's deadline", what)
                raise self.net.deadline_error()
            delay = min(wait * POLL_GROWTH, MAX_POLL_S)

    # -- ordering --------------------------------------------------------------------------------

    def _check_profile(self, profile: str | None) -> None:
        if not profile:
            return
        offered = dict(getattr(self.directory.meta, "profiles", None) or {})
        if profile not in offered:
            choices = ", ".join(sorted(offered)) or "none"
            raise ConfigError(
                f"the CA does not offer the profile {profile!r}",
                f"choose one it offers ({choices}) or drop --profile",
            )

    def _profile_for_addresses(self, spec: CertSpec) -> CertSpec:
        """Let's Encrypt issues IP-address certificates only with its short-lived profile: ask for it when offered."""
        if spec.profile or not any(ip_of(n) for n in spec.names):
            return spec
        offered = dict(getattr(self.directory.meta, "profiles", None) or {})
        if SHORT_LIVED not in offered:
            return spec
        log.warning("%s: an IP-address certificate; using the CA's %r profile", spec.names[0], SHORT_LIVED)
        return dataclasses.replace(spec, profile=SHORT_LIVED)

    def _new_order(
        self, spec: CertSpec, replaces: str | None, gate: OrderGate | None = None
    ) -> tuple[str, dict[str, Any]]:
        identifiers = [
            messages.Identifier(typ=messages.IDENTIFIER_IP if ip_of(n) else messages.IDENTIFIER_FQDN, value=n)
            for n in spec.names
        ]
        order = NewOrder(identifiers=identifiers, profile=spec.profile or "", replaces=replaces)
        try:
            with gate.placing(lambda: self.net.last_retry_after) if gate else contextlib.nullcontext():
                response = self._post(self.directory["newOrder"], order)
        except messages.Error as error:
            # A CA may refuse ``replaces`` (already replaced, or unknown to it): order without it
            # rather than fail the renewal.
            if replaces and (error.code in ("alreadyReplaced", "conflict") or "replace" in (error.detail or "")):
                log.warning("CA refused replaces=%s (%s); ordering without it", replaces, error.detail)
                return self._new_order(spec, None, gate)
            raise
        return response.headers["Location"], response.json()

    def _authorize(self, authz_url: str, solvers: Solvers, presented: list[Presented]) -> str | None:
        """Present one authorization's challenge with the solver chosen for its name; returns its URL to poll."""
        response = self._post_again(authz_url, None)
        lapsed = _gone(response.json())
        if lapsed:
            raise AuthorizationGone(str(response.json().get("identifier", {}).get("value", "?")), lapsed)
        authz = messages.Authorization.from_json(response.json())
        if authz.status == messages.STATUS_VALID:
            log.info("%s: already validated", authz.identifier.value)
            return None
        log.info("validating %s", authz.identifier.value)
        identifier = Identifier(authz.identifier.value, bool(authz.wildcard))
        offered = _answerable(authz)
        solver = solvers.for_name(str(identifier), offered)
        if solver is None:
            raise CAError(
                f"no configured solver answers the challenges the CA offers for {identifier} "
                f"({', '.join(sorted(offered)) or 'none'})",
                "configure a solver for one of them",
            )
        uri, token = offered[solver.challenge_type]
        challenge = Challenge(solver.challenge_type, token)
        # Recorded before presenting, so a half-done present is cleaned up too.
        presented.append((solver, identifier, challenge))
        solver.present(identifier, challenge, self.account_key)
        # RFC 8555 §7.5.1: the client says it is ready by posting an empty object ({}) to the challenge. The
        # library's empty ChallengeResponse is falsy and would go out as a POST-as-GET; this one is not.
        key_authorization = self.account_key.key_authorization(token)
        ready = challenges.KeyAuthorizationChallengeResponse(key_authorization=key_authorization)
        try:
            self._post(uri, ready)
        except Unreachable as error:
            log.info("no answer to the challenge response (%s); sending it again", error.problem)
            try:
                self._post_again(uri, ready)
            except messages.Error as refused:
                # The first copy reached the CA, which is validating (or has): the authorization says how it went.
                log.info("the CA already took the challenge response (%s)", refused.detail)
        return authz_url

    def _cleanup(self, presented: list[Presented]) -> None:
        for solver, identifier, challenge in presented:
            try:
                solver.cleanup(identifier, challenge, self.account_key)
            except Exception as error:  # cleanup must not hide the order's own outcome
                log.warning("could not clean up the %s challenge for %s: %s", challenge.type, identifier, error)

    def _resume(self, url: str, spec: CertSpec) -> dict[str, Any] | None:
        """The order at ``url`` if it can still give a certificate for ``spec``, else None."""
        try:
            order: dict[str, Any] = self._post(url, None).json()
        except Exception as error:  # gone, expired, another account's: place a new order instead
            # The problem only: the fix a failed order would get (e.g. "remove the account directory") is not
            # the user's to do here, and names a host's store even under `certkeeper run`.
            log.info("cannot resume the order %s (%s); placing a new one", url, translate(error).problem)
            return None
        names = sorted(i.get("value", "") for i in order.get("identifiers", []))
        if order.get("status") in ("invalid", None) or names != sorted(spec.names):
            log.info("the order %s is %s; placing a new one", url, order.get("status"))
            return None
        log.info("resuming the order %s (%s)", url, order.get("status"))
        return order

    def find_order(self, names: tuple[str, ...], key_pem: bytes, limit: int = 20, pages: int = 10) -> str | None:
        """An order of this account for ``names`` that can still give a certificate for ``key_pem``: its URL.

        For an order another process was about to place when it lost its record (RFC 8555 §7.1.2.1, the
        account's orders list; None when the CA keeps none, as Let's Encrypt does). Only the ``limit`` newest
        are looked at (the order sought was placed moments before its record was lost), newest first; a valid
        order counts only if its certificate is for ``key_pem``.
        """
        try:
            account = self._post(self.account.url, None).json()
            url = account.get("orders")
            listed: list[str] = []
            for _ in range(pages if url else 0):
                response = self._post(str(url), None)
                listed.extend(str(u) for u in response.json().get("orders") or ())
                url = next((link["url"] for link in requests.utils.parse_header_links(response.headers.get("Link", ""))
                            if link.get("rel") == "next" and link.get("url")), None)  # fmt: skip
                if not url:
                    break
            for order_url in reversed(listed[-limit:]):
                order = self._post(order_url, None).json()
                if sorted(i.get("value", "") for i in order.get("identifiers", [])) != sorted(names):
                    continue
                status = order.get("status")
                if status in ("pending", "ready", "processing"):
                    return order_url
                if status == "valid" and order.get("certificate"):
                    leaf = split_pem_chain(self._post(order["certificate"], None).content)[0]
                    if key_matches_cert(key_pem, leaf):
                        return order_url
        except CertkeeperError:
            raise
        except Exception as error:
            raise translate(error) from error
        return None

    def order(
        self,
        spec: CertSpec,
        key_pem: bytes,
        solvers: Solvers,
        *,
        replaces: str | None = None,
        timeout_s: float | None = None,
        resume_url: str | None = None,
        on_placed: Callable[[str], None] | None = None,
        gate: OrderGate | None = None,
        on_placing: Callable[[], None] | None = None,
    ) -> IssuedCert:
        """Order, validate, finalize and download one certificate for ``spec`` with ``key_pem``.

        One deadline (``timeout_s``, by default the issuer's order timeout) covers every request of
        the order, not only the polls: a CA that answers each request slowly still ends it in time.
        ``resume_url``: an order placed earlier with this key (by a process that died mid-order): it is
        continued from where it stands, and a new one placed only if it cannot be. ``on_placed`` gets a
        new order's URL before anything else happens to it, so that it can be recorded and resumed.
        ``on_placing`` is called before each newOrder request: it records the intent (key and names) where
        another process finds it, and raises to keep the order from being sent when it cannot.
        ``gate`` wraps the newOrder request (the rate-limit ledger): it may refuse it before it is sent.
        """
        budget = timeout_s if timeout_s is not None else self.issuer.order_timeout_s
        hooks = (on_placing, on_placed)
        with self.net.within(budget, "the order") as deadline:
            return self._order(spec, key_pem, solvers, replaces, deadline, resume_url, hooks, gate)

    def _order(
        self,
        spec: CertSpec,
        key_pem: bytes,
        solvers: Solvers,
        replaces: str | None,
        deadline: float,
        resume_url: str | None,
        hooks: tuple[Callable[[], None] | None, Callable[[str], None] | None],
        gate: OrderGate | None = None,
    ) -> IssuedCert:
        presented: list[Presented] = []
        try:
            spec = self._profile_for_addresses(spec)
            self._check_profile(spec.profile)
            solvers.prepare(spec.names)
            try:
                order_url, order = self._authorized(spec, solvers, replaces, deadline, resume_url, hooks,
                                                    gate, presented)  # fmt: skip
            except AuthorizationGone as lapsed:
                # Not a validation failure: the CA let the authorization lapse (its clock, a slow
                # validation, an order resumed too late). One new order, with fresh authorizations.
                log.warning("%s: the CA reports the authorization %s mid-order; placing one new order",
                            lapsed.name, lapsed.status)  # fmt: skip
                self._cleanup(presented)
                presented.clear()
                try:
                    order_url, order = self._authorized(spec, solvers, replaces, deadline, None, hooks,
                                                        gate, presented)  # fmt: skip
                except AuthorizationGone as again:
                    raise CAError(
                        f"authorization for {again.name} is {again.status} again, in a new order",
                        "the CA's authorizations lapse before validation ends: check the CA's clock and status",
                    ) from None
            if order.get("status") == "ready":
                log.info("finalizing %s", spec.names[0])
                csr = load_csr(make_csr(key_pem, spec.names))
                resent: list[bool] = []
                try:
                    order = self._finalize(order["finalize"], messages.CertificateRequest(csr=csr), resent).json()
                except messages.Error as error:
                    # A resumed order the dead process finalized meanwhile, or a finalize sent again whose
                    # first copy reached the CA: wait for its certificate.
                    if error.code != "orderNotReady" or (resume_url is None and not resent):
                        raise
                    order = {"status": "processing"}
            if order.get("status") != "valid":
                order = self._poll(order_url, lambda b: b.get("status") in ("valid", "invalid"), deadline, "issuance")
            if order["status"] != "valid":
                problem = order.get("error")
                if problem:
                    raise translate(messages.Error.from_json(problem), spec.names)
                raise CAError("the CA marked the order invalid without saying why")
            fullchain = self._download(order["certificate"], spec.preferred_chain)
        except CertkeeperError:
            raise
        except Exception as error:
            problem = translate(error, spec.names)
            if isinstance(problem, CAError) and problem.retry_after is None:
                # rateLimited, or a CA that is down for a while (503): its Retry-After says when to come back.
                problem.retry_after = self.net.last_retry_after
            raise problem from error
        finally:
            self._cleanup(presented)
        parts = split_pem_chain(fullchain)
        info = cert_info(parts[0])
        log.info("downloaded %s: serial %s, expires %s", spec.names[0], info.serial, info.not_after.date())
        return IssuedCert(key_pem=key_pem, cert_pem=parts[0], chain_pem=b"".join(parts[1:]), info=info)

    def _authorized(
        self,
        spec: CertSpec,
        solvers: Solvers,
        replaces: str | None,
        deadline: float,
        resume_url: str | None,
        hooks: tuple[Callable[[], None] | None, Callable[[str], None] | None],
        gate: OrderGate | None,
        presented: list[Presented],
    ) -> tuple[str, dict[str, Any]]:
        """The order (resumed or placed) with its authorizations valid; AuthorizationGone if one lapsed."""
        on_placing, on_placed = hooks
        order = self._resume(resume_url, spec) if resume_url else None
        if order is not None and resume_url is not None:
            order_url = resume_url
        else:
            if on_placing is not None:
                on_placing()
            order_url, order = self._new_order(spec, replaces, gate)
            if on_placed is not None:
                on_placed(order_url)
        if order.get("status") == "pending":
            pending = [u for u in (self._authorize(a, solvers, presented) for a in order["authorizations"]) if u]
            for authz_url in pending:
                body = self._poll(authz_url, lambda b: b.get("status") != "pending", deadline, "validation")
                if body["status"] != "valid":
                    failed_name = body.get("identifier", {}).get("value", spec.names[0])
                    lapsed = _gone(body)
                    if lapsed:
                        raise AuthorizationGone(failed_name, lapsed)
                    raise _authz_error(body, failed_name)
            order["status"] = "ready"
        return order_url, order

    def _finalize(self, url: str, csr: Any, resent: list[bool]) -> requests.Response:
        try:
            return self._post(url, csr)
        except Unreachable as error:
            log.info("no answer to the finalize request (%s); sending it again", error.problem)
            resent.append(True)
            return self._post_again(url, csr)

    def _download(self, url: str, preferred_chain: str | None) -> bytes:
        response = self._post_again(url, None)
        default = response.content
        if not preferred_chain:
            return default
        chains = [default]
        for link in requests.utils.parse_header_links(response.headers.get("Link", "")):
            if link.get("rel") == "alternate" and link.get("url"):
                chains.append(self._post(link["url"], None).content)
        for chain in chains:
            # certbot's rule: match the issuer of the topmost certificate in the chain.
            if chain_issuer_names(chain)[-1] == preferred_chain:
                return chain
        log.warning("no chain from the CA is issued by %r; keeping the default chain", preferred_chain)
        return default

    # -- renewal information (RFC 9773) ----------------------------------------------------------

    def renewal_window(self, info: CertInfo) -> RenewalWindow | None:
        """The CA's suggested window for renewing the certificate, or None if it offers no ARI."""
        base = self.directory.to_partial_json().get("renewalInfo")
        if not base or not info.ari_id:
            return None
        try:
            with self.net.within(self.issuer.order_timeout_s, "the renewal-information request"):
                response = self.net.get(base.rstrip("/") + "/" + info.ari_id, content_type="application/json")
            window = messages.RenewalInfo.from_json(response.json()).suggested_window
        except CertkeeperError:
            raise
        except Exception as error:
            raise translate(error) from error
        hinted = retry_after_seconds(response)
        now = datetime.datetime.now(datetime.UTC)
        # RFC 9773 asks clients to re-check at most every few hours and at least twice a day.
        again = now + datetime.timedelta(seconds=min(max(hinted or 6 * 3600, 60), 12 * 3600))
        return RenewalWindow(start=window.start, end=window.end, retry_after=again)


def _answerable(authz: messages.Authorization) -> dict[str, tuple[str, str]]:
    """Challenge type -> (URL, token) for the challenges offered that carry a token."""
    offered: dict[str, tuple[str, str]] = {}
    for challb in authz.challenges:
        chall = challb.chall
        if isinstance(chall, challenges.KeyAuthorizationChallenge):
            offered[chall.typ] = (challb.uri, chall.encode("token"))
        elif isinstance(chall, challenges.UnrecognizedChallenge):
            # The library no longer knows tls-alpn-01 (RFC 8737); its JSON has type and token all the same.
            kind, token = chall.jobj.get("type"), chall.jobj.get("token")
            if isinstance(kind, str) and isinstance(token, str):
                offered[kind] = (challb.uri, token)
    return offered


def _authz_error(body: dict[str, Any], name: str) -> CAError:
    for chall in body.get("challenges", []):
        if chall.get("error"):
            return from_problem(messages.Error.from_json(chall["error"]), (name,), chall.get("type"))
    return CAError(f"authorization for {body.get('identifier', {}).get('value')} is {body.get('status')}")
