"""``certkeeper run``: keep the Secret ``certs-<first domain>`` issued and renewed, and roll its consumers.

A drop-in for the seed's certificate container (same environment, Secret name and keys, port 80), with
its defects fixed: the first certificate is issued at start, renewal follows the planner (ARI, then the
1/3-lifetime rule) instead of a blind monthly reissue, the account key lives in a Secret, the namespace
is the pod's own, and pods are replaced one at a time.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import sys
from typing import Any

import click

from certkeeper.clikit import dns_options, fail, option
from certkeeper.errors import CertkeeperError

# The HTTP clients (httpx2/httpcore2 log every request and connection step), ACME, JOSE and Kubernetes.
LIBRARY_LOGGERS = (
    "acme",
    "josepy",
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "h11",
    "h2",
    "hpack",
    "urllib3",
    "lightkube",
    "aiohttp",
    "asyncio",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(log_format: str, verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s certkeeper %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # -v: certkeeper's own debug lines; -vv: every library's too. A library not named below (hpack logs
    # each header it decodes) stays at INFO under -v, since the root logger does.
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    logging.getLogger("certkeeper").setLevel(logging.DEBUG if verbose else logging.INFO)
    # Libraries that log whole requests (and ACME's JWS bodies) stay quiet unless asked for twice.
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


@click.command()
@option(
    "--http-bind",
    default="0.0.0.0:80",
    show_default=True,
    help="HOST:PORT for HTTP-01 challenges, /healthz and /.well-known/acme-challenge/health.",
)
@option("--ca-bundle", help="PEM file to trust for the CA's own HTTPS (a private CA such as Pebble).")
@option("--key-type", default="ec-p256", show_default=True, help="ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096.")
@option("--profile", help="ACME profile to request (e.g. tlsserver, shortlived), if the CA offers it.")
@option("--preferred-chain", metavar="ISSUER_CN", help="Pick the alternate chain whose top is issued by this name.")
@option("--eab-kid", help="External Account Binding key id (CAs that require it).")
@option("--eab-hmac-key", help="External Account Binding HMAC key, base64url.")
@option(
    "--rollout-timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds to wait for each replaced pod to be Ready.",
)
@option(
    "--lease-duration",
    type=click.IntRange(2, 3600),
    default=15,
    show_default=True,
    help="Seconds a killed instance's Lease on the Secret holds off another instance for the same Secret.",
)
@option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text or JSON.",
)
@option(
    "--rehearsal",
    default="auto",
    show_default=True,
    metavar="SERVER",
    help="Order a new name set at this CA first, LETSENCRYPT_ENDPOINT only if it succeeds: auto (Let's Encrypt "
    "staging before Let's Encrypt), off, or a directory URL / letsencrypt-staging. Its account is kept in the "
    "Secret <account Secret>-rehearsal.",
)
@option("-v", "--verbose", count=True, help="Debug output (-vv: also the libraries').")
@dns_options
@option(
    "--dns-state-dir",
    type=click.Path(file_okay=False),
    help="Where DNS-01 notes the records it presented, so the next start removes a killed run's "
    "(mount a volume here to survive a pod's replacement) [default: the temporary directory].",
)
def run(
    http_bind: str,
    ca_bundle: str | None,
    key_type: str,
    profile: str | None,
    preferred_chain: str | None,
    eab_kid: str | None,
    eab_hmac_key: str | None,
    rollout_timeout: float,
    lease_duration: int,
    rehearsal: str,
    log_format: str,
    verbose: int,
    dns: str | None,
    dns_server: str | None,
    tsig_key_file: str | None,
    dns_zone: tuple[str, ...],
    dns_propagation_timeout: float | None,
    dns_timeout: float | None,
    tls_alpn_bind: str | None,
    tls_alpn_check: str | None,
    dns_state_dir: str | None,
) -> None:
    """Keep the Secret certs-<first of DOMAINS> issued and renewed; restart its consumers after a change.

    Configured like the seed's container: EMAIL, DOMAINS, RC_NAMES, LETSENCRYPT_ENDPOINT, SECRET_NAME,
    NAMESPACE, DEPLOYMENTS, TYPE, CRON_FREQUENCY, and WORKLOADS (kind/name ...). Uses the pod's
    ServiceAccount in a cluster, or KUBECONFIG outside one. Wildcards in DOMAINS need a DNS-01 solver
    (CERTKEEPER_DNS=rfc2136, CERTKEEPER_DNS_SERVER, CERTKEEPER_TSIG_KEY_FILE).
    """
    setup_logging(log_format, verbose)
    from certkeeper.kube.config import load_config
    from certkeeper.solvers.config import cli_config

    try:
        solvers = cli_config(
            dns,
            dns_server,
            tsig_key_file,
            dns_zone,
            dns_propagation_timeout,
            dns_timeout,
            tls_alpn_bind,
            tls_alpn_check=tls_alpn_check,
        )
        config = load_config(
            os.environ,
            http_bind=http_bind,
            ca_bundle=ca_bundle,
            key_type=key_type,
            profile=profile,
            preferred_chain=preferred_chain,
            eab_kid=eab_kid,
            eab_hmac_key=eab_hmac_key,
            rollout_timeout=rollout_timeout,
            solvers=solvers,
            dns_state_dir=dns_state_dir,
            rehearsal=rehearsal,
        )
    except CertkeeperError as error:  # ConfigErrors: one line per problem
        fail(error)
    from certkeeper.kube.controller import Controller

    try:
        controller = Controller(config, lease_duration=lease_duration)
    except CertkeeperError as error:
        click.echo(f"certkeeper: error: {error}", err=True)
        raise SystemExit(2) from None
    try:
        code = asyncio.run(controller.main())
    except CertkeeperError as error:
        click.echo(f"certkeeper: error: {error}", err=True)
        code = 2
    sys.stderr.flush()
    sys.stdout.flush()
    if controller.abandoned_work:
        # A thread was still talking to the CA or the API when asked to stop: do not wait for it.
        os._exit(code)
    raise SystemExit(code)
