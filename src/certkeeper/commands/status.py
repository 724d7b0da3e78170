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
def status(store: str, as_json: bool, rate_limits: str) -> None:
    """Show the certificates in the store: names, key type, expiry, next renewal, headroom, last error."""
    try:
        parse_limits(rate_limits, "")
    except ConfigError as error:
        fail(str(error))
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
        # Names, dates and counts stay on one line; the issuer and the problem fold.
        table.add_column(column, no_wrap=column not in ("issuer", "headroom", "problem / last error"), overflow="fold")
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
