"""Small helpers shared by the sub-commands: options settable from CERTKEEPER_* variables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from certkeeper.errors import CertkeeperError, problem_lines

F = TypeVar("F", bound=Callable[..., Any])


def option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """A click option whose environment variable is CERTKEEPER_<LONG NAME>, shown in --help."""
    long_name = next(d for d in decls if d.startswith("--")).split("/")[0]
    attrs.setdefault("envvar", "CERTKEEPER_" + long_name[2:].replace("-", "_").upper())
    attrs.setdefault("show_envvar", True)
    return click.option(*decls, **attrs)


def fail(message: str | CertkeeperError, code: int = 2) -> NoReturn:
    """Print the problem (one line each, for ConfigErrors) to stderr and exit non-zero."""
    for line in problem_lines(message) if isinstance(message, CertkeeperError) else [message]:
        click.echo(f"certkeeper: error: {line}", err=True)
    raise SystemExit(code)


# Solver options (DNS-01, TLS-ALPN-01), shared by issue/renew and run (``solvers.config.cli_config`` reads them).
DNS_OPTIONS = [
    option("--dns", metavar="PROVIDER",
           help="Prove names with DNS-01 (needed for wildcards): rfc2136, or lexicon:PROVIDER (hosted DNS)."),
    option("--dns-server", metavar="HOST:PORT",
           help="The zone's primary DNS server (RFC 2136 updates); with lexicon, one serving the zone."),
    option("--tsig-key-file", type=click.Path(exists=True, dir_okay=False),
           help="TSIG key for the updates, in BIND's syntax (tsig-keygen NAME > FILE)."),
    option("--dns-zone", multiple=True, metavar="ZONE",
           help="Use DNS-01 only for names in ZONE (repeatable), HTTP-01 or TLS-ALPN-01 for others. Default: all."),
    option("--dns-propagation-timeout", type=click.FloatRange(1, 3600), metavar="SECONDS",
           help="How long to wait for every authoritative server to serve the TXT record [default: 120]."),
    option("--dns-timeout", type=click.FloatRange(0.1, 60), metavar="SECONDS",
           help="How long one DNS query or update may take [default: 10]."),
    option("--tls-alpn-bind", metavar="HOST:PORT",
           help="Prove names with TLS-ALPN-01 by listening here (e.g. 0.0.0.0:443) instead of HTTP-01."),
    option("--tls-alpn-check", metavar="HOST:PORT",
           help="Where the CA connects for TLS-ALPN-01, checked before answering [default: the name's port 443]; "
                "off: no check."),
]  # fmt: skip


def dns_options(fn: F) -> F:
    for decorator in reversed(DNS_OPTIONS):
        fn = decorator(fn)
    return fn
