"""``certkeeper status``: what the store holds and when each certificate renews."""

from __future__ import annotations

import datetime
import json
from typing import Any

import click

from certkeeper.clikit import fail, option
from certkeeper.commands.common import store_option
from certkeeper.errors import ConfigError
from certkeeper.ledger import FileBackend, Ledger
from certkeeper.model import RenewalState
from certkeeper.ratelimits import Event, headroom, parse_limits
from certkeeper.stores.files import FileStore
from certkeeper.stores.schema import meta_problem


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _headroom(files: FileStore, events: list[Event], rate_limits: str, directory_url: object,
              names: list[str]) -> dict[str, int]:  # fmt: skip
    """How many more orders/certificates each of the CA's limits lets these names have now."""
    if not isinstance(directory_url, str):
        return {}
    limits = parse_limits(rate_limits, directory_url)
    account = files.load_account(directory_url)
    return headroom(limits, events, names, _domains(names), account.url if account else None,
                    datetime.datetime.now(datetime.UTC).timestamp())  # fmt: skip


def _domains(names: list[str]) -> tuple[str, ...]:
    from certkeeper.ledger import domains_of

    return domains_of(names)


def collect(files: FileStore, rate_limits: str = "auto") -> list[dict[str, Any]]:
    now = datetime.datetime.now(datetime.UTC)
    events = Ledger(FileBackend(files.root), ()).events() if files.root.is_dir() else []
    rows = []
    for lineage in files.lineages():
        current = files.load(lineage)
        state, damaged = RenewalState.from_dict(files.load_state(lineage))
        info = current.info if current else None
        meta = current.meta if current else {}
        meta_names = meta.get("names") if isinstance(meta.get("names"), list) else None
        problems = [current.problem if current else "no certificate yet"]
        problems += [meta_problem(current.meta, current.meta_problem) if current and current.usable else None]
        problems += [f"state.json is damaged ({'; '.join(damaged)})" if damaged else None]
        if files.load_pending(lineage) is not None:
            problems.append("an issued certificate waits to be stored (the next run stores it)")
        if state.hook_pending and info and state.hook_pending == info.fingerprint:
            problems.append("the deploy hook has not yet succeeded for this certificate")
        key_type = meta.get("key_type")
        names = list(info.names) if info else [str(n) for n in meta_names or state.names or [lineage]]
        rows.append({
            "lineage": lineage,
            "names": names,
            "key_type": key_type if isinstance(key_type, str) else None,
            "issuer": info.issuer if info else None,
            "serial": info.serial if info else None,
            "not_after": info.not_after.isoformat() if info else None,
            "days_left": round((info.not_after - now).total_seconds() / 86400, 1) if info else None,
            "renew_at": _iso(state.renew_at),
            "next_check": _iso(state.next_check),
            "problem": "; ".join(p for p in problems if p) or None,
            "last_error": state.last_error if state.failures else None,
            # Limit -> how many more fit now (the rate-limit ledger); {} for a CA without limits.
            "headroom": _headroom(files, events, rate_limits, meta.get("directory_url") or state.directory_url, names),
            "path": files.location(lineage),
        })  # fmt: skip
    return rows


def _kube(as_json: bool, namespace: str | None, all_namespaces: bool, name: str | None) -> None:
    from certkeeper.errors import CertkeeperError

    if all_namespaces and (namespace or name):
        fail("-A lists every namespace: give it without -n or NAME")
    try:
        from certkeeper.kube.status import certificates, relative

        rows = certificates(None if all_namespaces else namespace or "", name)
    except CertkeeperError as error:
        fail(error)
        return
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if name:
        r = rows[0]
        click.echo(f"Certificate {r['namespace']}/{r['name']}: Ready={r['ready']} ({r['reason'] or '-'})")
        for label, key in (("names", "names"), ("Secret", "secret"), ("issuer", "issuer"), ("message", "message")):
            value = " ".join(r[key]) if isinstance(r[key], list) else r[key]
            click.echo(f"  {label}: {value or '-'}")
        click.echo(f"  expires: {relative(r['not_after'])}; renews: {relative(r['renewal_time'])}")
        click.echo(f"  failed attempts: {r['failed_attempts']} (last {r['last_failure_time'] or '-'})")
        click.echo(f"  order in flight: {r['order'] or '-'}")
        for c in r["conditions"]:
            click.echo(
                f"  condition {c.get('type')}={c.get('status')} {c.get('reason') or ''}: {c.get('message') or ''}"
            )
        for e in r["events"]:
            click.echo(f"  event {e['time']} {e['type']} {e['reason']}: {e['message']}")
        return
    if not rows:
        click.echo("no Certificates found")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="certkeeper status --kube")
    for column in ("namespace", "name", "ready", "secret", "issuer", "expires", "renews", "failures", "message"):
        table.add_column(column, overflow="fold", no_wrap=column != "message")
    for r in rows:
        table.add_row(r["namespace"], r["name"], r["ready"], r["secret"] or "-", r["issuer"] or "-",
                      relative(r["not_after"]), relative(r["renewal_time"]), str(r["failed_attempts"]),
                      r["message"] or "-")  # fmt: skip
    Console(width=max(160, Console().width)).print(table)


def _serve(store: str, bind: str) -> None:
    import asyncio

    from certkeeper.errors import CertkeeperError
    from certkeeper.observe.host import serve

    try:
        asyncio.run(serve(FileStore(store), bind, f"certkeeper: {store}"))
    except CertkeeperError as error:
        fail(error)


@click.command()
@store_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@option(
    "--rate-limits",
    default="auto",
    show_default=True,
    metavar="LIMITS",
    help="The CA limits to show headroom under (as for issue): auto, letsencrypt, none, or NAME=COUNT/WINDOW,...",
)
@click.option("--serve", metavar="HOST:PORT",
              help="Serve the status page at / and metrics at /metrics, read-only, until stopped.")  # fmt: skip
@click.option("--kube", is_flag=True, help="Show the cluster's Certificates (current kubeconfig context) instead.")
@click.option("-n", "--namespace", help="With --kube: this namespace (default: the context's).")
@click.option("-A", "--all-namespaces", is_flag=True, help="With --kube: every namespace.")
@click.argument("name", required=False)
def status(
    store: str,
    as_json: bool,
    serve: str | None,
    kube: bool,
    namespace: str | None,
    all_namespaces: bool,
    name: str | None,
    rate_limits: str,
) -> None:
    """Show the certificates in the store: names, key type, expiry, next renewal, headroom, last error.

    With --kube, the cluster's Certificates; with --kube NAME, one Certificate's conditions and Events.
    """
    if (name or namespace or all_namespaces) and not kube:
        fail("NAME, -n and -A are for a cluster's Certificates: add --kube (a host's store takes no NAME)")
    try:
        parse_limits(rate_limits, "")
    except ConfigError as error:
        fail(error)
    if kube:
        _kube(as_json, namespace, all_namespaces, name)
        return
    if serve:
        _serve(store, serve)
        return
    rows = collect(FileStore(store), rate_limits)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no certificates in {store}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"certkeeper status: {store}")
    columns = ("names", "key", "issuer", "expires", "days left", "renews", "next attempt", "headroom",
               "problem / last error")  # fmt: skip
    for column in columns:
        # Dates and counts stay on one line; names wrap between names, the issuer and the problem fold.
        # A floor on the issuer's width: folded into a 7-character column it took five lines a row.
        table.add_column(
            column,
            no_wrap=column not in ("names", "issuer", "headroom", "problem / last error"),
            overflow="fold",
            min_width={"issuer": 24, "problem / last error": 20}.get(column),
            max_width=40 if column == "names" else None,
        )
    for r in rows:
        table.add_row(
            " ".join(r["names"]),
            r["key_type"] or "-",
            r["issuer"] or "-",
            (r["not_after"] or "-")[:10],
            "-" if r["days_left"] is None else f"{r['days_left']:.0f}",
            (r["renew_at"] or "-")[:10],
            (r["next_check"] or "-")[:16].replace("T", " "),
            _tightest(r["headroom"]),
            "; ".join(p for p in (r["problem"], r["last_error"]) if p),
        )
    Console(width=max(160, Console().width)).print(table)


def _tightest(room: dict[str, int]) -> str:
    """The limit closest to being reached, e.g. ``3 certificates per registered domain``; ``-``: no limits."""
    if not room:
        return "-"
    title, left = min(room.items(), key=lambda item: item[1])
    return f"{max(left, 0)} {title}"
