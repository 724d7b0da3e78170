"""ACME problem documents (RFC 8555 §6.7) as one-line errors that say what to do."""

from __future__ import annotations

import requests
from acme import errors as acme_errors
from acme import messages

from certkeeper.errors import CAError, CertkeeperError

_HINTS = {
    "rateLimited": "the CA's rate limit is reached; certkeeper will wait before trying again (see Retry-After)",
    "unauthorized": "the CA could not validate the name: make sure http://NAME/.well-known/acme-challenge/ "
    "reaches certkeeper's responder on port 80",
    "connection": "the CA could not connect to NAME on port 80: check DNS and that port 80 is open",
    "dns": "the CA could not resolve the name: check its DNS records",
    "incorrectResponse": "the CA got a wrong answer at /.well-known/acme-challenge/: another server may be "
    "answering port 80 for NAME",
    "rejectedIdentifier": "the CA will not issue for this name",
    "caa": "a CAA record forbids this CA: add the CA to the domain's CAA records",
    "externalAccountRequired": "this CA needs External Account Binding: give --eab-kid and --eab-hmac-key",
    "unauthorizedEAB": "the CA refused the External Account Binding: check --eab-kid and --eab-hmac-key",
    "malformed": "the CA refused the request as malformed",
    "accountDoesNotExist": "the stored account is unknown to this CA: remove the account directory to register anew",
    "badCSR": "the CA refused the CSR",
    "orderNotReady": "the order is not ready for finalization",
    "serverInternal": "the CA failed internally; certkeeper will retry later",
}


# What the user should check when a DNS-01 validation fails (the HTTP-01 hints above talk of port 80).
_DNS01_HINTS = {
    "unauthorized": "the CA did not find the TXT record at _acme-challenge.NAME: check that the zone certkeeper "
    "updated is the one the public DNS serves (delegation, CNAME target)",
    "dns": "the CA could not look up _acme-challenge.NAME: check the zone's name servers",
    "incorrectResponse": "the CA found other TXT values at _acme-challenge.NAME: check the CNAME target",
}


def problem_type(error: messages.Error) -> str:
    code = error.code or ""
    return code or (error.typ or "").rsplit(":", 1)[-1]


def from_problem(error: messages.Error, names: tuple[str, ...] = (), challenge_type: str | None = None) -> CAError:
    kind = problem_type(error)
    hints = {**_HINTS, **_DNS01_HINTS} if challenge_type == "dns-01" else _HINTS
    hint = hints.get(kind, "see the CA's documentation for this problem type")
    hint = hint.replace("NAME", names[0] if names else "the name")
    sub = ""
    if error.subproblems:
        sub = "; " + "; ".join(f"{p.identifier.value if p.identifier else '?'}: {p.detail}" for p in error.subproblems)
    detail = (error.detail or error.description or kind).replace("\n", " ")
    return CAError(f"CA error {kind}: {detail}{sub}", hint, acme_type=kind)


def translate(error: Exception, names: tuple[str, ...] = ()) -> CertkeeperError:
    """Any error from the ACME library, as a CertkeeperError."""
    if isinstance(error, CertkeeperError):
        return error
    if isinstance(error, messages.Error):
        return from_problem(error, names)
    if isinstance(error, acme_errors.ValidationError):
        for authzr in error.failed_authzrs:
            for chall in authzr.body.challenges:
                if chall.error is not None:
                    return from_problem(chall.error, (authzr.body.identifier.value,))
        return CAError("validation failed without a reason from the CA")
    if isinstance(error, acme_errors.ClientError) and error.args and isinstance(error.args[0], requests.Response):
        # The CA answered an error status without a problem document (a proxy's page, say).
        response = error.args[0]
        return CAError(
            f"the CA answered HTTP {response.status_code} at {response.url} without saying why",
            "certkeeper tries again later; if it persists, check --server and the CA's status page",
        )
    if isinstance(error, acme_errors.TimeoutError):
        return CAError("the CA did not finish the order in time", "try again later; check the CA's status page")
    return CAError(f"ACME error: {type(error).__name__}: {error}".replace("\n", " "))
