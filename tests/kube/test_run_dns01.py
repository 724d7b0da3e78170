"""``certkeeper run`` keeping a wildcard certificate with DNS-01 (RFC 2136 at the bench's bind9), configured by env."""

from __future__ import annotations

from pathlib import Path

from lightkube import Client
from runkit import certkeeper_run, get_secret, run_to_exit, secret_bytes, seed_env, wait_for

from certkeeper.crypto import cert_info, key_matches_cert, split_pem_chain
from testbench.bind import Bind
from testbench.pebble import Pebble

NAMES = "*.kube.example.test kube.example.test"


def test_run_keeps_a_wildcard_secret_over_dns01(
    kube_client: Client, namespace: str, kubeconfig: Path, dns_pebble: Pebble, bind: Bind, tmp_path: Path
) -> None:
    env = seed_env(
        dns_pebble,
        namespace,
        kubeconfig,
        DOMAINS=NAMES,
        RC_NAMES="",
        CERTKEEPER_DNS="rfc2136",
        CERTKEEPER_DNS_SERVER=bind.server,
        CERTKEEPER_TSIG_KEY_FILE=str(bind.key_file),
        CERTKEEPER_DNS_STATE_DIR=str(tmp_path / "dns-state"),  # where run notes presented records
    )
    secret_name = "certs-wildcard.kube.example.test"  # "*" cannot be in a Secret name
    with certkeeper_run(env, tmp_path / "run.log") as run:
        secret = wait_for(f"the Secret {secret_name}", lambda: get_secret(kube_client, namespace, secret_name), run=run)
        assert run.stop() == 0
    chain = secret_bytes(secret, "tls.crt")
    leaf = split_pem_chain(chain)[0]
    assert set(cert_info(leaf).names) == set(NAMES.split())
    assert key_matches_cert(secret_bytes(secret, "tls.key"), leaf)
    assert [r for r in bind.txt("example.test") if r[2] != '"not-ours"'] == []
    assert not any((tmp_path / "dns-state").rglob("*.json")), "a presented record was left in the journal"


def test_run_refuses_a_wildcard_without_a_dns_solver(namespace: str, kubeconfig: Path, pebble: Pebble) -> None:
    result = run_to_exit(seed_env(pebble, namespace, kubeconfig, DOMAINS="*.nodns.test nodns.test"))
    assert result.returncode == 2
    assert "DOMAINS: '*.nodns.test' is a wildcard name and no DNS-01 solver covers it" in result.stderr


def test_a_killed_run_leaves_records_the_next_start_removes(
    kube_client: Client, namespace: str, kubeconfig: Path, dns_pebble: Pebble, bind: Bind, tmp_path: Path
) -> None:
    state = tmp_path / "dns-state"  # a volume that outlives the container
    common = {
        "RC_NAMES": "",
        "CERTKEEPER_DNS": "rfc2136",
        "CERTKEEPER_DNS_SERVER": bind.server,
        "CERTKEEPER_TSIG_KEY_FILE": str(bind.key_file),
        "CERTKEEPER_DNS_STATE_DIR": str(state),
        "CERTKEEPER_DNS_PROPAGATION_TIMEOUT": "300",
    }
    # slow.test never propagates to its second server: the run waits with its record out, and is killed.
    first_env = seed_env(dns_pebble, namespace, kubeconfig, DOMAINS="kube.slow.test", **common)
    with certkeeper_run(first_env, tmp_path / "first.log") as run:
        wait_for("the record presented", lambda: bind.txt("slow.test"), run=run)
        run.proc.kill()
        run.proc.wait(10)
    assert [r[0] for r in bind.txt("slow.test")] == ["_acme-challenge.kube.slow.test"]
    second_env = seed_env(dns_pebble, namespace, kubeconfig, DOMAINS="kube2.example.test", **common)
    with certkeeper_run(second_env, tmp_path / "second.log") as run:
        wait_for("the Secret", lambda: get_secret(kube_client, namespace, "certs-kube2.example.test"), run=run)
        assert "removed 1 TXT record(s) an interrupted run left" in run.log
        assert run.stop() == 0
    assert bind.txt("slow.test") == []
