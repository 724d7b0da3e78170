"""``certkeeper renew``: renew every certificate in the store that is due."""

from __future__ import annotations

import click

from certkeeper.clikit import fail
from certkeeper.commands.common import engine_options, report, run_engine, setup_logging, store_option
from certkeeper.engine import Outcome
from certkeeper.errors import CertkeeperError
from certkeeper.spec import CertSpec, IssuerSpec, KeyType
from certkeeper.stores.files import FileStore


@click.command()
@store_option
@engine_options
def renew(
    store: str,
    ca_bundle: str | None,
    http_bind: str,
    deploy_hook: str | None,
    concurrency: int,
    force: bool,
    verbose: int,
) -> None:
    """Renew every certificate in the store that is due (all of them with --force).

    Each certificate is renewed at the CA and with the choices it was issued with.
    """
    setup_logging(verbose)
    files = FileStore(store)
    by_issuer: dict[IssuerSpec, list[CertSpec]] = {}
    try:
        for lineage in files.lineages():
            current = files.load(lineage)
            if current is None or not current.meta:
                click.echo(f"certkeeper: warning: {lineage}: no readable metadata; issue it again", err=True)
                continue
            meta = current.meta
            issuer = IssuerSpec(meta["directory_url"], meta.get("email"), ca_bundle=ca_bundle or meta.get("ca_bundle"))
            spec = CertSpec(tuple(meta["names"]), KeyType.parse(meta.get("key_type", "ec-p256")),
                            bool(meta.get("reuse_key")), meta.get("profile"), meta.get("preferred_chain"))  # fmt: skip
            by_issuer.setdefault(issuer, []).append(spec)
    except CertkeeperError as error:
        fail(str(error))
    if not by_issuer:
        click.echo(f"no certificates in {store}; use `certkeeper issue NAME...` first")
        raise SystemExit(0)
    outcomes: list[Outcome] = []
    for issuer, specs in by_issuer.items():
        outcomes += run_engine(issuer, files, specs, http_bind=http_bind, concurrency=concurrency,
                               deploy_hook=deploy_hook, force=force)  # fmt: skip
    raise SystemExit(report(outcomes, files))
