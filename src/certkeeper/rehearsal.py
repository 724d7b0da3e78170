"""A staging rehearsal: the first order for a new name set is made against another CA (Let's Encrypt's
staging) first, and production is asked only if it succeeded.

A misconfigured DNS record, port 80 or proxy then burns staging's (far higher) limits, never
production's failed-validation and per-domain limits. The rehearsal's certificate is thrown away; its
account is kept apart from the production one (beside it in the file store; in its own Secret in a cluster).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from certkeeper.acme import AccountStore, AcmeClient, ensure_account
from certkeeper.crypto import generate_key
from certkeeper.errors import CertkeeperError, ConfigError
from certkeeper.solvers.base import Solvers
from certkeeper.spec import LETSENCRYPT, LETSENCRYPT_STAGING, CertSpec, IssuerSpec, resolve_server

log = logging.getLogger(__name__)


def rehearsal_server(choice: str, directory_url: str, field: str = "--rehearsal") -> str | None:
    """``auto``: Let's Encrypt staging before Let's Encrypt production, nothing otherwise; ``off``; or a server.

    ``field`` names the setting in errors (an issuer's ``acme.rehearsal.server``)."""
    value = choice.strip().lower()
    if value == "off":
        return None
    if value == "auto":
        return LETSENCRYPT_STAGING if directory_url.rstrip("/") == LETSENCRYPT else None
    try:
        server = resolve_server(choice)
    except ConfigError as error:
        raise ConfigError(
            f"{field}: {error.problem}", "give off, auto, letsencrypt-staging or a directory URL"
        ) from None
    if server.rstrip("/") == directory_url.rstrip("/"):
        raise ConfigError(f"{field} names the server itself", "give a staging server, or off")
    return server


class Rehearsal:
    """Called by the engine (in a worker thread, with its solvers) before an order for names not held yet."""

    def __init__(
        self, issuer: IssuerSpec, store: AccountStore, on_passed: Callable[[CertSpec, str], None] | None = None
    ) -> None:
        self.issuer = issuer  # the rehearsal's CA (its own account, no EAB)
        self.store = store
        self.on_passed = on_passed  # told the line said when it passed (e.g. to record a Kubernetes Event)
        # The controller rehearses several new certificates at once, and a Secret has no lock of its own:
        # one registration at the rehearsal's CA, not one per certificate.
        self._account_lock = threading.Lock()

    def __call__(self, spec: CertSpec, solvers: Solvers) -> None:
        """Order ``spec`` at the rehearsal CA; raises a one-line error (production not asked) if it fails."""
        try:
            with self._account_lock:
                account = ensure_account(self.issuer, self.store)
            client = AcmeClient(self.issuer, account)
            key_pem = generate_key(spec.key_type)  # not the production key: nothing of it leaves for staging
            issued = client.order(dataclasses.replace(spec, profile=None), key_pem, solvers)
        except CertkeeperError as error:
            raise CertkeeperError(
                f"the rehearsal at {self.issuer.directory_url} failed, so production was not asked ({error.problem})",
                error.fix or "fix it and run again",
            ) from None
        text = (f"rehearsal at {self.issuer.directory_url} passed (serial {issued.info.serial}, thrown away); "
                "ordering from production")  # fmt: skip
        log.warning("%s: %s", spec.names[0], text)
        if self.on_passed is not None:
            self.on_passed(spec, text)


def build_rehearsal(
    choice: str,
    issuer: IssuerSpec,
    store: AccountStore,
    *,
    ca_bundle: str | None = None,
    on_passed: Callable[[CertSpec, str], None] | None = None,
) -> Rehearsal | None:
    """The rehearsal ``choice`` (off, auto, letsencrypt-staging or a URL) asks for before ``issuer``'s orders,
    its account in ``store`` (never the production account's place); None when there is none. ConfigError."""
    server = rehearsal_server(choice, issuer.directory_url)
    if server is None:
        return None
    staging = IssuerSpec(server, issuer.email, ca_bundle=ca_bundle or issuer.ca_bundle,
                         order_timeout_s=issuer.order_timeout_s)  # fmt: skip
    return Rehearsal(staging, store, on_passed)
