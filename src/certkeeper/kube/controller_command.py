"""``certkeeper controller``: every Certificate, Issuer and annotated Ingress in a cluster, kept issued."""

from __future__ import annotations

import asyncio
import os
import sys

import click

from certkeeper.clikit import fail, option
from certkeeper.errors import CertkeeperError, ConfigErrors
from certkeeper.kube.command import setup_logging


@click.command()
@option("--namespace", help="The controller's own namespace (Lease, shared tokens, ClusterIssuer accounts). "
        "Default: the pod's namespace, else certkeeper.")  # fmt: skip
@option(
    "--watch-namespace", default="", help="Only this namespace's Certificates, Issuers and Ingresses (default all)."
)
@option("--http-bind", default="0.0.0.0:8080", show_default=True, help="HOST:PORT for HTTP-01, /healthz and /readyz.")
@option("--concurrency", type=click.IntRange(1, 64), default=16, show_default=True,
        help="Certificates worked on at once (and so ACME orders at most in flight).")  # fmt: skip
@option("--default-issuer", default="", metavar="KIND/NAME",
        help="Issuer for Ingresses annotated kubernetes.io/tls-acme (e.g. ClusterIssuer/letsencrypt).")  # fmt: skip
@option("--ingress/--no-ingress", default=True, show_default=True, help="Make Certificates for annotated Ingresses.")
@option("--gateway/--no-gateway", default=True, show_default=True,
        help="Make Certificates for annotated Gateways (when the cluster serves the Gateway API).")  # fmt: skip
@option("--service", default="certkeeper-controller:80", show_default=True, metavar="NAME:PORT",
        help="The controller's Service in its namespace, where HTTPRoutes for HTTP-01 send the CA.")  # fmt: skip
@option("--leader-elect/--no-leader-elect", default=True, show_default=True,
        help="Take a Lease before ordering (run 2+ replicas for HA).")  # fmt: skip
@option("--lease-duration", type=click.IntRange(2, 300), default=15, show_default=True,
        help="Seconds a leader's Lease lasts without renewal.")  # fmt: skip
@option("--rollout-timeout", type=float, default=300.0, show_default=True,
        help="Seconds to wait for each replaced pod to be Ready.")  # fmt: skip
@option("--dns-state-dir", default=None, metavar="DIR",
        help="Where DNS-01 notes the TXT records it presented, so a restart removes what a crash left "
        "(a volume; default: a temporary directory).")  # fmt: skip
@option("--tls-alpn-bind", default="0.0.0.0:8443", show_default=True, metavar="HOST:PORT",
        help="Where the leader answers TLS-ALPN-01 (issuers with a tlsAlpn01 solver); route 443 here.")  # fmt: skip
@option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
        help="Log lines as text or JSON.")  # fmt: skip
@option(
    "--rate-limits",
    default="auto",
    show_default=True,
    metavar="LIMITS",
    help="CA limits the rate-limit ledger enforces before ordering: auto, letsencrypt, none, NAME=COUNT/WINDOW,...",
)
@option("-v", "--verbose", count=True, help="Debug output (-vv: also the libraries').")
def controller(
    namespace: str | None,
    watch_namespace: str,
    http_bind: str,
    concurrency: int,
    default_issuer: str,
    ingress: bool,
    gateway: bool,
    service: str,
    leader_elect: bool,
    lease_duration: int,
    rollout_timeout: float,
    dns_state_dir: str | None,
    tls_alpn_bind: str,
    log_format: str,
    rate_limits: str,
    verbose: int,
) -> None:
    """Keep every certkeeper.io Certificate in the cluster issued and renewed into its Secret.

    Reads Certificates, Issuers, ClusterIssuers and Ingresses annotated kubernetes.io/tls-acme or
    cert-manager.io/(cluster-)issuer; see docs/controller.md. Uses the pod's ServiceAccount in a
    cluster, or KUBECONFIG outside one.
    """
    setup_logging(log_format, verbose)
    from certkeeper.kube.config import default_namespace
    from certkeeper.kube.manager import ControllerConfig, Manager
    from certkeeper.ratelimits import parse_limits
    from certkeeper.web import parse_bind

    problems: list[str] = []
    for bind in (http_bind, tls_alpn_bind):
        try:
            parse_bind(bind)
        except CertkeeperError as error:
            problems.append(str(error))
    try:
        parse_limits(rate_limits, "")
    except CertkeeperError as error:
        problems.append(str(error))
    kind, _, name = default_issuer.partition("/")
    if default_issuer and (kind not in ("Issuer", "ClusterIssuer") or not name):
        problems.append(f"--default-issuer {default_issuer!r} is not KIND/NAME: e.g. ClusterIssuer/letsencrypt")
    service_name, _, service_port = service.partition(":")
    if not service_name or not service_port.isdigit() or not 0 < int(service_port) < 65536:
        problems.append(f"--service {service!r} is not NAME:PORT: e.g. certkeeper-controller:80")
    if problems:
        fail(ConfigErrors(problems))
    own_namespace = namespace or default_namespace()
    if not namespace and own_namespace == "default":
        own_namespace = "certkeeper"
    config = ControllerConfig(
        namespace=own_namespace,
        http_bind=http_bind,
        concurrency=concurrency,
        default_issuer=default_issuer,
        ingress=ingress,
        gateway=gateway,
        service=service_name,
        service_port=int(service_port),
        leader_elect=leader_elect,
        lease_duration=lease_duration,
        rollout_timeout=rollout_timeout,
        watch_namespace=watch_namespace,
        rate_limits=rate_limits,
        dns_state_dir=dns_state_dir,
        tls_alpn_bind=tls_alpn_bind,
    )
    try:
        manager = Manager(config)
        code = asyncio.run(manager.main())
    except CertkeeperError as error:
        click.echo(f"certkeeper: error: {error}", err=True)
        code = 2
    sys.stderr.flush()
    # ACME worker threads may still wait on the CA: do not wait for them at exit.
    os._exit(code)
