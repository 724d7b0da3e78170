"""`certkeeper status --serve`: the status page in real headless Chromium, and /metrics, for a host's store."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from promtext import parse, promtool_check, value

from testbench.chromium import Browser
from testbench.command import CERTKEEPER, Env, Run, one_error_line

HOSTILE = '<script>document.title="owned"</script>'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as chromium:
        yield chromium


@pytest.fixture
def served(env: Env, store: Path, certkeeper: Run) -> Iterator[str]:
    """A store with two issued certificates and one whose recorded names and CA error carry markup."""
    for name in ("page-a.test", "page-b.test"):
        assert certkeeper(env, "issue", name).returncode == 0
    hostile = store / "hostile.test"
    hostile.mkdir(mode=0o700)
    (hostile / "state.json").write_text(json.dumps({
        "names": [f"x{HOSTILE}.test"], "failures": 2, "last_failure": "2026-11-28T10:00:00+00:00",
        "last_error": f"the CA said: {HOSTILE} <img src=x onerror=alert(1)>",
    }))  # fmt: skip
    process = subprocess.Popen([CERTKEEPER, "status", "--serve", "127.0.0.1:0"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert match, line + (process.stderr.read() if process.stderr else "")
    try:
        yield f"http://127.0.0.1:{match.group(1)}"
    finally:
        process.terminate()
        assert process.wait(10) == 0  # SIGTERM: a clean stop


def expiry_of(store: Path, name: str) -> datetime.datetime:
    return x509.load_pem_x509_certificate((store / name / "cert.pem").read_bytes()).not_valid_after_utc


def rows(html: str) -> dict[str, str]:
    """Table rows by their first cell's text."""
    found = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", html.split("<tbody>", 1)[1], re.S):
        first = re.match(r"<td[^>]*>(.*?)</td>", row, re.S)
        assert first
        found[first.group(1)] = row
    return found


@pytest.mark.parametrize("javascript", [True, False], ids=["javascript", "no-javascript"])
def test_page_lists_every_certificate_with_its_expiry(
    served: str, store: Path, browser: Browser, javascript: bool
) -> None:
    page = browser.load(served + "/", javascript=javascript)
    table = rows(page.html)
    assert set(table) == {"page-a.test", "page-b.test", "hostile.test"}
    for name in ("page-a.test", "page-b.test"):
        expiry = expiry_of(store, name)
        assert f'data-sort="{expiry.timestamp():.0f}"' in table[name]
        assert expiry.strftime("%Y-%m-%d %H:%M UTC") in table[name]
        assert ">ready<" in table[name]
    # The markup from the store is text: no script of it ran, no element of it exists.
    assert page.title.startswith("certkeeper: ")
    assert '&lt;script&gt;document.title="owned"&lt;/script&gt;' in table["hostile.test"]
    assert "<img" not in page.html
    assert "2 failure(s)" in table["hostile.test"]
    # The filter box needs the page's script: shown only when it ran.
    assert ('id="filter" placeholder="filter" hidden' in page.html) is not javascript


def test_page_screenshot_is_a_picture(served: str, browser: Browser, tmp_path: Path) -> None:
    shot = tmp_path / "status.png"
    browser.screenshot(served + "/", shot)
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 5000


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return str(answer.read().decode())


def test_served_metrics_pass_promtool_and_follow_the_store(served: str, store: Path, env: Env, certkeeper: Run) -> None:
    text = scrape(served)
    check = promtool_check(text)
    assert check.returncode == 0, check.stdout + check.stderr
    samples = parse(text)
    expiry = value(samples, "certkeeper_certificate_expiration_timestamp_seconds", name="page-a.test")
    assert expiry == expiry_of(store, "page-a.test").timestamp()
    assert value(samples, "certkeeper_certificate_consecutive_failures", name="hostile.test") == 2.0
    # Read at each scrape: a certificate issued meanwhile by another process shows up.
    assert value(samples, "certkeeper_certificate_expiration_timestamp_seconds", name="page-c.test") is None
    assert certkeeper(env, "issue", "page-c.test").returncode == 0
    later = parse(scrape(served))
    expiry = value(later, "certkeeper_certificate_expiration_timestamp_seconds", name="page-c.test")
    assert expiry == expiry_of(store, "page-c.test").timestamp()


def test_serve_on_a_bad_address_is_one_line(env: Env, certkeeper: Run) -> None:
    result = certkeeper(env, "status", "--serve", "nonsense")
    assert result.returncode == 2
    assert "is not HOST:PORT" in one_error_line(result)


def test_a_name_without_kube_is_one_line(env: Env, certkeeper: Run) -> None:
    result = certkeeper(env, "status", "example.com")
    assert result.returncode == 2
    assert "add --kube" in one_error_line(result)
