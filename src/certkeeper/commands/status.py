"""``certkeeper status``: what the store holds and when each certificate renews."""

from __future__ import annotations

import datetime
import json
from typing import Any

import click

from certkeeper.commands.common import store_option
from certkeeper.stores.files import FileStore


def collect(files: FileStore) -> list[dict[str, Any]]:
    now = datetime.datetime.now(datetime.UTC)
    rows = []
    for lineage in files.lineages():
        current = files.load(lineage)
        state = files.load_state(lineage)
        info = current.info if current else None
        meta = current.meta if current else {}
        rows.append({
            "lineage": lineage,
            "names": list(info.names) if info else meta.get("names", []),
            "key_type": meta.get("key_type"),
            "issuer": info.issuer if info else None,
            "serial": info.serial if info else None,
            "not_after": info.not_after.isoformat() if info else None,
            "days_left": round((info.not_after - now).total_seconds() / 86400, 1) if info else None,
            "renew_at": state.get("renew_at"),
            "next_check": state.get("next_check"),
            "problem": current.problem if current else "no certificate yet",
            "last_error": state.get("last_error") if state.get("failures") else None,
            "path": files.location(lineage),
        })  # fmt: skip
    return rows


@click.command()
@store_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(store: str, as_json: bool) -> None:
    """Show the certificates in the store: names, key type, expiry, next renewal, last error."""
    rows = collect(FileStore(store))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no certificates in {store}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"certkeeper status: {store}")
    table.add_column("names", no_wrap=True)
    for column in ("key", "issuer", "expires", "days left", "renews", "last error"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            " ".join(r["names"]),
            r["key_type"] or "-",
            r["issuer"] or "-",
            (r["not_after"] or "-")[:16].replace("T", " "),
            "-" if r["days_left"] is None else f"{r['days_left']:.0f}",
            (r["renew_at"] or "-")[:16].replace("T", " "),
            r["last_error"] or r["problem"] or "",
        )
    Console(width=max(160, Console().width)).print(table)
