"""The controller's per-Certificate store keeps an order it could not record (the API down at that moment), so
the next attempt of the same process resumes it instead of placing another order at the CA."""

from __future__ import annotations

from typing import Any, cast

import pytest

from certkeeper.errors import CertkeeperError
from certkeeper.kube.reconcile import RoutedStore
from certkeeper.kube.secret_store import SecretStore
from certkeeper.model import PendingOrder


class ApiDown:
    """A Secret store whose every write fails as it does while kube-apiserver restarts."""

    def __init__(self) -> None:
        self.cleared = 0

    def save_order(self, lineage: str, pending: PendingOrder) -> None:
        raise CertkeeperError("cannot record the order in flight in Secret ns/x-order (the API is unreachable)")

    def load_order(self, lineage: str) -> PendingOrder | None:
        return None

    def clear_order(self, lineage: str) -> None:
        self.cleared += 1


def test_an_order_whose_record_failed_is_resumed_by_the_next_attempt() -> None:
    statuses: list[Any] = []
    routed = RoutedStore(cast(SecretStore, None), lambda lineage, pending: statuses.append(pending))
    down = ApiDown()
    routed.attach("ns/x", cast(SecretStore, down))
    pending = PendingOrder("https://ca.test/order/1", ("x.example",), b"not a real key")
    with pytest.raises(CertkeeperError):
        routed.save_order("ns/x", pending)
    assert routed.load_order("ns/x") == pending
    assert statuses == []  # the status was not told of a record that does not exist
    routed.clear_order("ns/x")
    assert routed.load_order("ns/x") is None and down.cleared == 1 and statuses == [None]


def test_a_recorded_order_is_not_kept_in_memory() -> None:
    class Recording(ApiDown):
        saved: PendingOrder | None = None

        def save_order(self, lineage: str, pending: PendingOrder) -> None:
            self.saved = pending

        def load_order(self, lineage: str) -> PendingOrder | None:
            return self.saved

    routed = RoutedStore(cast(SecretStore, None), lambda lineage, pending: None, may_have_pending=lambda _: False)
    routed.attach("ns/x", cast(SecretStore, Recording()))
    routed.save_order("ns/x", PendingOrder("https://ca.test/order/2", ("x.example",), b"k"))
    # The Secret cache says there is no order Secret (it was deleted meanwhile): nothing comes from memory.
    assert routed.load_order("ns/x") is None
