"""Faults a running proxy meets: bad certificate files, a full or read-only disk, a killed supervisor.

Every fault is made for real (broken DER, tmpfs mounts, SIGKILL); the proxy must log one line, keep
serving what it served, and keep HTTP (and so ACME challenges) up.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from der_surgery import BREAKS, broken_chain
from proxy_helpers import (
    LocalCA,
    RunningProxy,
    StartProxy,
    free_port,
    http_get,
    run_certkeeper_proxy,
    served_serial,
    wait_for,
    write_plain,
)

from testbench.volumes import write_secret_volume

WITHIN = 10  # generous: the proxy polls every 0.2 s in these tests
POLLS = 1.5  # long enough for several polls, to see that a refusal is not logged again at each one

NOBODY = 65534

Mount = Callable[[Path, str], None]


@pytest.fixture
def mount_tmpfs() -> Iterator[Mount]:
    """``mount -t tmpfs -o <options>`` on a directory; every mount is undone after the test."""
    mounted: list[Path] = []

    def mount(where: Path, options: str) -> None:
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
        mounted.append(where)

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until its file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def refusals(proxy: RunningProxy) -> list[str]:
    return [line for line in proxy.log().splitlines() if "refused the certificate" in line]


def https_closed(proxy: RunningProxy) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", proxy.https_port)) != 0


def assert_http_only(proxy: RunningProxy) -> None:
    """Up on plain HTTP: challenges routed, everything else 503; HTTPS not listening."""
    assert http_get(proxy.http_port, "/.well-known/acme-challenge/tok")[0] == 200
    assert http_get(proxy.http_port, "/")[0] == 503
    assert https_closed(proxy)


@pytest.mark.parametrize("how", sorted(BREAKS))
def test_a_malformed_certificate_at_start_leaves_http_up_until_a_good_one_comes(
    start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA, cert_service_port: int, how: str
) -> None:
    bad = ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": broken_chain(bad.chain_pem, how), "proxykey": bad.key_pem})
    proxy = start_proxy(ENABLE_SSL="true", CERT_SERVICE=f"127.0.0.1:{cert_service_port}")

    wait_for(lambda: bool(refusals(proxy)), WITHIN, "a log line refusing the malformed certificate")
    assert_http_only(proxy)
    assert "Traceback" not in proxy.log()

    good = ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": good.chain_pem, "proxykey": good.key_pem})
    wait_for(lambda: served_serial(proxy.https_port, ca.client_context()) == good.serial, WITHIN, "HTTPS on")


@pytest.mark.parametrize("how", sorted(BREAKS))
def test_a_malformed_certificate_mid_run_is_refused_and_rotations_go_on(
    start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA, how: str
) -> None:
    first = ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": first.chain_pem, "proxykey": first.key_pem})
    proxy = start_proxy(ENABLE_SSL="true")
    context = ca.client_context()
    assert served_serial(proxy.https_port, context) == first.serial

    bad = ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": broken_chain(bad.chain_pem, how), "proxykey": bad.key_pem})

    wait_for(lambda: bool(refusals(proxy)), WITHIN, "a log line refusing the malformed certificate")
    time.sleep(POLLS)
    (line,) = refusals(proxy)
    assert f"still serving serial {first.serial:x}" in line
    assert served_serial(proxy.https_port, context) == first.serial
    # The supervisor is still there: the next good certificate is served.
    second = ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": second.chain_pem, "proxykey": second.key_pem})
    wait_for(lambda: served_serial(proxy.https_port, context) == second.serial, WITHIN, "the next good pair")
    assert "PRIVATE KEY" not in proxy.log()


def test_a_full_disk_under_run_dir_is_a_refusal_and_the_old_pair_keeps_serving(
    start_proxy: StartProxy, secrets_dir: Path, world_dir: Path, ca: LocalCA, mount_tmpfs: Mount
) -> None:
    run_dir = world_dir / "run"
    mount_tmpfs(run_dir / "live", "size=64k,mode=755")
    first = ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": first.chain_pem, "proxykey": first.key_pem})
    proxy = start_proxy(ENABLE_SSL="true", RUN_DIR=str(run_dir))
    context = ca.client_context()
    assert served_serial(proxy.https_port, context) == first.serial
    filler = run_dir / "live" / "filler"
    fill(filler)

    second = ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": second.chain_pem, "proxykey": second.key_pem})

    wait_for(lambda: bool(refusals(proxy)), WITHIN, "a log line refusing to install on a full disk")
    time.sleep(POLLS)
    (line,) = refusals(proxy)
    assert "No space left on device" in line
    assert f"still serving serial {first.serial:x}" in line
    assert served_serial(proxy.https_port, context) == first.serial
    filler.unlink()
    wait_for(lambda: served_serial(proxy.https_port, context) == second.serial, WITHIN, "served once there is room")


@pytest.mark.parametrize(("options", "fixed", "error"), [
    ("ro,mode=755", "rw", "Read-only file system"),
    ("size=4k,mode=755", "size=1m", "No space left on device"),
])  # fmt: skip
def test_an_unwritable_live_dir_at_start_leaves_http_up_until_it_is_fixed(
    start_proxy: StartProxy,
    secrets_dir: Path,
    world_dir: Path,
    ca: LocalCA,
    cert_service_port: int,
    mount_tmpfs: Mount,
    options: str,
    fixed: str,
    error: str,
) -> None:
    run_dir = world_dir / "run"
    mount_tmpfs(run_dir / "live", options)
    issued = ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": issued.chain_pem, "proxykey": issued.key_pem})
    proxy = start_proxy(ENABLE_SSL="true", RUN_DIR=str(run_dir), CERT_SERVICE=f"127.0.0.1:{cert_service_port}")

    wait_for(lambda: bool(refusals(proxy)), WITHIN, "a log line saying why HTTPS is off")
    time.sleep(POLLS)
    (line,) = refusals(proxy)
    assert error in line
    assert_http_only(proxy)

    remount(run_dir / "live", fixed)
    wait_for(lambda: served_serial(proxy.https_port, ca.client_context()) == issued.serial, WITHIN, "HTTPS on")


def test_a_full_run_dir_is_one_clear_error_not_a_traceback(world_dir: Path, mount_tmpfs: Mount) -> None:
    # nginx needs RUN_DIR for its configuration and pid file: this one fault is fatal, and says so.
    run_dir = world_dir / "run"
    mount_tmpfs(run_dir, "size=4k,mode=755")
    (run_dir / "tmp").mkdir()
    fill(run_dir / "filler")
    env = {"TARGET_SERVICE": "127.0.0.1:9", "RUN_DIR": str(run_dir), "LISTEN_ADDRESS": "127.0.0.1",
           "HTTP_PORT": str(free_port()), "SECRETS_DIR": str(world_dir)}  # fmt: skip
    process = run_certkeeper_proxy(env, world_dir / "out.log")

    assert process.wait(timeout=30) == 2
    log = (world_dir / "out.log").read_text()
    assert f"certkeeper: error: cannot write {run_dir}/nginx.conf: No space left on device" in log
    assert "Traceback" not in log


def test_a_certificate_not_valid_yet_is_refused_but_a_few_minutes_of_skew_are_allowed(
    start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA
) -> None:
    first = ca.issue()
    write_plain(secrets_dir, first.chain_pem, first.key_pem)
    proxy = start_proxy(ENABLE_SSL="true")
    # Not the client's clock rules here, only which certificate the proxy serves.
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    assert served_serial(proxy.https_port, unverified) == first.serial

    early = ca.issue(not_before=dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
    write_plain(secrets_dir, early.chain_pem, early.key_pem)

    wait_for(lambda: bool(refusals(proxy)), WITHIN, "a log line refusing the early certificate")
    assert "is not valid before" in refusals(proxy)[0]
    assert served_serial(proxy.https_port, unverified) == first.serial

    # A CA whose clock is a little ahead: within the allowed skew, so served.
    soon = ca.issue(not_before=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2))
    write_plain(secrets_dir, soon.chain_pem, soon.key_pem)
    wait_for(lambda: served_serial(proxy.https_port, unverified) == soon.serial, WITHIN, "the slightly early one")


def test_an_oversized_file_is_refused_once(start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA) -> None:
    first = ca.issue()
    write_plain(secrets_dir, first.chain_pem, first.key_pem)
    proxy = start_proxy(ENABLE_SSL="true")

    write_plain(secrets_dir, first.chain_pem + b"\n" * (2 << 20), first.key_pem)

    wait_for(lambda: bool(refusals(proxy)), WITHIN, "a log line refusing the oversized file")
    time.sleep(POLLS)
    (line,) = refusals(proxy)
    assert "proxycert is larger than 1 MiB" in line
    assert served_serial(proxy.https_port, ca.client_context()) == first.serial


def test_an_unreadable_key_is_refused_once_then_served_when_readable(
    start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA
) -> None:
    # Plain root reads any file; without CAP_DAC_OVERRIDE it meets permissions as a pod's user does.
    first, second = ca.issue(), ca.issue()
    write_plain(secrets_dir, first.chain_pem, first.key_pem)
    proxy = start_proxy(no_dac_override=True, ENABLE_SSL="true")
    context = ca.client_context()
    assert served_serial(proxy.https_port, context) == first.serial

    os.chown(secrets_dir / "proxykey", NOBODY, NOBODY)  # mode 0600: nobody's alone from now on
    write_plain(secrets_dir, second.chain_pem, second.key_pem)

    wait_for(lambda: bool(refusals(proxy)), WITHIN, "a log line refusing the unreadable key")
    time.sleep(POLLS)
    (line,) = refusals(proxy)
    assert "cannot read proxykey: Permission denied" in line
    assert served_serial(proxy.https_port, context) == first.serial
    os.chown(secrets_dir / "proxykey", 0, 0)
    wait_for(lambda: served_serial(proxy.https_port, context) == second.serial, WITHIN, "served once readable")


def test_a_secrets_dir_it_cannot_enter_is_refused_and_watching_goes_on(
    start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA
) -> None:
    first, second = ca.issue(), ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": first.chain_pem, "proxykey": first.key_pem})
    proxy = start_proxy(no_dac_override=True, ENABLE_SSL="true")
    context = ca.client_context()

    os.chown(secrets_dir, NOBODY, NOBODY)
    secrets_dir.chmod(0o700)

    wait_for(lambda: bool(refusals(proxy)), WITHIN, "a log line saying the secrets cannot be read")
    assert "cannot look into it: Permission denied" in refusals(proxy)[0]
    assert served_serial(proxy.https_port, context) == first.serial
    assert proxy.process.poll() is None
    os.chown(secrets_dir, 0, 0)
    write_secret_volume(secrets_dir, {"proxycert": second.chain_pem, "proxykey": second.key_pem})
    wait_for(lambda: served_serial(proxy.https_port, context) == second.serial, WITHIN, "the next pair served")


def test_malformed_dh_parameters_are_ignored_not_fatal(start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA) -> None:
    issued = ca.issue()
    write_plain(secrets_dir, issued.chain_pem, issued.key_pem)
    (secrets_dir / "dhparam").write_bytes(b"-----BEGIN DH PARAMETERS-----\nbm90IERI\n-----END DH PARAMETERS-----\n")

    proxy = start_proxy(ENABLE_SSL="true")

    assert served_serial(proxy.https_port, ca.client_context()) == issued.serial
    assert any("ignoring" in line and "dhparam" in line for line in proxy.log().splitlines())


def test_a_restart_after_the_supervisor_was_killed_takes_the_ports_back(
    start_proxy: StartProxy, secrets_dir: Path, world_dir: Path, ca: LocalCA
) -> None:
    issued = ca.issue()
    write_plain(secrets_dir, issued.chain_pem, issued.key_pem)
    env = {"ENABLE_SSL": "true", "RUN_DIR": str(world_dir / "run"),
           "HTTP_PORT": str(free_port()), "HTTPS_PORT": str(free_port())}  # fmt: skip
    first = start_proxy(**env)
    old_master = first.master_pid()
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=10)
    try:
        assert Path(f"/proc/{old_master}").exists(), "nginx should outlive a SIGKILLed supervisor"

        second = start_proxy(**env)

        wait_for(lambda: "stopped nginx" in second.log(), WITHIN, "a log line about the old nginx")
        line = next(line for line in second.log().splitlines() if "stopped nginx" in line)
        assert f"pid {old_master}" in line
        assert env["HTTP_PORT"] in line and env["HTTPS_PORT"] in line
        wait_for(lambda: second.master_pid() != old_master, WITHIN, "a new nginx master")
        assert served_serial(second.https_port, ca.client_context()) == issued.serial
        assert http_get(second.http_port, "/")[0] == 301
        assert second.process.poll() is None
    finally:
        if Path(f"/proc/{old_master}").exists():  # the fix did not take it back: do not leave it running
            os.kill(old_master, signal.SIGTERM)  # the master takes its workers with it (SIGKILL would not)
            wait_for(lambda: not Path(f"/proc/{old_master}").exists(), 15, "the old nginx gone")


def test_a_second_proxy_on_the_same_run_dir_refuses_to_start_and_the_first_keeps_serving(
    start_proxy: StartProxy, secrets_dir: Path, world_dir: Path, ca: LocalCA
) -> None:
    issued = ca.issue()
    write_plain(secrets_dir, issued.chain_pem, issued.key_pem)
    first = start_proxy(ENABLE_SSL="true")
    env = {"ENABLE_SSL": "true", "TARGET_SERVICE": "127.0.0.1:9", "SECRETS_DIR": str(secrets_dir),
           "RUN_DIR": str(first.run_dir), "LISTEN_ADDRESS": "127.0.0.1",
           "HTTP_PORT": str(first.http_port), "HTTPS_PORT": str(first.https_port)}  # fmt: skip
    master = first.master_pid()

    second = run_certkeeper_proxy(env, world_dir / "second.log")

    assert second.wait(timeout=30) == 2
    assert f"another certkeeper proxy is running with RUN_DIR={first.run_dir}" in (world_dir / "second.log").read_text()
    assert first.master_pid() == master and first.process.poll() is None
    assert served_serial(first.https_port, ca.client_context()) == issued.serial


def test_a_stream_of_hostile_files_never_stops_the_proxy_nor_serves_a_bad_pair(
    start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA
) -> None:
    good = ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": good.chain_pem, "proxykey": good.key_pem})
    proxy = start_proxy(ENABLE_SSL="true")
    context = ca.client_context()
    other = ca.issue()
    other_leaf_end = other.chain_pem.index(b"-----END CERTIFICATE-----")
    rng = random.Random(4242)
    # Each of these must be refused, so the served certificate never changes.
    hostile: list[Callable[[], tuple[bytes, bytes]]] = [
        *[lambda how=how: (broken_chain(other.chain_pem, how), other.key_pem) for how in BREAKS],  # type: ignore[misc]
        lambda: (other.chain_pem, good.key_pem),
        lambda: (other.chain_pem[: rng.randrange(other_leaf_end)], other.key_pem),
        lambda: (other.chain_pem, other.key_pem[: rng.randrange(len(other.key_pem) - 30)]),
        lambda: (other.key_pem, other.chain_pem),
        lambda: (b"", b""),
        lambda: (other.chain_pem + b"\0" * (2 << 20), other.key_pem),
        lambda: (ca.issue(expired=True).chain_pem, good.key_pem),
        lambda: (ca.issue(not_before=dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).chain_pem, good.key_pem),
    ]

    for _ in range(150):
        cert, key = rng.choice(hostile)()
        write_secret_volume(secrets_dir, {"proxycert": cert, "proxykey": key})
        time.sleep(rng.choice((0.0, 0.05, 0.25)))  # some files are polled, some replaced unseen
        assert proxy.process.poll() is None, proxy.log()

    assert served_serial(proxy.https_port, context) == good.serial
    last = ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": last.chain_pem, "proxykey": last.key_pem})
    wait_for(lambda: served_serial(proxy.https_port, context) == last.serial, WITHIN, "the last good pair")
    log = proxy.log()
    assert "Traceback" not in log and "PRIVATE KEY" not in log
    assert refusals(proxy)
