"""The staging rehearsal in a cluster (``certkeeper run``'s CERTKEEPER_REHEARSAL, an issuer's
``spec.acme.rehearsal``): its ACME account lives in a Secret of its own, ``<account Secret>-rehearsal``,
never in the production account's Secret (one Secret holds one CA's account)."""

from __future__ import annotations

from collections.abc import Callable

from lightkube import Client

from certkeeper.kube.config import RunConfig
from certkeeper.kube.events import Recorder
from certkeeper.kube.names import companion_name
from certkeeper.kube.secret_store import SecretStore
from certkeeper.rehearsal import Rehearsal, build_rehearsal
from certkeeper.spec import CertSpec, IssuerSpec


def rehearsal_secret_name(account_secret: str) -> str:
    return companion_name(account_secret, "-rehearsal")


def kube_rehearsal(
    choice: str,
    issuer: IssuerSpec,
    client: Client,
    namespace: str,
    account_secret: str,
    *,
    ca_bundle: str | None = None,
    on_passed: Callable[[CertSpec, str], None] | None = None,
) -> Rehearsal | None:
    """The rehearsal ``choice`` asks for before ``issuer``'s first orders (None: none); ConfigError."""
    secret = rehearsal_secret_name(account_secret)
    store = SecretStore(client, namespace, secret, account_secret_name=secret)
    return build_rehearsal(choice, issuer, store, ca_bundle=ca_bundle, on_passed=on_passed)


def run_rehearsal(config: RunConfig, client: Client, events: Recorder) -> Rehearsal | None:
    """``certkeeper run``'s rehearsal; a pass is also a ``Rehearsed`` Event on the certificate's Secret."""

    def passed(spec: CertSpec, text: str) -> None:
        events.emit("Secret", config.secret_name, "Rehearsed", f"{' '.join(spec.names)}: {text}")

    return kube_rehearsal(config.rehearsal, config.issuer, client, config.namespace, config.account_secret_name,
                          on_passed=passed)  # fmt: skip
