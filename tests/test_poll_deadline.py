"""A CA that never finishes: the order gives up at its deadline with one clear error, not a hung process."""

from __future__ import annotations

import threading
from pathlib import Path

from certkeeper.acme import AcmeClient, ensure_account
from certkeeper.crypto import generate_key
from certkeeper.errors import CAError, CertkeeperError
from certkeeper.model import IssuedCert
from certkeeper.solvers.config import build_solvers
from certkeeper.solvers.http01 import ChallengeStore
from certkeeper.spec import CertSpec, IssuerSpec, KeyType
from certkeeper.stores.files import FileStore
from testbench.ari import AcmeFront

DEADLINE_S = 3.0
HANG_GUARD_S = 60.0  # far beyond the deadline: only a missing deadline gets here


def test_an_authorization_pending_forever_fails_at_the_order_deadline(ari: AcmeFront, tmp_path: Path) -> None:
    issuer = IssuerSpec(ari.directory_url, ca_bundle=str(ari.ca_bundle))
    account = ensure_account(issuer, FileStore(tmp_path / "store"))
    client = AcmeClient(issuer, account)
    spec = CertSpec(("pending.test",))
    key = generate_key(KeyType.EC_P256)
    challenges = ChallengeStore()
    ari.authorizations_stay_pending = True

    outcome: list[IssuedCert | BaseException] = []

    def order() -> None:
        try:
            outcome.append(client.order(spec, key, build_solvers(None, challenges), timeout_s=DEADLINE_S))
        except BaseException as error:
            outcome.append(error)

    worker = threading.Thread(target=order, daemon=True)
    worker.start()
    worker.join(HANG_GUARD_S)
    polled = [p for m, p in ari.recorded_requests() if m == "POST" and "/authZ/" in p]
    assert not worker.is_alive(), f"the order was still polling after {HANG_GUARD_S:.0f} s ({len(polled)} polls)"
    assert len(outcome) == 1
    error = outcome[0]
    assert isinstance(error, CAError), f"expected a CA error, got {error!r}"
    assert isinstance(error, CertkeeperError)
    text = str(error)
    assert "did not finish the order within" in text and "\n" not in text
    assert not challenges, "the challenge token was left published"
    # Polls back off (100 ms growing by 1.5x): a few, not a busy loop.
    assert 2 <= len(polled) <= 15, polled
