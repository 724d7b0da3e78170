"""The CA's ACME directory (RFC 8555 §7.1.1), fetched and checked before anything relies on it."""

from __future__ import annotations

from typing import Any

from acme import messages

from certkeeper.acme.network import Network
from certkeeper.errors import CAError
from certkeeper.spec import IssuerSpec

# What every ACME directory has: without these, nothing can be ordered.
REQUIRED = ("newNonce", "newAccount", "newOrder")


def fetch_directory(issuer: IssuerSpec, net: Network) -> messages.Directory:
    """The directory at ``issuer.directory_url``, or one line saying the URL is not an ACME directory.

    A mistyped path answers 404, a web server answers HTML, a health endpoint answers other JSON:
    each gets the same clear error rather than whatever the ACME library trips over later.
    """
    url = issuer.directory_url
    response = net._send_request("GET", url)  # transport failures are already one line here
    if response.status_code != 200:
        raise _not_a_directory(url, f"HTTP {response.status_code}")
    try:
        body: Any = response.json()
    except ValueError:
        kind = response.headers.get("Content-Type", "no content type").split(";")[0]
        raise _not_a_directory(url, f"the answer is {kind}, not JSON") from None
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in REQUIRED):
        raise _not_a_directory(url, "its JSON has no newOrder")
    try:
        directory: messages.Directory = messages.Directory.from_json(body)
    except Exception as error:  # the library's own checks of the fields, e.g. a malformed meta
        raise _not_a_directory(url, f"its JSON is malformed: {error}".replace("\n", " ")) from error
    return directory


def _not_a_directory(url: str, why: str) -> CAError:
    return CAError(
        f"{url} is not an ACME directory ({why})",
        "check --server: give the CA's directory URL, or letsencrypt / letsencrypt-staging",
    )
