"""What a crash, a full or read-only disk, a planted link or a damaged file leaves: never a lost certificate.

Each test makes the fault for real (a SIGKILL at a chosen write, a read-only bind mount, a full
tmpfs, links and bytes planted in the store) and drives the ``certkeeper`` command as cron would.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from storecheck import consistency_problems, count_points, killed_run, orders_for, serial_of

from certkeeper.acme.account import account_id
from testbench.ari import AcmeFront
from testbench.command import CERTKEEPER, Env, Run
from testbench.pebble import Pebble, free_port


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()


def point_after(env: Env, store: Path, tmp_path: Path, event: str, *args: str) -> int:
    """The kill point just after the first change whose trace line ends with ``event`` (on a scratch copy)."""
    scratch = tmp_path / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    if store.exists():
        shutil.copytree(store, scratch, symlinks=True)
    trace = tmp_path / "trace"
    count_points({**env, "CERTKEEPER_STORE": str(scratch)}, scratch, trace, *args)
    lines = trace.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.endswith(event)) + 1


# -- 3. links consumers read ------------------------------------------------------------------------


def test_a_still_good_run_restores_missing_and_planted_links(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    assert certkeeper(ari_env, "issue", "links.test").returncode == 0
    lineage = store / "links.test"
    elsewhere = tmp_path / "elsewhere.pem"
    elsewhere.write_text("someone else's file\n")
    for name in ("cert.pem", "chain.pem", "meta.json"):
        (lineage / name).unlink()
    (lineage / "privkey.pem").unlink()
    (lineage / "privkey.pem").symlink_to(elsewhere)  # a link replaced by one pointing elsewhere
    (lineage / "fullchain.pem").unlink()
    (lineage / "fullchain.pem").write_text("a stale copy\n")  # a regular file where the link was

    result = certkeeper(ari_env, "issue", "links.test")
    assert result.returncode == 0, result.stderr
    assert "still good" in result.stdout
    assert orders_for(ari, "links.test") == 1
    assert consistency_problems(lineage, ["links.test"]) == []
    assert elsewhere.read_text() == "someone else's file\n", "the planted link's target was written"


def test_a_first_issuance_killed_before_its_links_gets_them_at_the_next_run(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    args = ("issue", "killed-links.test")
    kill_at = point_after(ari_env, store, tmp_path, "os.rename killed-links.test/current", *args)
    probed = orders_for(ari, "killed-links.test")  # the probe ordered on a scratch store
    assert killed_run(ari_env, store, kill_at, *args).returncode == -9
    lineage = store / "killed-links.test"
    assert (lineage / "current" / "cert.pem").exists() and not (lineage / "cert.pem").exists()
    result = certkeeper(ari_env, *args)
    assert result.returncode == 0, result.stderr
    assert consistency_problems(lineage, ["killed-links.test"]) == []
    assert orders_for(ari, "killed-links.test") == probed + 1


def test_a_first_issuance_killed_after_keeping_its_certificate_is_stored_by_renew(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    args = ("issue", "kept.test", "www.kept.test")
    kill_at = point_after(ari_env, store, tmp_path, "os.rename kept.test/pending.json", *args)
    probed = orders_for(ari, "kept.test")
    assert killed_run(ari_env, store, kill_at, *args).returncode == -9
    assert (store / "kept.test" / "pending.json").exists() and not (store / "kept.test" / "current").exists()
    assert "waits to be stored" in json.loads(certkeeper(ari_env, "status", "--json").stdout)[0]["problem"]
    result = certkeeper(ari_env, "renew")  # what cron runs
    assert result.returncode == 0, result.stderr
    assert consistency_problems(store / "kept.test", ["kept.test", "www.kept.test"]) == []
    assert orders_for(ari, "kept.test") == probed + 1, "ordered again although the certificate was kept"


# -- 4. the deploy hook after a swap -----------------------------------------------------------------


def test_the_deploy_hook_of_a_run_killed_after_its_swap_runs_at_the_next_run(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    hook = ("--deploy-hook", f"echo $RENEWED_DOMAINS >> {calls}")
    assert certkeeper(ari_env, "issue", *hook, "hooked.test").returncode == 0
    assert calls.read_text().splitlines() == ["hooked.test"]
    args = ("issue", "--force", *hook, "hooked.test")
    kill_at = point_after(ari_env, store, tmp_path, "os.rename hooked.test/current", *args)
    calls.unlink()
    assert killed_run(ari_env, store, kill_at, *args).returncode == -9
    assert not calls.exists(), "the killed run got as far as the hook: the test would prove nothing"

    result = certkeeper(ari_env, "issue", *hook, "hooked.test")  # not forced: the certificate is good
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == ["hooked.test"], "the hook owed for the new certificate did not run"
    assert certkeeper(ari_env, "issue", *hook, "hooked.test").returncode == 0
    assert calls.read_text().splitlines() == ["hooked.test"], "the hook ran again with nothing new"


def test_a_failing_hook_is_retried_at_each_run_until_it_succeeds(
    env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    calls, ok = tmp_path / "calls", tmp_path / "hook-may-succeed"
    hook = ("--deploy-hook", f"echo try >> {calls}; test -e {ok}")
    assert certkeeper(env, "issue", *hook, "retry-hook.test").returncode == 1
    assert certkeeper(env, "issue", *hook, "retry-hook.test").returncode == 1
    ok.touch()
    assert certkeeper(env, "issue", *hook, "retry-hook.test").returncode == 0
    assert certkeeper(env, "issue", *hook, "retry-hook.test").returncode == 0
    assert calls.read_text().splitlines() == ["try"] * 3


# -- 6. a read-only or full store ---------------------------------------------------------------------


def in_namespace(setup: str, env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """Run certkeeper in a private mount namespace after ``setup`` (shell) changed the mounts there."""
    script = f'{setup} && exec "$@"'
    command = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", CERTKEEPER, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_a_read_only_store_is_refused_before_ordering(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run
) -> None:
    assert certkeeper(ari_env, "issue", "readonly.test").returncode == 0
    serial = serial_of(store / "readonly.test" / "cert.pem")
    read_only = f"mount --bind {store} {store} && mount -o remount,bind,ro {store}"
    for args in (("issue", "--force", "readonly.test"), ("renew", "--force")):
        result = in_namespace(read_only, ari_env, *args)
        assert result.returncode == 1
        (line,) = error_lines(result)
        assert "readonly.test: cannot write to the store" in line and "Read-only file system" in line, line
    assert orders_for(ari, "readonly.test") == 1, "an order was made that could not be stored"
    assert serial_of(store / "readonly.test" / "cert.pem") == serial


@pytest.fixture
def tmpfs_store(store: Path) -> Iterator[tuple[int, Path]]:
    """A 2 MiB tmpfs mounted on ``store`` in a mount namespace held by a sleeping process: (its pid, our view)."""
    store.mkdir()
    holder = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs -o size=2m tmpfs {store} && echo ready && exec sleep 600"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        yield holder.pid, Path(f"/proc/{holder.pid}/root") / store.relative_to("/")
    finally:
        holder.kill()
        holder.wait()


def fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as out:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    out.write(b"\0" * size)
                    out.flush()
            except OSError:
                continue


def test_a_disk_full_after_ordering_keeps_the_certificate_and_stores_it_next_run_without_ordering(
    ari: AcmeFront, ari_env: Env, tmpfs_store: tuple[int, Path], tmp_path: Path
) -> None:
    holder, view = tmpfs_store
    calls = tmp_path / "calls"
    hook = ("--deploy-hook", f"echo run >> {calls}")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = ["nsenter", "-t", str(holder), "-m", "--", CERTKEEPER, *args]
        return subprocess.run(command, env=ari_env, capture_output=True, text=True, timeout=120)

    assert run("issue", *hook, "full.test").returncode == 0
    first = serial_of(view / "full.test" / "cert.pem")
    filler = view / "filler"
    # The disk fills while the CA issues: after the store was checked, before the certificate is saved.
    ari.before_request = lambda method, path: fill(filler) if path.startswith("/certZ/") else None
    result = run("issue", "--force", *hook, "full.test")
    ari.before_request = None
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert "was issued" in line and "No space left on device" in line and "pending.json" in line, line
    assert serial_of(view / "full.test" / "cert.pem") == first, "the good certificate was damaged"
    pending = view / "full.test" / "pending.json"
    assert stat.S_IMODE(pending.stat().st_mode) == 0o600
    assert orders_for(ari, "full.test") == 2

    status = json.loads(run("status", "--json").stdout)
    assert "waits to be stored" in status[0]["problem"]
    again = run("issue", *hook, "full.test")
    assert again.returncode == 1, "still full: kept, not lost"
    assert orders_for(ari, "full.test") == 2, "ordered again although the certificate was kept"
    filler.unlink()
    stored = run("issue", *hook, "full.test")
    assert stored.returncode == 0, stored.stderr
    assert "renewed full.test" in stored.stdout
    assert orders_for(ari, "full.test") == 2, "ordered again although the certificate was kept"
    assert serial_of(view / "full.test" / "cert.pem") != first
    assert consistency_problems(view / "full.test", ["full.test"]) == []
    assert calls.read_text().splitlines() == ["run", "run"]


def test_a_full_disk_is_refused_before_ordering(ari: AcmeFront, ari_env: Env, tmpfs_store: tuple[int, Path]) -> None:
    holder, view = tmpfs_store
    command = ["nsenter", "-t", str(holder), "-m", "--", CERTKEEPER]
    assert subprocess.run([*command, "issue", "roomless.test"], env=ari_env).returncode == 0
    fill(view / "filler")
    result = subprocess.run([*command, "issue", "--force", "roomless.test"], env=ari_env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert "roomless.test: cannot write to the store" in line and "No space left on device" in line, line
    assert "free some space" in line
    assert orders_for(ari, "roomless.test") == 1, "ordered although the store had no room for it"
    assert consistency_problems(view / "roomless.test", ["roomless.test"]) == []


# -- 9. planted links and the umask ----------------------------------------------------------------


def test_a_versions_link_out_of_the_store_is_refused_and_nothing_outside_is_deleted(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    assert certkeeper(ari_env, "issue", "prune.test").returncode == 0
    lineage = store / "prune.test"
    outside = tmp_path / "precious"
    shutil.copytree(lineage / "versions", outside)
    for n in ("2", "3"):
        (outside / n).mkdir()
        (outside / n / "data").write_text("keep me\n")
    shutil.rmtree(lineage / "versions")
    (lineage / "versions").symlink_to(outside)
    before = sorted(str(p.relative_to(outside)) for p in outside.rglob("*"))
    for _ in range(2):
        result = certkeeper(ari_env, "issue", "--force", "prune.test")
        assert result.returncode == 1
        (line,) = error_lines(result)
        assert f"refusing to use {lineage / 'versions'}: it is a symbolic link" in line, line
    assert sorted(str(p.relative_to(outside)) for p in outside.rglob("*")) == before
    assert orders_for(ari, "prune.test") == 1, "ordered although the store could not take it"
    status = json.loads(certkeeper(ari_env, "status", "--json").stdout)
    assert "symbolic link" in status[0]["problem"]


@pytest.mark.parametrize("planted", ["lineage", "accounts", "account"])
def test_a_planted_directory_link_is_refused_and_no_key_lands_outside(
    planted: str, ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = {
        "lineage": store / "planted.test",
        "accounts": store / "accounts",
        "account": store / "accounts" / account_id(ari.directory_url),
    }[planted]
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    result = certkeeper(ari_env, "issue", "planted.test")
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert f"refusing to use {link}: it is a symbolic link" in line, line
    assert list(outside.iterdir()) == [], "something was written through the link"
    assert orders_for(ari, "planted.test") == 0


def test_under_umask_000_no_directory_or_file_is_writable_by_others(ari_env: Env, store: Path, tmp_path: Path) -> None:
    down = {**ari_env, "CERTKEEPER_SERVER": f"https://127.0.0.1:{free_port()}/dir"}
    store_env = {**ari_env}
    for env, name, code in ((down, "failed.test", 1), (store_env, "umask.test", 0), (down, "failed2.test", 1)):
        result = subprocess.run([CERTKEEPER, "issue", name], env=env, capture_output=True, text=True,
                                preexec_fn=lambda: os.umask(0), timeout=120)  # fmt: skip
        assert result.returncode == code, result.stderr
    modes = {str(p.relative_to(store)): stat.S_IMODE(p.lstat().st_mode) for p in store.rglob("*") if not p.is_symlink()}
    assert modes["accounts"] == 0o700 and modes["failed.test"] == 0o755 and modes["umask.test/versions"] == 0o700
    writable = {path: oct(mode) for path, mode in modes.items() if mode & 0o022}
    assert writable == {}
    assert stat.S_IMODE(store.stat().st_mode) == 0o700


# -- 10. damaged meta.json, state.json and cert.pem ----------------------------------------------------

BAD_JSON = {
    "list": b"[1, 2]",
    "null": b"null",
    "truncated": b'{"names": ["dam',
    "empty": b"",
    "missing-key": b'{"names": ["damaged.test"], "key_type": "ec-p256"}',
    "wrong-type": b'{"names": "damaged.test", "directory_url": 7}',
}


@pytest.mark.parametrize("content", list(BAD_JSON.values()), ids=list(BAD_JSON))
def test_a_damaged_meta_json_is_a_problem_the_certificate_still_renews(
    content: bytes, env: Env, store: Path, certkeeper: Run
) -> None:
    assert certkeeper(env, "issue", "damaged.test", "www.damaged.test").returncode == 0
    lineage = store / "damaged.test"
    first = serial_of(lineage / "cert.pem")
    (lineage / "current" / "meta.json").write_bytes(content)

    status = certkeeper(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert "meta.json" in row["problem"] and row["names"] == ["damaged.test", "www.damaged.test"]
    assert "damaged.test" in certkeeper(env, "status").stdout

    result = certkeeper(env, "renew", "--force")
    assert result.returncode == 1, "a damaged file must reach cron's mail"
    assert "no certificates" not in result.stdout
    (line,) = error_lines(result)
    assert line.startswith("certkeeper: error: damaged.test: meta.json") and "renewing it for" in line, line
    assert serial_of(lineage / "cert.pem") != first, "not renewed although its names are known"
    assert json.loads((lineage / "meta.json").read_text())["names"] == ["damaged.test", "www.damaged.test"]
    assert certkeeper(env, "renew").returncode == 0


@pytest.mark.parametrize("content", [BAD_JSON["truncated"], BAD_JSON["missing-key"]], ids=["truncated", "missing-key"])
def test_a_damaged_meta_json_of_a_good_certificate_is_repaired_without_an_order(
    content: bytes, ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run
) -> None:
    assert certkeeper(ari_env, "issue", "truncated.test").returncode == 0
    (store / "truncated.test" / "current" / "meta.json").write_bytes(content)
    result = certkeeper(ari_env, "renew")
    assert result.returncode == 1 and "truncated.test: meta.json" in result.stderr
    assert "still good" in result.stdout
    fixed = certkeeper(ari_env, "renew")
    assert fixed.returncode == 0 and fixed.stderr == "", fixed.stderr
    assert orders_for(ari, "truncated.test") == 1


@pytest.mark.parametrize(
    "content",
    [b"[1, 2]", b"null", b'{"failures": "many"}', b'{"failures": 1, "last_failure": "yesterday"}', b'{"next_'],
    ids=["list", "null", "wrong-type", "bad-date", "truncated"],
)
def test_a_damaged_state_json_is_a_problem_and_rewritten(
    content: bytes, env: Env, store: Path, certkeeper: Run
) -> None:
    assert certkeeper(env, "issue", "state.test").returncode == 0
    (store / "state.test" / "state.json").write_bytes(content)
    (row,) = json.loads(certkeeper(env, "status", "--json").stdout)
    assert "state.json is damaged" in row["problem"]
    result = certkeeper(env, "renew")
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert "state.test: state.json is damaged" in line
    assert certkeeper(env, "issue", "state.test").returncode == 0
    assert certkeeper(env, "renew").returncode == 0


def _corrupt(cert_pem: bytes, how: str) -> bytes:
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    version = b"\xa0\x03\x02\x01\x02"
    at = der.index(version) + len(version)
    if how == "bad-version":
        der = der.replace(version, b"\xa0\x03\x02\x01\x07", 1)
    elif how == "negative-serial":
        assert der[at] == 0x02
        der = der[: at + 2] + bytes([der[at + 2] | 0x80]) + der[at + 3 :]
    else:  # key usage's OID made a second subjectAltName
        assert b"\x06\x03\x55\x1d\x0f" in der
        der = der.replace(b"\x06\x03\x55\x1d\x0f", b"\x06\x03\x55\x1d\x11", 1)
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize("how", ["negative-serial", "duplicate-extension", "bad-version"])
def test_a_corrupted_certificate_is_reported_and_replaced_without_a_traceback(
    how: str, env: Env, store: Path, certkeeper: Run
) -> None:
    assert certkeeper(env, "issue", "mangled.test").returncode == 0
    version = store / "mangled.test" / "current"
    (version / "cert.pem").write_bytes(_corrupt((version / "cert.pem").read_bytes(), how))
    (version / "fullchain.pem").write_bytes((version / "cert.pem").read_bytes() + (version / "chain.pem").read_bytes())
    for command in (("status",), ("status", "--json")):
        shown = certkeeper(env, *command)
        assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    (row,) = json.loads(certkeeper(env, "status", "--json").stdout)
    assert row["problem"].startswith("unreadable") and row["names"] == ["mangled.test"]
    renewed = certkeeper(env, "renew")
    assert renewed.returncode == 0, renewed.stderr
    assert "mangled.test: serial" in renewed.stdout
    assert consistency_problems(store / "mangled.test", ["mangled.test"]) == []
    (version / "cert.pem").write_bytes(_corrupt((version / "cert.pem").read_bytes(), how))
    assert certkeeper(env, "issue", "mangled.test").returncode == 0


# -- 13. leftovers, --force after an interrupted swap, status ------------------------------------------


def test_leftovers_of_killed_runs_are_removed_at_the_next_run(env: Env, store: Path, certkeeper: Run) -> None:
    assert certkeeper(env, "issue", "leftover.test").returncode == 0
    lineage = store / "leftover.test"
    account = next(p for p in (store / "accounts").iterdir() if not p.name.startswith("."))
    planted = [
        lineage / "versions" / ".new-abc123" / "privkey.pem",
        lineage / ".state.json.x1y2z3",
        lineage / ".cert.pem.tmp",
        lineage / ".reserve",
        account / ".key.pem.q9w8e7",
        store / "accounts" / ".new-k3y" / "key.pem",
    ]
    for path in planted:
        path.parent.mkdir(exist_ok=True)
        path.write_text("-----BEGIN PRIVATE KEY-----\nleft by a killed run\n")
    assert certkeeper(env, "issue", "leftover.test").returncode == 0
    assert [p for p in planted if p.exists()] == []
    assert not (lineage / "versions" / ".new-abc123").exists() and not (store / "accounts" / ".new-k3y").exists()


def test_a_failed_order_leaves_only_its_recorded_failure(
    pebble: Pebble, make_env: Callable[..., Env], store: Path, certkeeper: Run
) -> None:
    wrong = make_env(pebble.directory_url, pebble.ca_bundle, free_port(), store)  # the CA cannot reach us
    assert certkeeper(wrong, "issue", "unvalidated.test").returncode == 1
    assert sorted(os.listdir(store / "unvalidated.test")) == [".lock", "state.json"]


def test_force_after_an_interrupted_swap_keeps_the_last_version_that_was_current(
    ari_env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    assert certkeeper(ari_env, "issue", "swap.test").returncode == 0
    lineage = store / "swap.test"
    good = serial_of(lineage / "cert.pem")
    args = ("issue", "--force", "swap.test")
    before_swap = point_after(ari_env, store, tmp_path, "os.rename swap.test/current", *args) - 1
    assert killed_run(ari_env, store, before_swap, *args).returncode == -9
    assert os.readlink(lineage / "current") == "versions/1" and (lineage / "versions" / "2").is_dir()

    result = certkeeper(ari_env, *args)
    assert result.returncode == 0, result.stderr
    kept = {v.name: serial_of(v / "cert.pem") for v in (lineage / "versions").iterdir()}
    assert kept.get("1") == good, f"the last version that was current was pruned: {sorted(kept)}"
    assert len(kept) == 2 and serial_of(lineage / "cert.pem") != good


def test_status_shows_the_next_attempt_and_a_name_for_every_lineage(ari_env: Env, store: Path, certkeeper: Run) -> None:
    down = {**ari_env, "CERTKEEPER_SERVER": f"https://127.0.0.1:{free_port()}/dir"}
    assert certkeeper(down, "issue", "never.test").returncode == 1
    old = store / "old-format.test"
    old.mkdir()
    (old / "state.json").write_text('{"failures": 1, "last_failure": "2026-01-01T00:00:00+00:00"}')
    table = certkeeper(ari_env, "status")
    assert table.returncode == 0, table.stderr
    assert "next attempt" in table.stdout
    rows = {r["lineage"]: r for r in json.loads(certkeeper(ari_env, "status", "--json").stdout)}
    assert rows["never.test"]["names"] == ["never.test"] and rows["never.test"]["next_check"]
    assert rows["old-format.test"]["names"] == ["old-format.test"]
    never_row = next(line for line in table.stdout.splitlines() if "never.test" in line)
    assert rows["never.test"]["next_check"][:16].replace("T", " ") in never_row


# -- two runs at once ------------------------------------------------------------------------------


def _held_or_done(pid: int, lineage: Path, since: float) -> bool:
    """Whether the run ``pid`` holds the lineage's lock now, or has already recorded its state."""
    inode = (lineage / ".lock").stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" not in fields and str(pid) in fields and any(f.endswith(f":{inode}") for f in fields):
            return True
    return (lineage / "state.json").stat().st_mtime > since


def _until(what: str, reached: Callable[[], bool]) -> None:
    for _ in range(600):
        if reached():
            return
        time.sleep(0.1)
    pytest.fail(f"{what}: not reached in a minute")


def test_two_runs_taking_certificates_in_opposite_orders_both_finish(
    env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    """Each run holds some certificates and waits for others: neither may block the other forever."""
    names = [f"{c}.order.test" for c in "abcdef"]
    forward, backward = tmp_path / "forward", tmp_path / "backward"
    forward.write_text("\n".join(names) + "\n")
    backward.write_text("\n".join(reversed(names)) + "\n")
    assert certkeeper(env, "issue", "--file", str(forward)).returncode == 0
    pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    held = os.open(store / "c.order.test" / ".lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # the middle certificate is busy while both runs start
    try:
        since = time.time()
        ahead = subprocess.Popen([CERTKEEPER, "renew", "--concurrency", "1"], env=env, **pipes)
        _until("the first run to take a and b",
                   lambda: all(_held_or_done(ahead.pid, store / n, since) for n in names[:2]))  # fmt: skip
        behind = subprocess.Popen(
            [CERTKEEPER, "issue", "--concurrency", "1", "--file", str(backward)], env=env, **pipes
        )
        _until("the second run to take f, e and d",
                   lambda: all(_held_or_done(behind.pid, store / n, since) for n in names[3:]))  # fmt: skip
    finally:
        os.close(held)
    for run in (ahead, behind):
        try:
            _, err = run.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            ahead.kill(), behind.kill()
            raise AssertionError("the two runs waited for each other for good") from None
        assert run.returncode == 0, err
