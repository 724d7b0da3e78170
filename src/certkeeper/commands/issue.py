"""``certkeeper issue``: one certificate for NAMES, or many from --file."""

from __future__ import annotations

import click

from certkeeper.clikit import fail, option
from certkeeper.commands.common import EngineOptions, engine_options, report, run_engine, store_option
from certkeeper.errors import CertkeeperError
from certkeeper.spec import LETSENCRYPT, CertSpec, IssuerSpec, KeyType, normalize_names, resolve_server
from certkeeper.stores.files import FileStore


def read_name_file(path: str) -> list[tuple[str, ...]]:
    """One certificate per line, names separated by spaces; blank lines and # comments skipped.

    Each line's names come back normalized. Two lines that would share a lineage (the same first
    name) are refused: each run would re-order one over the other, flip-flopping the stored
    certificate and spending the CA's rate limits.
    """
    try:
        with open(path, "rb") as handle:
            raw_lines = handle.read().splitlines()
    except OSError as error:
        raise CertkeeperError(f"cannot read {path} ({error.strerror})", "check the path and its permissions") from None
    groups: list[tuple[str, ...]] = []
    first_seen: dict[str, list[int]] = {}
    for number, raw in enumerate(raw_lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CertkeeperError(f"{path}, line {number} is not UTF-8 text", "save the file as UTF-8") from None
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            names = normalize_names(text.split(), allow_wildcard=True)
        except CertkeeperError as error:
            raise CertkeeperError(f"{path}, line {number}: {error}") from None
        lineage = CertSpec(names).lineage
        first_seen.setdefault(lineage, []).append(number)
        if len(first_seen[lineage]) == 1:
            groups.append(names)
    for lineage, numbers in first_seen.items():
        if len(numbers) > 1:
            listed = ", ".join(f"line {n}" for n in numbers)
            raise CertkeeperError(
                f"{path}: {listed} have the same first name {lineage}, which names one certificate",
                "merge them into one line, or start each line with a different name",
            )
    if not groups:
        raise CertkeeperError(f"{path} lists no names", "put one certificate per line, names separated by spaces")
    return groups


@click.command()
@click.argument("names", nargs=-1)
@option(
    "--file",
    "name_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Many certificates: one per line, names separated by spaces.",
)
@option(
    "--server",
    default=LETSENCRYPT,
    show_default="Let's Encrypt production",
    help="ACME directory URL, or letsencrypt / letsencrypt-staging.",
)
@option("--email", help="Contact address for the ACME account.")
@store_option
@option(
    "--key-type",
    default="ec-p256",
    show_default=True,
    help="ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096.",
)
@option("--reuse-key", is_flag=True, help="Keep the previous private key when renewing.")
@option("--profile", help="ACME profile to request (e.g. tlsserver, shortlived), if the CA offers it.")
@option(
    "--preferred-chain",
    metavar="ISSUER_CN",
    help="Pick the alternate chain whose top certificate is issued by this name.",
)
@option("--eab-kid", help="External Account Binding key id (CAs that require it).")
@option("--eab-hmac-key", help="External Account Binding HMAC key, base64url.")
@engine_options
def issue(
    names: tuple[str, ...],
    name_file: str | None,
    server: str,
    email: str | None,
    store: str,
    key_type: str,
    reuse_key: bool,
    profile: str | None,
    preferred_chain: str | None,
    eab_kid: str | None,
    eab_hmac_key: str | None,
    engine: EngineOptions,
) -> None:
    """Issue a certificate for NAMES (the first names it), or one per line of --file.

    A certificate that is still good is left alone unless --force is given.
    """
    try:
        if name_file and names:
            raise CertkeeperError("give NAMES or --file, not both")
        groups = read_name_file(name_file) if name_file else [names]
        kt = KeyType.parse(key_type)
        specs = [
            CertSpec(normalize_names(g, allow_wildcard=True), kt, reuse_key, profile or None, preferred_chain or None)
            for g in groups
        ]
        # A wildcard (or any name) no configured solver can prove is refused before any order.
        solvers = engine.solvers(FileStore(store))
        for spec in specs:
            solvers.check_names(spec.names)
        issuer = IssuerSpec(
            resolve_server(server), email or None, eab_kid or None, eab_hmac_key or None, engine.ca_bundle
        )
    except CertkeeperError as error:
        fail(error)
        return
    files = FileStore(store)
    raise SystemExit(report(run_engine(issuer, files, specs, engine), files))
