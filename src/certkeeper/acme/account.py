"""The ACME account: created once per CA and reused, its key kept by an ``AccountStore``."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Protocol

from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages
from josepy.jwk import JWK, JWKEC, JWKRSA

from certkeeper.acme.directory import fetch_directory
from certkeeper.acme.network import make_network
from certkeeper.acme.problems import translate
from certkeeper.crypto import generate_key, load_key
from certkeeper.errors import CAError, CertkeeperError
from certkeeper.spec import IssuerSpec, KeyType

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Account:
    directory_url: str
    url: str
    key_pem: bytes
    # False when the URL was not recorded together with this key (a store written by an older
    # version, where two first runs could pair one registration's key with the other's URL).
    verified: bool = True

    def __repr__(self) -> str:  # the key must never reach a log line
        return f"Account(directory_url={self.directory_url!r}, url={self.url!r})"

    def jwk(self) -> JWK:
        return jwk_from_pem(self.key_pem)


def jwk_from_pem(key_pem: bytes) -> JWK:
    key = load_key(key_pem)
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(key, ec.EllipticCurvePrivateKey):
        return JWKEC(key=key)
    return JWKRSA(key=key)


def key_thumbprint(key_pem: bytes) -> str:
    """SHA-256 of the public key, recorded beside the account URL to tell whether they belong together."""
    from cryptography.hazmat.primitives import serialization

    public = load_key(key_pem).public_key()
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def account_id(directory_url: str) -> str:
    """A stable, file-name-safe key for one CA's account."""
    return hashlib.sha256(directory_url.encode()).hexdigest()[:16]


class Lock(Protocol):
    def release(self) -> None: ...


class AccountStore(Protocol):
    """Where the account key and URL live (as one unit): files beside the store, or a Kubernetes Secret."""

    def load_account(self, directory_url: str) -> Account | None: ...

    def save_account(self, account: Account) -> None: ...

    def account_lock(self, directory_url: str) -> Lock: ...


def ensure_account(issuer: IssuerSpec, store: AccountStore) -> Account:
    """The stored account for this CA, or a new one registered and saved (terms agreed).

    Runs under the store's account lock, so processes starting at once register one account.
    """
    lock = store.account_lock(issuer.directory_url)
    try:
        existing = store.load_account(issuer.directory_url)
        if existing is not None and existing.verified:
            return existing
        return _register(issuer, store, existing)
    finally:
        lock.release()


def register_again(issuer: IssuerSpec, store: AccountStore, forgotten: Account) -> Account:
    """The CA no longer knows ``forgotten`` (it lost its database, or deactivated it): the stored one, if
    another run already registered again, else one registered with the same key, once for all runs."""
    lock = store.account_lock(issuer.directory_url)
    try:
        existing = store.load_account(issuer.directory_url)
        if existing is not None and existing.url != forgotten.url:
            return existing
        account = _register(issuer, store, forgotten)
        log.warning("the CA no longer knew the ACME account %s; registered it again (%s)", forgotten.url, account.url)
        return account
    finally:
        lock.release()


def _lookup(client: acme_client.ClientV2) -> str | None:
    """RFC 8555 §7.3.1: the URL of the account this key already has at the CA, or None."""
    try:
        client.new_account(messages.NewRegistration(only_return_existing=True))
    except acme_errors.ConflictError as existing:
        return str(existing.location)
    except messages.Error as error:
        if error.code == "accountDoesNotExist":
            return None
        raise translate(error) from error
    except Exception as error:
        raise translate(error) from error
    return None


def _register(issuer: IssuerSpec, store: AccountStore, stale: Account | None) -> Account:
    key_pem = stale.key_pem if stale is not None else generate_key(KeyType.EC_P256)
    jwk = jwk_from_pem(key_pem)
    net = make_network(jwk, issuer.ca_bundle)
    directory = fetch_directory(issuer, net)
    client = acme_client.ClientV2(directory, net)
    if stale is not None:
        # The stored URL may not be this key's: ask the CA which account the key has.
        found = _lookup(client)
        if found is not None:
            account = Account(directory_url=issuer.directory_url, url=found, key_pem=key_pem)
            store.save_account(account)
            if not stale.url:  # the key was kept before registering; the answer with the URL was lost
                log.info("found the ACME account of the stored key at the CA (%s)", found)
            elif found != stale.url:
                log.warning("the stored ACME account URL did not belong to its key; repaired (%s)", found)
            return account
    eab = None
    if issuer.eab_kid and issuer.eab_hmac_key:
        try:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=jwk.public_key(),
                kid=issuer.eab_kid,
                hmac_key=issuer.eab_hmac_key,
                directory=directory,
            )
        except Exception as error:
            raise CertkeeperError(
                "the --eab-hmac-key is not valid base64url", "copy the HMAC key exactly as the CA gave it"
            ) from error
    elif client.external_account_required():
        raise CertkeeperError(
            f"the CA at {issuer.directory_url} requires External Account Binding",
            "give --eab-kid and --eab-hmac-key from your CA account",
        )
    registration = messages.NewRegistration.from_data(
        email=issuer.email, terms_of_service_agreed=True, external_account_binding=eab
    )
    if getattr(store, "key_before_registration", False):
        # A store other processes share without a lock (a Secret, several controller replicas): the key is
        # kept before the CA knows it, so whoever finds it finds the account too (_lookup), never registers
        # another. When it cannot be kept, nothing is registered.
        store.save_account(Account(directory_url=issuer.directory_url, url="", key_pem=key_pem, verified=False))
    try:
        regr = client.new_account(registration)
        url = regr.uri
    except acme_errors.ConflictError as conflict:
        url = conflict.location
    except Exception as error:
        problem = translate(error)
        if eab is not None and isinstance(problem, CAError) and problem.acme_type in ("unauthorized", "malformed"):
            # No name is validated at registration: an unauthorized account is a refused binding.
            raise CAError(
                problem.problem,
                "the CA refused the External Account Binding: check --eab-kid and --eab-hmac-key",
                acme_type=problem.acme_type,
            ) from error
        raise problem from error
    account = Account(directory_url=issuer.directory_url, url=url, key_pem=key_pem)
    store.save_account(account)
    log.info("registered ACME account %s", url)
    return account
