"""The status page: one server-rendered HTML table, no external assets, complete with JavaScript off.

Every value is escaped: names come from users, errors from CAs. No key or certificate bytes are in
the rows it is given, so none can be shown.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Iterable

from certkeeper.observe.records import CertRecord

SOON_S = 7 * 86400

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}th,td{padding:.3em .6em;border-bottom:1px solid #ddd;
text-align:left;vertical-align:top}th{background:#f3f3f3;cursor:pointer}
.soon{background:#fff3cd}.expired,.failed{background:#f8d7da}.ok{color:#176a2c}.err{color:#a11}
small{color:#666}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}
"""

# Sorting by a column and filtering rows: a convenience; the page is whole without it.
SCRIPT = """
const table=document.getElementById('certs'),body=table.tBodies[0];
document.getElementById('filter').hidden=false;
document.getElementById('filter').addEventListener('input',e=>{const q=e.target.value.toLowerCase();
for(const r of body.rows)r.hidden=!r.textContent.toLowerCase().includes(q);});
table.tHead.addEventListener('click',e=>{const th=e.target.closest('th');if(!th)return;
const i=th.cellIndex,rows=[...body.rows],dir=th.dataset.dir==='1'?-1:1;th.dataset.dir=dir===1?'1':'-1';
const key=r=>r.cells[i].dataset.sort??r.cells[i].textContent;
rows.sort((a,b)=>{const x=key(a),y=key(b),nx=parseFloat(x),ny=parseFloat(y);
return dir*(isNaN(nx)||isNaN(ny)?x.localeCompare(y):nx-ny);});body.append(...rows);});
"""


def _abs(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def relative(seconds: float) -> str:
    """'in 3 days', '5 hours ago'."""
    span = abs(seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if span >= size:
            count = int(span // size)
            text = f"{count} {unit}{'s' if count != 1 else ''}"
            break
    else:
        text = "less than a minute"
    return f"in {text}" if seconds >= 0 else f"{text} ago"


def _row(row: CertRecord, now: float) -> str:
    e = html.escape
    css = []
    if row.not_after is None:
        expiry = '<td data-sort="0">no certificate</td>'
    else:
        left = row.not_after - now
        css.append("expired" if left <= 0 else "soon" if left < SOON_S else "")
        expiry = (f'<td data-sort="{row.not_after:.0f}">{e(relative(left))}<br>'
                  f"<small>{e(_abs(row.not_after))}</small></td>")  # fmt: skip
    renewal = "-"
    if row.renew_at is not None:
        renewal = f"{e(relative(row.renew_at - now))}<br><small>{e(_abs(row.renew_at))}</small>"
    if row.reason:
        renewal += f"<br><small>{e(row.reason)}</small>"
    state = "checking" if row.ready is None else "ready" if row.ready else "not ready"
    if row.ready is False:
        css.append("failed")
    error = "-"
    if row.last_error:
        when = f" ({e(relative(row.last_failure - now))})" if row.last_failure is not None else ""
        error = f'<span class="err">{e(row.last_error)}</span><br><small>{row.failures} failure(s){when}</small>'
    where = f"{e(row.namespace)}/" if row.namespace else ""
    return (
        f'<tr class="{" ".join(c for c in css if c)}"><td>{where}{e(row.name)}</td>'
        f"<td>{e(' '.join(row.names))}</td><td>{e(row.issuer or '-')}</td>{expiry}"
        f'<td data-sort="{row.renew_at or 0:.0f}">{renewal}</td>'
        f'<td class="{"ok" if row.ready else "err"}">{state}</td><td>{error}</td></tr>'
    )


def render(rows: Iterable[CertRecord], title: str, facts: dict[str, str] | None = None) -> str:
    """The page for ``rows``, soonest expiry first; ``facts``: account, leader... shown above the table."""
    now = datetime.datetime.now(datetime.UTC).timestamp()
    ordered = sorted(rows, key=lambda r: (r.not_after if r.not_after is not None else float("-inf"), r.name))
    e = html.escape
    listed = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in (facts or {}).items())
    soon = sum(1 for r in ordered if r.not_after is not None and r.not_after - now < SOON_S)
    failing = sum(1 for r in ordered if r.ready is False)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        f'<meta name="viewport" content="width=device-width"><style>{STYLE}</style></head><body>'
        f'<h1>{e(title)}</h1><dl>{listed}<dt>certificates</dt><dd id="count">{len(ordered)}'
        f" ({soon} expiring within 7 days, {failing} not ready)</dd><dt>as of</dt><dd>{e(_abs(now))}</dd></dl>"
        '<p><input id="filter" placeholder="filter" hidden></p>'
        '<table id="certs"><thead><tr><th>certificate</th><th>names</th><th>issuer</th><th>expires</th>'
        "<th>next renewal, and why</th><th>status</th><th>last error</th></tr></thead><tbody>"
        + "".join(_row(r, now) for r in ordered)
        + f"</tbody></table><script>{SCRIPT}</script></body></html>"
    )
