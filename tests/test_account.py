"""The ACME account: one registration however many first runs start at once, and a damaged one repaired."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from storecheck import consistency_problems, orders_for

from testbench.ari import AcmeFront
from testbench.command import CERTKEEPER, Env, Run
from testbench.pebble import free_port
from testbench.pki import key_pem


def account_dir(store: Path) -> Path:
    (folder,) = [p for p in (store / "accounts").iterdir() if not p.name.startswith(".")]
    return folder


def test_concurrent_first_runs_register_one_account_and_order_once(ari: AcmeFront, ari_env: Env, store: Path) -> None:
    command = [CERTKEEPER, "issue", "--deploy-hook", f"echo run >> {store.parent / 'calls'}", "race.test"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    runs = [subprocess.Popen(command, env=ari_env, **pipes) for _ in range(8)]
    results = [(run.wait(timeout=180), *run.communicate()) for run in runs]
    assert [code for code, _, _ in results] == [0] * 8, [err for _, _, err in results]
    assert len(ari.recorded_accounts()) == 1, "every first run registered its own account"
    assert orders_for(ari, "race.test") == 1, "the runs that waited found the certificate issued"
    assert sum("issued race.test" in out for _, out, _ in results) == 1
    assert sum("still good" in out for _, out, _ in results) == 7
    assert consistency_problems(store / "race.test", ["race.test"]) == []
    assert (store.parent / "calls").read_text().splitlines() == ["run"]
    account = json.loads((account_dir(store) / "account.json").read_text())
    assert account["url"] == ari.recorded_accounts()[0]


def test_a_key_paired_with_another_accounts_url_is_repaired_from_the_ca(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    """What two racing first runs of older versions left: one registration's key, the other's URL."""
    assert certkeeper(ari_env, "issue", "mine.test").returncode == 0
    other = tmp_path / "other-store"
    assert certkeeper({**ari_env, "CERTKEEPER_STORE": str(other)}, "issue", "other.test").returncode == 0
    mine, theirs = account_dir(store), account_dir(other)
    own_url = json.loads((mine / "account.json").read_text())["url"]
    registered = len(ari.recorded_accounts())
    for planted in ("with the other account's record", "as an older version wrote it"):
        shutil.copy(theirs / "account.json", mine / "account.json")
        if planted == "as an older version wrote it":  # URL and address only: nothing to tell the pair apart
            record = json.loads((mine / "account.json").read_text())
            (mine / "account.json").write_text(json.dumps({"url": record["url"], "directory_url": ari.directory_url}))
        result = certkeeper(ari_env, "issue", "--force", "mine.test")
        assert result.returncode == 0, f"{planted}: {result.stderr}"
        assert "repaired" in result.stderr
        assert json.loads((mine / "account.json").read_text())["url"] == own_url
        assert len(ari.recorded_accounts()) == registered, "the key's own account was found, not a new one made"
        again = certkeeper(ari_env, "issue", "--force", "mine.test")
        assert again.returncode == 0 and again.stderr == "", again.stderr


def test_a_ca_down_before_any_account_exists_is_recorded_and_backed_off(
    ari_env: Env, store: Path, certkeeper: Run
) -> None:
    down = {**ari_env, "CERTKEEPER_SERVER": f"https://127.0.0.1:{free_port()}/dir"}
    first = certkeeper(down, "issue", "down.test")
    assert first.returncode == 1
    assert "cannot reach the CA" in first.stderr
    rows = json.loads(certkeeper(down, "status", "--json").stdout)
    assert [r["names"] for r in rows] == [["down.test"]]
    assert "cannot reach the CA" in rows[0]["last_error"] and rows[0]["next_check"]
    again = certkeeper(down, "issue", "down.test")
    assert again.returncode == 1
    (line,) = again.stderr.strip().splitlines()
    assert "not ordered" in line and "backing off after 1 failure" in line and "--force tries now" in line


def test_an_account_key_the_ca_does_not_know_is_registered_once(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run
) -> None:
    """A key replaced by hand (or an account the CA forgot): the key is registered, not failed on forever."""
    assert certkeeper(ari_env, "issue", "forgotten.test").returncode == 0
    home = account_dir(store)
    (home / "key.pem").write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
    registered = len(ari.recorded_accounts())
    result = certkeeper(ari_env, "issue", "--force", "forgotten.test")
    assert result.returncode == 0, result.stderr
    assert len(ari.recorded_accounts()) == registered + 1
    record = json.loads((home / "account.json").read_text())
    assert record["url"] == ari.recorded_accounts()[-1]
    assert certkeeper(ari_env, "issue", "--force", "forgotten.test").returncode == 0
    assert len(ari.recorded_accounts()) == registered + 1
