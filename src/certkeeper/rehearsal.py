"""A staging rehearsal: the first order for a new name set is made against another CA (Let's Encrypt's
staging) first, and production is asked only if it succeeded.

A misconfigured DNS record, port 80 or proxy then burns staging's (far higher) limits, never
production's failed-validation and per-domain limits. The rehearsal's certificate is thrown away; its
account is kept in the store beside the production one.
"""

from __future__ import annotations

import dataclasses
import logging

from certkeeper.acme import AccountStore, AcmeClient, ensure_account
from certkeeper.crypto import generate_key
from certkeeper.errors import CertkeeperError, ConfigError
from certkeeper.solvers.base import Solvers
from certkeeper.spec import LETSENCRYPT, LETSENCRYPT_STAGING, CertSpec, IssuerSpec, resolve_server

log = logging.getLogger(__name__)


def rehearsal_server(choice: str, directory_url: str) -> str | None:
    """``auto``: Let's Encrypt staging before Let's Encrypt production, nothing otherwise; ``off``; or a server."""
    value = choice.strip().lower()
    if value == "off":
        return None
    if value == "auto":
        return LETSENCRYPT_STAGING if directory_url.rstrip("/") == LETSENCRYPT else None
    try:
        server = resolve_server(choice)
    except ConfigError as error:
        raise ConfigError(
            f"--rehearsal: {error.problem}", "give off, auto, letsencrypt-staging or a directory URL"
        ) from None
    if server.rstrip("/") == directory_url.rstrip("/"):
        raise ConfigError("--rehearsal names the server itself", "give a staging server, or off")
    return server


class Rehearsal:
    def __init__(self, issuer: IssuerSpec, store: AccountStore, solvers: Solvers) -> None:
        self.issuer = issuer  # the rehearsal's CA (its own account, no EAB)
        self.store = store
        self.solvers = solvers

    def __call__(self, spec: CertSpec) -> None:
        """Order ``spec`` at the rehearsal CA; raises a one-line error (production not asked) if it fails."""
        try:
            account = ensure_account(self.issuer, self.store)
            client = AcmeClient(self.issuer, account)
            key_pem = generate_key(spec.key_type)  # not the production key: nothing of it leaves for staging
            issued = client.order(dataclasses.replace(spec, profile=None), key_pem, self.solvers)
        except CertkeeperError as error:
            raise CertkeeperError(
                f"the rehearsal at {self.issuer.directory_url} failed, so production was not asked ({error.problem})",
                error.fix or "fix it and run again",
            ) from None
        log.warning("%s: rehearsal at %s passed (serial %s, thrown away); ordering from production",
                    spec.names[0], self.issuer.directory_url, issued.info.serial)  # fmt: skip
