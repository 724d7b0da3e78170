"""``certkeeper renew``: renew every certificate in the store that is due."""

from __future__ import annotations

import contextlib
import json

import click

from certkeeper.commands.common import EngineOptions, engine_options, report, run_engine, store_option
from certkeeper.crypto import key_type_of
from certkeeper.engine import Outcome
from certkeeper.errors import CertkeeperError
from certkeeper.model import RenewalState
from certkeeper.spec import CertSpec, IssuerSpec, KeyType
from certkeeper.stores.base import StoredCert
from certkeeper.stores.files import FileStore
from certkeeper.stores.schema import MetaError, StoredChoices, from_meta


def recover(lineage: str, stored: StoredCert | None, state: RenewalState, files: FileStore) -> StoredChoices | None:
    """The choices to renew with when meta.json is damaged: names from state.json or the certificate."""
    pending = files.load_pending(lineage)
    certified = stored.info if stored and stored.info else pending.info if pending else None
    names = list(state.names) or (list(certified.names) if certified else [])
    first = lineage.replace("_", "*", 1) if lineage.startswith("_.") else lineage
    if first not in names:
        return None
    names.remove(first)
    accounts = files.account_directories()
    directory_url = state.directory_url or (accounts[0] if len(accounts) == 1 else None)
    if directory_url is None:
        return None
    key_type = KeyType.EC_P256
    if stored is not None and stored.key_pem:
        with contextlib.suppress(CertkeeperError):
            key_type = key_type_of(stored.key_pem) or key_type
    return StoredChoices(CertSpec((first, *names), key_type), directory_url, None, None)


def choices_of(lineage: str, files: FileStore) -> tuple[StoredChoices | None, list[str]]:
    """What to renew a lineage with, and the problems found on the way (each one line)."""
    stored = files.load(lineage)
    state, damaged = RenewalState.from_dict(files.load_state(lineage))
    problems = [f"state.json is damaged ({'; '.join(damaged)}); it is rewritten"] if damaged else []
    if stored is None and not state.names and files.load_pending(lineage) is None:
        return None, problems  # a first issuance that failed before this version recorded names: nothing to renew
    try:
        if stored is None:
            raise MetaError("no certificate stored yet")
        if stored.info is None and not stored.meta and stored.problem:
            raise MetaError(f"its files cannot be read ({stored.problem})")
        if stored.meta_problem:
            raise MetaError(stored.meta_problem)
        return from_meta(stored.meta), problems
    except MetaError as error:
        choices = recover(lineage, stored, state, files)
        if choices is None:
            problems.append(f"{error}, and its names cannot be recovered; issue it again with certkeeper issue NAMES")
        elif stored is not None and "refusing to use" not in (stored.problem or ""):
            # Not for a first issuance that failed (renew tries it again), nor for a refused store
            # path (the run reports that itself).
            problems.append(f"{error}; renewing it for {' '.join(choices.spec.names)} at {choices.directory_url}")
        return choices, problems


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
    troubled = False
    for lineage in files.lineages():
        choices, problems = choices_of(lineage, files)
        for problem in problems:
            click.echo(f"certkeeper: error: {lineage}: {problem}", err=True)
        troubled = troubled or bool(problems)
        if choices is None:
            continue
        solvers = engine.solver_config() if engine.has_solver_options() else choices.solvers
        try:
            issuer = IssuerSpec(choices.directory_url, choices.email, ca_bundle=engine.ca_bundle or choices.ca_bundle)
            engine.solvers(files, solvers).check_names(choices.spec.names)
        except CertkeeperError as error:
            click.echo(f"certkeeper: error: {lineage}: {error}", err=True)
            troubled = True
            continue
        groups.setdefault((issuer, json.dumps(solvers, sort_keys=True)), []).append(choices.spec)
    if not groups and not troubled:
        click.echo(f"no certificates in {store}; use `certkeeper issue NAME...` first")
        raise SystemExit(0)
    outcomes: list[Outcome] = []
    for (issuer, solvers_json), specs in groups.items():
        outcomes += run_engine(issuer, files, specs, engine, json.loads(solvers_json))
    code = report(outcomes, files) if outcomes else 0
    raise SystemExit(1 if troubled else code)
