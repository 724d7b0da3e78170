"""``certkeeper proxy``: configured by the environment of the seed's nginx-ssl-proxy (see docs/proxy.md)."""

from __future__ import annotations

import logging
import os
import sys

import click

from certkeeper.clikit import fail
from certkeeper.errors import ConfigError
from certkeeper.proxy.render import RunPaths, render
from certkeeper.proxy.settings import load_settings
from certkeeper.proxy.supervisor import Supervisor


def _fail(error: ConfigError) -> None:
    fail(error)


@click.command()
@click.option(
    "--print-config",
    is_flag=True,
    help="Print the nginx configuration the environment yields (as if a certificate were present) and exit.",
)
def proxy(print_config: bool) -> None:
    """Run nginx as a TLS-terminating proxy that hot-reloads certificates.

    Configured by environment variables, those of nginx-ssl-proxy (ENABLE_SSL, TARGET_SERVICE,
    CERT_SERVICE, SERVER_NAME, WEB_SOCKETS, ENABLE_BASIC_AUTH, *_ENV_NAME) plus SECRETS_DIR, HTTP_PORT,
    HTTPS_PORT, HSTS, LISTEN_ADDRESS, RUN_DIR, ACCESS_LOG, NGINX_BIN, NGINX_USER, CERT_POLL_SECONDS,
    METRICS_BIND (HOST:PORT for /metrics; off when unset).
    """
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="certkeeper proxy: %(message)s")
    try:
        settings = load_settings()
        if print_config:
            click.echo(render(settings, RunPaths(settings.run_dir), has_cert=True, dhparam=False), nl=False)
            return
        supervisor = Supervisor(settings)
        supervisor.prepare()
        metrics_bind = os.environ.get("METRICS_BIND", "").strip()
        if metrics_bind:
            from certkeeper.proxy.metrics import serve_metrics

            port = serve_metrics(supervisor, metrics_bind)
            logging.getLogger("certkeeper.proxy").info("metrics at http://%s:%d/metrics",
                                                       metrics_bind.rsplit(":", 1)[0], port)  # fmt: skip
    except ConfigError as e:
        _fail(e)
        return
    raise SystemExit(supervisor.run())
