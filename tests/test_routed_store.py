"""The controller's per-Certificate store keeps an order it could not record (the API down at that moment), so
the next attempt of the same process resumes it instead of placing another order at the CA."""

from __future__ import annotations

from typing import Any, cast

import pytest

from certkeeper.errors import CertkeeperError, NotRecorded
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


def test_an_order_is_not_recorded_so_not_placed_by_a_replica_that_may_have_lost_its_lease() -> None:
    class Recording(ApiDown):
        def __init__(self) -> None:
            super().__init__()
            self.saved: list[PendingOrder] = []

        def save_order(self, lineage: str, pending: PendingOrder) -> None:
            self.saved.append(pending)

    leading = [True]
    routed = RoutedStore(cast(SecretStore, None), lambda lineage, pending: None, leading=lambda: leading[0])
    store = Recording()
    routed.attach("ns/x", cast(SecretStore, store))
    intent = PendingOrder("", ("x.example",), b"k")
    routed.save_order("ns/x", intent)
    leading[0] = False
    with pytest.raises(NotRecorded):
        routed.save_order("ns/x", intent)
    assert store.saved == [intent]
    # The URL of an order already placed is still recorded: whoever leads next resumes it.
    placed = PendingOrder("https://ca.test/order/3", ("x.example",), b"k")
    routed.save_order("ns/x", placed)
    assert store.saved == [intent, placed]


def test_a_certificate_no_longer_worked_on_records_no_order() -> None:
    routed = RoutedStore(cast(SecretStore, None), lambda lineage, pending: None)
    with pytest.raises(NotRecorded):
        routed.save_order("ns/gone", PendingOrder("", ("x.example",), b"k"))


def test_before_an_order_the_record_is_read_even_when_the_cache_shows_none() -> None:
    class Recorded(ApiDown):
        def load_order(self, lineage: str, *, fresh: bool = False) -> PendingOrder | None:
            return PendingOrder("", ("x.example",), b"k")

    routed = RoutedStore(cast(SecretStore, None), lambda lineage, pending: None, may_have_pending=lambda _: False)
    routed.attach("ns/x", cast(SecretStore, Recorded()))
    assert routed.load_order("ns/x") is None  # a check that orders nothing trusts the cache
    assert routed.load_order("ns/x", fresh=True) == PendingOrder("", ("x.example",), b"k")
