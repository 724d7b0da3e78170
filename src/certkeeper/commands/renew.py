"""``certkeeper renew``: renew every certificate in the store that is due."""

from __future__ import annotations

import json

import click

from certkeeper.clikit import fail
from certkeeper.commands.common import EngineOptions, engine_options, report, run_engine, store_option
from certkeeper.engine import Outcome
from certkeeper.errors import CertkeeperError
from certkeeper.spec import CertSpec, IssuerSpec, KeyType
from certkeeper.stores.files import FileStore


@click.command()
@store_option
@engine_options
def renew(store: str, engine: EngineOptions) -> None:
    """Renew every certificate in the store that is due (all of them with --force).

    Each certificate is renewed at the CA and with the choices it was issued with.
    """
    files = FileStore(store)
    # Each certificate is proven the way it was issued (its stored solvers), unless options say otherwise.
    groups: dict[tuple[IssuerSpec, str], list[CertSpec]] = {}
    try:
        for lineage in files.lineages():
            current = files.load(lineage)
            if current is None or not current.meta:
                click.echo(f"certkeeper: warning: {lineage}: no readable metadata; issue it again", err=True)
                continue
            meta = current.meta
            issuer = IssuerSpec(
                meta["directory_url"], meta.get("email"), ca_bundle=engine.ca_bundle or meta.get("ca_bundle")
            )
            spec = CertSpec(tuple(meta["names"]), KeyType.parse(meta.get("key_type", "ec-p256")),
                            bool(meta.get("reuse_key")), meta.get("profile"), meta.get("preferred_chain"))  # fmt: skip
            solvers = engine.solver_config() if engine.has_solver_options() else (meta.get("solvers") or [])
            try:
                engine.solvers(files, solvers).check_names(spec.names)
            except CertkeeperError as error:
                raise CertkeeperError(f"{lineage}: {error}") from None
            groups.setdefault((issuer, json.dumps(solvers, sort_keys=True)), []).append(spec)
    except CertkeeperError as error:
        fail(str(error))
    if not groups:
        click.echo(f"no certificates in {store}; use `certkeeper issue NAME...` first")
        raise SystemExit(0)
    outcomes: list[Outcome] = []
    for (issuer, solvers_json), specs in groups.items():
        outcomes += run_engine(issuer, files, specs, engine, json.loads(solvers_json))
    raise SystemExit(report(outcomes, files))
