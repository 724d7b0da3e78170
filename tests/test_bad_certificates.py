"""A CA gone wrong: a bad certificate changes nothing stored, the same one again runs no hook.

The ACME front (testbench/ari.py) spoils the certificate Pebble issued on its way to certkeeper;
tests/test_never_worse.py checks the same rule on crafted certificates directly.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from testbench.ari import CERTIFICATE_FAULTS, AcmeFront
from testbench.command import Env, Run

STORED = ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem", "meta.json")


def stored_files(lineage: Path) -> dict[str, bytes]:
    return {name: (lineage / name).read_bytes() for name in STORED}


def versions(lineage: Path) -> list[str]:
    return sorted(p.name for p in (lineage / "versions").iterdir())


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("lacks-name", "refusing to store a certificate that lacks "),
        ("expires-sooner", "refusing to replace a certificate with one that expires sooner"),
        ("wrong-key", "refusing to store a certificate whose key does not match it"),
        ("not-yet-valid", "refusing to store a certificate that is not valid now"),
    ],
)
def test_a_bad_certificate_from_the_ca_is_refused_and_the_stored_one_kept(
    fault: str, says: str, ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run
) -> None:
    assert fault in CERTIFICATE_FAULTS
    names = (f"{fault}.bad.test", f"www.{fault}.bad.test")
    assert certkeeper(ari_env, "issue", *names).returncode == 0
    lineage = store / names[0]
    before = stored_files(lineage)

    ari.window_in_past()  # renewal is due
    ari.certificate_fault = fault
    result = certkeeper(ari_env, "renew")
    assert len(ari.recorded_orders()) == 2, "the renewal was not even ordered"
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"certkeeper: error: {' '.join(names)}: {says}"), lines[0]
    assert stored_files(lineage) == before, "the stored certificate was touched"
    assert versions(lineage) == ["1"]

    # The failure is recorded: status shows it, and the next try waits (no order loop at a broken CA).
    row = json.loads(certkeeper(ari_env, "status", "--json").stdout)[0]
    assert row["problem"] is None and says in row["last_error"]
    assert datetime.datetime.fromisoformat(row["next_check"]) > datetime.datetime.now(datetime.UTC)
    held = certkeeper(ari_env, "renew")
    assert held.returncode == 1 and "not ordered" in held.stderr
    assert len(ari.recorded_orders()) == 2


def test_the_same_certificate_again_is_not_stored_again_and_runs_no_deploy_hook(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    calls = tmp_path / "hook-calls"
    hook = f'echo "$RENEWED_DOMAINS" >> {calls}'
    assert certkeeper(ari_env, "issue", "--reuse-key", "--deploy-hook", hook, "same.bad.test").returncode == 0
    assert calls.read_text().splitlines() == ["same.bad.test"]
    lineage = store / "same.bad.test"
    before = stored_files(lineage)

    ari.window_in_past()
    ari.certificate_fault = "replay"  # the CA answers the renewal with the certificate it issued before
    result = certkeeper(ari_env, "renew", "--deploy-hook", hook)
    assert result.returncode == 0, result.stderr
    assert len(ari.recorded_orders()) == 2, "the renewal was not even ordered"
    assert calls.read_text().splitlines() == ["same.bad.test"], "the deploy hook ran although nothing changed"
    assert versions(lineage) == ["1"]
    assert stored_files(lineage) == before
