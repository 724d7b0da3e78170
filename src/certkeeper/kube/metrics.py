"""What ``certkeeper controller`` shows at / and /metrics: each Certificate (labelled by its own name,
namespace and issuerRef, as cert-manager labels them), the queue, the watches and the Lease."""

from __future__ import annotations

from typing import TYPE_CHECKING

from certkeeper.kube.ledger_secret import SecretBackend
from certkeeper.ledger import Ledger
from certkeeper.observe.ratelimit_view import merged, usage_reader
from certkeeper.observe.serving import ProcessView
from certkeeper.ratelimits import Limit, parse_limits
from certkeeper.spec import CertSpec

if TYPE_CHECKING:
    from certkeeper.kube.manager import Manager
    from certkeeper.kube.sources import CertificateObj


def _labels(manager: Manager, spec: CertSpec) -> tuple[str, str, str]:
    cert = manager.reconciler.certificate_of(spec.lineage) if manager.reconciler is not None else None
    if cert is None:  # not expected: outcomes are told while their Certificate's run lasts
        namespace, _, secret = spec.lineage.partition("/")
        return secret, namespace, ""
    ref = cert.spec.get("issuerRef") or {}
    return cert.name, cert.namespace, str(ref.get("name") or "")


def lineage_of(cert: CertificateObj) -> str:
    return f"{cert.namespace}/{cert.spec.get('secretName')}"


def ledger_limits(manager: Manager) -> tuple[Limit, ...]:
    """--rate-limits when it names limits; with auto, those of the issuers this replica has ordered with
    (Let's Encrypt's for its production CA, none for others)."""
    if manager.config.rate_limits.strip().lower() != "auto":
        return parse_limits(manager.config.rate_limits, "")
    return merged(manager.reconciler.ledger_limits()) if manager.reconciler is not None else ()


def controller_view(manager: Manager) -> ProcessView:
    def leader() -> float:
        return 1.0 if manager.counters()["leader"] else 0.0

    view = ProcessView(
        lambda spec: _labels(manager, spec),
        {
            "certkeeper_controller_leader": ("1 while this replica holds the Lease (or runs without election).",
                                             leader),
            "certkeeper_controller_queue_depth": ("Certificates waiting for a worker.",
                                                  lambda: float(manager.counters()["queued"])),
            "certkeeper_controller_reconciles_total": ("Reconciles done by this replica.",
                                                       lambda: float(manager.counters()["processed"])),
            "certkeeper_controller_watch_relists_total": ("Times a watch had to list again (its history expired "
                                                          "or the connection broke for long).",
                                                          lambda: float(manager.counters()["relists"])),
            "certkeeper_controller_orders_total": ("ACME orders placed by this replica.",
                                                   lambda: float(manager.counters()["orders"])),
        },
    )  # fmt: skip
    # The cluster's ledger Secret, read once per scrape (one GET).
    ledger = Ledger(SecretBackend(manager.client, manager.config.namespace), ())
    view.metrics.rate_limits(usage_reader(ledger, lambda: ledger_limits(manager)))
    return view
