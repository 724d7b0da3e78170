"""The certificate's life as the proxy's users see it: first issue, rotations, refusals, key handling."""

from __future__ import annotations

import os
import pwd
import socket
from pathlib import Path

from proxy_helpers import LocalCA, StartProxy, http_get, served_serial, wait_for, write_plain

from testbench.volumes import write_secret_volume

SERVED_WITHIN = 10  # generous: the proxy polls every 0.2 s in these tests


def test_starts_without_a_certificate_then_turns_https_on(
    start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA, cert_service_port: int
) -> None:
    proxy = start_proxy(ENABLE_SSL="true", CERT_SERVICE=f"127.0.0.1:{cert_service_port}")

    # No chicken-and-egg: the challenge is routed while there is nothing to serve HTTPS with.
    assert http_get(proxy.http_port, "/.well-known/acme-challenge/first")[0] == 200
    status, headers, body = http_get(proxy.http_port, "/")
    assert status == 503
    assert b"no certificate yet" in body
    assert "retry-after" in headers

    issued = ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": issued.chain_pem, "proxykey": issued.key_pem})

    context = ca.client_context()
    wait_for(lambda: served_serial(proxy.https_port, context) == issued.serial, SERVED_WITHIN, "HTTPS turned on")
    # Old workers finish their last accepts for a moment after the reload that adds HTTPS.
    wait_for(lambda: http_get(proxy.http_port, "/")[0] == 301, SERVED_WITHIN, "HTTP redirecting to HTTPS")


def test_rotation_by_secret_volume_swap_needs_no_restart_or_reload(
    start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA
) -> None:
    first, second = ca.issue(), ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": first.chain_pem, "proxykey": first.key_pem})
    proxy = start_proxy(ENABLE_SSL="true")
    context = ca.client_context()
    assert served_serial(proxy.https_port, context) == first.serial
    master = proxy.master_pid()
    workers_before = _children(master)

    write_secret_volume(secrets_dir, {"proxycert": second.chain_pem, "proxykey": second.key_pem})

    wait_for(lambda: served_serial(proxy.https_port, context) == second.serial, SERVED_WITHIN, "new serial served")
    assert proxy.master_pid() == master
    assert _children(master) == workers_before, "nginx was reloaded: its workers were replaced"


def test_rotation_by_plain_file_writes_with_tls_names(start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA) -> None:
    first, second = ca.issue(), ca.issue()
    write_plain(secrets_dir, first.chain_pem, first.key_pem, ("tls.crt", "tls.key"))
    proxy = start_proxy(ENABLE_SSL="true")
    context = ca.client_context()
    assert served_serial(proxy.https_port, context) == first.serial

    write_plain(secrets_dir, second.chain_pem, second.key_pem, ("tls.crt", "tls.key"))

    wait_for(lambda: served_serial(proxy.https_port, context) == second.serial, SERVED_WITHIN, "new serial served")


def test_a_mismatched_pair_is_refused_and_the_old_one_keeps_serving(
    start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA
) -> None:
    good, other = ca.issue(), ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": good.chain_pem, "proxykey": good.key_pem})
    proxy = start_proxy(ENABLE_SSL="true")

    write_secret_volume(secrets_dir, {"proxycert": other.chain_pem, "proxykey": good.key_pem})

    wait_for(lambda: "refused" in proxy.log(), SERVED_WITHIN, "a log line refusing the pair")
    refusal = next(line for line in proxy.log().splitlines() if "refused" in line)
    assert "does not match" in refusal
    assert f"{good.serial:x}" in refusal, "the refusal should say which certificate is still served"
    assert served_serial(proxy.https_port, ca.client_context()) == good.serial
    assert "PRIVATE KEY" not in proxy.log()


def test_an_expired_certificate_is_refused_at_start_and_challenges_still_work(
    start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA, cert_service_port: int
) -> None:
    stale = ca.issue(expired=True)
    write_plain(secrets_dir, stale.chain_pem, stale.key_pem)
    proxy = start_proxy(ENABLE_SSL="true", CERT_SERVICE=f"127.0.0.1:{cert_service_port}")

    wait_for(lambda: "expired" in proxy.log(), SERVED_WITHIN, "a log line refusing the expired certificate")
    assert http_get(proxy.http_port, "/")[0] == 503
    assert http_get(proxy.http_port, "/.well-known/acme-challenge/x")[0] == 200
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", proxy.https_port)) != 0


def test_the_served_key_is_private_to_nginx_workers(start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA) -> None:
    issued = ca.issue()
    write_plain(secrets_dir, issued.chain_pem, issued.key_pem)
    proxy = start_proxy(ENABLE_SSL="true")

    key = proxy.run_dir / "live" / "current" / "key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    if os.geteuid() == 0:
        assert pwd.getpwuid(key.stat().st_uid).pw_name == "www-data"
    assert "PRIVATE KEY" not in proxy.log()


def _children(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(c) for c in children}
