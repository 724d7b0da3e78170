"""What issue and renew share: store location, the engine run with progress, and the report."""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from certkeeper.clikit import DNS_OPTIONS, fail, option
from certkeeper.crypto import check_ca_bundle
from certkeeper.engine import Engine, Outcome
from certkeeper.errors import CertkeeperError, ConfigError
from certkeeper.fallback import Fallback
from certkeeper.ledger import FileBackend, Ledger
from certkeeper.ratelimits import parse_limits
from certkeeper.rehearsal import build_rehearsal, rehearsal_server
from certkeeper.solvers.base import Solvers
from certkeeper.solvers.config import SolverConfig, SolverSetup, build_solvers, cli_config
from certkeeper.solvers.http01 import ChallengeStore
from certkeeper.spec import CertSpec, IssuerSpec, plain_http_off_loopback, resolve_server
from certkeeper.stores.files import FileStore
from certkeeper.web import parse_bind

F = TypeVar("F", bound=Callable[..., Any])


def default_store() -> str:
    if os.geteuid() == 0:
        return "/var/lib/certkeeper"
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "certkeeper")


def store_option(fn: F) -> F:
    return option(
        "--store",
        type=click.Path(file_okay=False),
        default=default_store,
        show_default="/var/lib/certkeeper as root, else ~/.local/share/certkeeper",
        help="Directory holding certificates, keys and the ACME account.",
    )(fn)


@dataclass(frozen=True)
class EngineOptions:
    """The options issue and renew share, handed to the command as one ``engine`` argument."""

    ca_bundle: str | None
    http_bind: str
    deploy_hook: str | None
    concurrency: int
    order_timeout: int
    force: bool
    verbose: int
    dns: str | None = None
    dns_server: str | None = None
    tsig_key_file: str | None = None
    dns_zone: tuple[str, ...] = ()
    dns_propagation_timeout: float | None = None
    dns_timeout: float | None = None
    tls_alpn_bind: str | None = None
    tls_alpn_check: str | None = None
    rate_limits: str = "auto"
    rehearsal: str = "auto"
    fallback_server: tuple[str, ...] = ()

    def solver_config(self) -> list[dict[str, Any]]:
        return cli_config(self.dns, self.dns_server, self.tsig_key_file, self.dns_zone,
                          self.dns_propagation_timeout, self.dns_timeout, self.tls_alpn_bind,
                          tls_alpn_check=self.tls_alpn_check)  # fmt: skip

    def has_solver_options(self) -> bool:
        return bool(self.dns or self.tls_alpn_bind)

    def solvers(self, store: FileStore, config: SolverConfig | None = None) -> Solvers:
        """The solvers ``config`` (default: these options) configures; raises ConfigError. Used to check names."""
        chosen = self.solver_config() if config is None else config
        return build_solvers(chosen, ChallengeStore(), state_dir=journal_dir(store))


def journal_dir(store: FileStore) -> str:
    return str(store.root / "dns01-presented")


def engine_options(fn: F) -> F:
    """Add the shared options; the command receives them as ``engine: EngineOptions``, checked and logging set up."""

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        engine = EngineOptions(**{f.name: kwargs.pop(f.name) for f in fields(EngineOptions)})
        metrics_file: str | None = kwargs.pop("metrics_file")
        setup_logging(engine.verbose)
        try:
            check_engine_options(engine)
            engine.solver_config()
            if metrics_file:
                from certkeeper.observe.host import check_metrics_file

                check_metrics_file(metrics_file)
        except CertkeeperError as error:
            fail(error)
        if not metrics_file:
            return fn(engine=engine, **kwargs)
        try:
            return fn(engine=engine, **kwargs)
        finally:
            # Whatever the run's result: the file says what the store holds now.
            _write_metrics(metrics_file, kwargs["store"], engine.rate_limits)

    decorators = [
        option("--ca-bundle", type=click.Path(exists=True, dir_okay=False),
               help="PEM file to trust for the CA's own HTTPS (a private CA such as Pebble)."),
        option("--http-bind", default="0.0.0.0:80", show_default=True,
               help="HOST:PORT where the HTTP-01 responder listens while ordering."),
        option("--deploy-hook", metavar="CMD",
               help="Shell command run after a certificate changed (RENEWED_LINEAGE, RENEWED_DOMAINS set)."),
        option("--concurrency", type=click.IntRange(1, 64), default=16, show_default=True,
               help="Certificates ordered at once."),
        option("--order-timeout", type=click.IntRange(1, 3600), default=90, show_default=True, metavar="SECONDS",
               help="Give up on an order the CA has not finished in this time (every request counts)."),
        option("--force", is_flag=True, help="Order even if the stored certificate is still good."),
        option("-v", "--verbose", count=True, help="More log output (-vv for debug)."),
        option("--metrics-file", type=click.Path(dir_okay=False), metavar="PATH.prom",
               help="Afterwards, write every stored certificate's metrics here for node_exporter's "
                    "textfile collector (replaced atomically)."),
        *DNS_OPTIONS,
        option("--rate-limits", default="auto", show_default=True, metavar="LIMITS",
               help="The CA's limits the ledger enforces before ordering: auto (Let's Encrypt's for it, none "
                    "for others), letsencrypt, none, or e.g. new-orders=300/3h,per-domain=50/7d."),
        option("--rehearsal", default="auto", show_default=True, metavar="SERVER",
               help="Order a new name set at this CA first, production only if it succeeds: auto (Let's "
                    "Encrypt staging before Let's Encrypt), off, or a directory URL / letsencrypt-staging."),
        option("--fallback-server", multiple=True, metavar="URL",
               help="Another CA to order from when the first refuses (rate limited, down, policy); repeatable, "
                    "tried in order. Renewals start at the first CA again."),
    ]  # fmt: skip
    wrapped: Any = command
    for decorator in reversed(decorators):
        wrapped = decorator(wrapped)
    return cast(F, wrapped)


def _write_metrics(path: str, store: str, rate_limits: str) -> None:
    from certkeeper.observe.host import write_metrics_file

    try:
        write_metrics_file(FileStore(store), path, rate_limits)
    except CertkeeperError as error:
        fail(error)


def check_engine_options(engine: EngineOptions) -> None:
    """Refuse what cannot work before anything is read, written or sent."""
    _, port = parse_bind(engine.http_bind)
    if port == 0:
        raise ConfigError(
            f"--http-bind {engine.http_bind} asks for port 0, a random port the CA cannot know",
            "give the port the CA's requests reach, e.g. 0.0.0.0:80",
        )
    if engine.ca_bundle:
        check_ca_bundle(engine.ca_bundle)
    parse_limits(engine.rate_limits, "")
    rehearsal_server(engine.rehearsal, "")
    for url in engine.fallback_server:
        try:
            resolve_server(url)
        except ConfigError as error:
            raise ConfigError(f"--fallback-server: {error.problem}", error.fix) from None


def setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="certkeeper: %(levelname)s: %(message)s", stream=sys.stderr)
    # The ACME library logs whole JWS bodies at debug level; keep it quiet unless asked for twice.
    logging.getLogger("acme").setLevel(logging.DEBUG if verbose > 2 else logging.WARNING)


def host_ledger(store: FileStore, issuer: IssuerSpec, rate_limits: str) -> Ledger:
    """The store's rate-limit ledger (``ratelimits.json``), shared by every run on this host."""
    return Ledger(FileBackend(store.root), parse_limits(rate_limits, issuer.directory_url))


def run_engine(
    issuer: IssuerSpec,
    store: FileStore,
    specs: list[CertSpec],
    options: EngineOptions,
    solvers: SolverConfig | None = None,
) -> list[Outcome]:
    """Run the engine (``solvers``: default, the options'), with a progress bar for many certificates on a terminal."""
    setup = SolverSetup(tuple(options.solver_config() if solvers is None else solvers), journal_dir(store))
    show_progress = len(specs) > 1 and sys.stderr.isatty()
    if plain_http_off_loopback(issuer.directory_url):
        click.echo(f"certkeeper: warning: the server {issuer.directory_url} is plain HTTP: anyone on the way "
                   "can read and change what the CA answers; use its https:// URL", err=True)  # fmt: skip
    issuer = replace(issuer, order_timeout_s=float(options.order_timeout))

    interrupted: list[str] = []

    async def go() -> list[Outcome]:
        engine = Engine(issuer, store, http_bind=options.http_bind, concurrency=options.concurrency,
                        deploy_hook=options.deploy_hook, force=options.force,
                        solvers=setup, ledger=host_ledger(store, issuer, options.rate_limits),
                        rehearsal=build_rehearsal(options.rehearsal, issuer, store))  # fmt: skip
        if options.fallback_server:
            others = [
                IssuerSpec(
                    resolve_server(url),
                    issuer.email,
                    ca_bundle=issuer.ca_bundle,
                    order_timeout_s=issuer.order_timeout_s,
                )
                for url in options.fallback_server
            ]
            engine.fallback = Fallback(others, store)
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None

        def stop(signum: signal.Signals) -> None:
            interrupted.append(signum.name)
            main.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop, signum)
        try:
            if not show_progress:
                return await engine.run(specs)
            from rich.progress import Progress

            with Progress(transient=True) as progress:
                task = progress.add_task("certificates", total=len(specs))
                return await engine.run(specs, lambda _: progress.advance(task))
        except asyncio.CancelledError:
            return []
        finally:
            await engine.close()
            if interrupted:
                # Orders still running in worker threads are abandoned: take their DNS records out now.
                engine.solvers.close()

    outcomes = asyncio.run(go())
    if interrupted:
        click.echo(f"certkeeper: error: stopped by {interrupted[0]}; certificates not yet stored were not "
                   "issued; run again to finish", err=True)  # fmt: skip
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(130)  # do not wait for the abandoned orders' threads
    return outcomes


def _when(value: datetime.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def report(outcomes: list[Outcome], store: FileStore) -> int:
    """One line per certificate (a table for many); failures on stderr. Returns the exit code."""
    failed = [o for o in outcomes if not o.ok]
    if len(outcomes) == 1 and not failed:
        o = outcomes[0]
        names = " ".join(o.spec.names)
        if o.status == "unchanged":
            why = "" if o.detail == "still good" else f" ({o.detail})"
            click.echo(f"{names}: still good until {_when(o.info.not_after if o.info else None)}{why}; "
                       f"no order made; next check {_when(o.next_check)}")  # fmt: skip
        else:
            assert o.info is not None
            click.echo(f"{o.status} {names}: serial {o.info.serial}, expires {_when(o.info.not_after)}, "
                       f"stored in {Path(store.location(o.spec.lineage))}")  # fmt: skip
    elif len(outcomes) > 1:
        summary_table(outcomes)
    for o in failed:
        if o.status == "deferred":
            click.echo(f"certkeeper: error: {' '.join(o.spec.names)}: not ordered: {o.detail}; next attempt after "
                       f"{_when(o.next_check)} (--force tries now)", err=True)  # fmt: skip
        else:
            click.echo(f"certkeeper: error: {' '.join(o.spec.names)}: {o.detail}", err=True)
    return 1 if failed else 0


def summary_table(outcomes: list[Outcome]) -> None:
    from rich.console import Console
    from rich.table import Table

    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    table = Table(title="certkeeper: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for column in ("names", "result", "expires", "seconds"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(" ".join(o.spec.names), o.status, _when(o.info.not_after if o.info else None),
                      f"{o.seconds:.2f}")  # fmt: skip
    Console(width=max(100, Console().width)).print(table)
