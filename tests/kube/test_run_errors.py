"""``certkeeper run`` given bad input: clear errors, and nothing good overwritten."""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import cast

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Event, Secret
from runkit import SECRET, certkeeper_run, get_secret, run_to_exit, secret_bytes, seed_env, wait_for

from certkeeper.crypto import cert_info, key_matches_cert, split_pem_chain
from testbench.cluster import write_kubeconfig
from testbench.pebble import Pebble


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("domains", "says"),
    [
        ("", "DOMAINS is empty"),
        ("   ", "DOMAINS is empty"),
        ("example.com bad..name", "DOMAINS: 'bad..name' has an empty label"),
        ("*.example.com", "DOMAINS: '*.example.com' is a wildcard name"),
        ("01.2.3.4", "DOMAINS: '01.2.3.4' ends in a numeric label"),  # an IP address is fine; this is neither
    ],
)
def test_bad_domains_exit_with_one_clear_line(domains: str, says: str, tmp_path: Path) -> None:
    env = {
        "EMAIL": "admin@example.com",
        "DOMAINS": domains,
        "KUBECONFIG": str(tmp_path / "none"),
        "CERTKEEPER_HTTP_BIND": "127.0.0.1:0",
        "PATH": "/usr/bin:/bin",
    }
    result = run_to_exit(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("certkeeper: error: " + says), lines[0]


def test_every_configuration_problem_is_reported_at_once(tmp_path: Path) -> None:
    env = {
        "EMAIL": "",
        "DOMAINS": "example.com",
        "TYPE": "kubernetes.io/dockercfg",
        "CRON_FREQUENCY": "61 * * * *",
        "WORKLOADS": "cronjob/nightly",
        "NAMESPACE": "Not_A_Namespace",
        "LETSENCRYPT_ENDPOINT": "not a url",
        "CERTKEEPER_HTTP_BIND": "localhost",
        "CERTKEEPER_REHEARSAL": "staging please",
        "PATH": "/usr/bin:/bin",
    }
    result = run_to_exit(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    expected = [
        "EMAIL is empty",
        "TYPE 'kubernetes.io/dockercfg'",
        "CRON_FREQUENCY '61 * * * *'",
        "WORKLOADS: 'cronjob/nightly'",
        "NAMESPACE 'Not_A_Namespace'",
        "server 'not a url'",
        "bind address 'localhost'",
        "--rehearsal: server 'staging please' is not a URL",
    ]
    assert len(lines) == len(expected), result.stderr
    for fragment in expected:
        assert sum(fragment in line for line in lines) == 1, f"{fragment!r} not reported once in:\n{result.stderr}"


def test_api_unreachable_at_start_is_retried_with_a_clear_log_line(tmp_path: Path, pebble: Pebble) -> None:
    port = closed_port()
    config = tmp_path / "kubeconfig"
    write_kubeconfig(config, f"https://127.0.0.1:{port}", pebble.ca_bundle, "nobody", "no-token")
    env = seed_env(pebble, "default", config)
    with certkeeper_run(env, tmp_path / "run.log") as run:
        line = f"cannot reach the Kubernetes API at https://127.0.0.1:{port}"
        wait_for("three attempts logged", lambda: run.log.count(line) >= 3, timeout=30, run=run)
        assert "retrying in" in run.log and "(attempt 3)" in run.log
        # Meanwhile the health probe answers, so the pod is not killed while the API is away.
        http = env["CERTKEEPER_HTTP_BIND"].rsplit(":", 1)[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=5) as response:
            assert response.status == 200
        assert run.alive()
        assert run.stop() == 0
    assert "Traceback" not in run.log


def test_missing_rc_is_reported_and_the_certificate_still_stored(
    kube_client: Client, namespace: str, kubeconfig: Path, pebble: Pebble, tmp_path: Path
) -> None:
    env = seed_env(pebble, namespace, kubeconfig, RC_NAMES="no-such-rc")
    with certkeeper_run(env, tmp_path / "run.log", "--log-format=json") as run:
        secret = wait_for("the Secret", lambda: get_secret(kube_client, namespace), run=run)
        wait_for("the missing RC reported", lambda: "replicationcontroller/no-such-rc not found" in run.log, run=run)

        def warned() -> list[Event]:
            return [e for e in kube_client.list(Event, namespace=namespace) if e.reason == "WorkloadMissing"]

        events = wait_for("a WorkloadMissing Event", warned, run=run)
        assert events[0].type == "Warning" and "no-such-rc" in (events[0].message or "")
        time.sleep(0.5)
        assert run.alive(), "a missing RC must not stop certkeeper"
        assert run.stop() == 0
    chain = secret_bytes(secret, "proxycert")
    assert key_matches_cert(secret_bytes(secret, "proxykey"), split_pem_chain(chain)[0])
    for line in run.log.strip().splitlines():
        entry = json.loads(line)  # --log-format=json: every line is one JSON object
        assert {"time", "level", "message"} <= entry.keys()


def test_garbage_in_the_secret_is_replaced_by_a_good_certificate_and_its_type_kept(
    kube_client: Client, namespace: str, kubeconfig: Path, pebble: Pebble, tmp_path: Path
) -> None:
    junk = {
        "proxycert": base64.b64encode(b"not a certificate").decode(),
        "proxykey": "bm90IGEga2V5",
        "htpasswd": base64.b64encode(b"user:$apr1$x$y\n").decode(),
    }
    kube_client.create(
        cast(
            Secret,
            Secret.from_dict({"metadata": {"name": SECRET, "namespace": namespace}, "type": "Opaque", "data": junk}),
        )
    )
    env = seed_env(pebble, namespace, kubeconfig, RC_NAMES="")
    with certkeeper_run(env, tmp_path / "run.log") as run:

        def replaced() -> Secret | None:
            secret = get_secret(kube_client, namespace)
            return secret if secret and secret.data and secret.data.get("proxycert") != junk["proxycert"] else None

        secret = wait_for("the garbage replaced", replaced, run=run)
        assert "unusable" in run.log
        assert run.stop() == 0
    assert secret.type == "Opaque", "an existing Secret keeps its type"
    chain = secret_bytes(secret, "proxycert")
    assert key_matches_cert(secret_bytes(secret, "proxykey"), split_pem_chain(chain)[0])
    assert secret_bytes(secret, "htpasswd") == b"user:$apr1$x$y\n", "other keys of the Secret are kept"


def test_a_good_secret_is_never_overwritten_when_the_ca_fails(
    kube_client: Client, namespace: str, kubeconfig: Path, pebble: Pebble, tmp_path: Path
) -> None:
    env = seed_env(pebble, namespace, kubeconfig, RC_NAMES="")
    with certkeeper_run(env, tmp_path / "first.log") as run:
        good = wait_for("the first certificate", lambda: get_secret(kube_client, namespace), run=run)
        assert run.stop() == 0
    serial = cert_info(split_pem_chain(secret_bytes(good, "proxycert"))[0]).serial
    # Now a name is added (so a new certificate is due) but the CA is down: the Secret must stay as it was.
    down = seed_env(
        pebble,
        namespace,
        kubeconfig,
        RC_NAMES="",
        DOMAINS="example.com foo.example.com bar.example.com",
        LETSENCRYPT_ENDPOINT=f"https://127.0.0.1:{closed_port()}/dir",
    )
    with certkeeper_run(down, tmp_path / "second.log") as run:
        wait_for("the failure logged", lambda: "could not get a certificate" in run.log, run=run)

        def failed_event() -> bool:
            return any(
                e.reason == "Failed" and e.type == "Warning" for e in kube_client.list(Event, namespace=namespace)
            )

        wait_for("a Failed Event", failed_event, run=run)
        assert run.alive()
        assert run.stop() == 0
    after = get_secret(kube_client, namespace)
    assert after is not None and after.data == good.data
    assert cert_info(split_pem_chain(secret_bytes(after, "proxycert"))[0]).serial == serial


def test_sigterm_while_the_ca_hangs_exits_cleanly_at_once(
    namespace: str, kubeconfig: Path, pebble: Pebble, tmp_path: Path
) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        env = seed_env(pebble, namespace, kubeconfig, RC_NAMES="", LETSENCRYPT_ENDPOINT=f"https://127.0.0.1:{port}/dir")
        with certkeeper_run(env, tmp_path / "run.log") as run:
            wait_for("certkeeper serving", lambda: "serving HTTP-01" in run.log, run=run)
            time.sleep(1.0)  # now it waits for the CA's directory
            assert "could not get a certificate" not in run.log, "the CA was meant to hang, not fail"
            assert run.stop(timeout=15) == 0
    assert "SIGTERM received: stopping" in run.log and "Traceback" not in run.log


def test_workloads_secret_name_and_type_are_honoured(
    kube_client: Client, namespace: str, kubeconfig: Path, pebble: Pebble, tmp_path: Path
) -> None:
    from lightkube.resources.apps_v1 import DaemonSet, StatefulSet

    def spec(name: str) -> dict[str, object]:
        labels = {"app": name}
        return {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}},
        }

    kube_client.create(
        cast(
            StatefulSet,
            StatefulSet.from_dict(
                {"metadata": {"name": "db", "namespace": namespace}, "spec": {**spec("db"), "serviceName": "db"}}
            ),
        )
    )
    kube_client.create(
        cast(
            DaemonSet,
            DaemonSet.from_dict({"metadata": {"name": "agent", "namespace": namespace}, "spec": spec("agent")}),
        )
    )
    env = seed_env(
        pebble,
        namespace,
        kubeconfig,
        RC_NAMES="",
        SECRET_NAME="tls-web",
        TYPE="Opaque",
        WORKLOADS="sts/db daemonset/agent deployment/gone",
    )

    def restarted(kind: type[StatefulSet] | type[DaemonSet], name: str) -> bool:
        template = kube_client.get(kind, name, namespace=namespace).spec.template  # type: ignore[union-attr]
        return "kubectl.kubernetes.io/restartedAt" in (
            (template.metadata.annotations if template.metadata else None) or {}
        )

    with certkeeper_run(env, tmp_path / "run.log") as run:
        secret = wait_for("Secret tls-web", lambda: get_secret(kube_client, namespace, "tls-web"), run=run)
        wait_for("statefulset/db restarted", lambda: restarted(StatefulSet, "db"), run=run)
        wait_for("daemonset/agent restarted", lambda: restarted(DaemonSet, "agent"), run=run)
        wait_for("deployment/gone reported", lambda: "deployment/gone not found" in run.log, run=run)
        assert run.stop() == 0
    assert secret.type == "Opaque"
    assert get_secret(kube_client, namespace, SECRET) is None, "SECRET_NAME replaces certs-<domain>"
