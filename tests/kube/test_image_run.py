"""The certkeeper image as deploy/certkeeper runs it: its ServiceAccount, its env, a read-only root."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

from lightkube import Client
from lightkube.resources.core_v1 import Secret, ServiceAccount
from runkit import DOMAINS, SECRET, get_secret, make_rc, secret_bytes, wait_for

from certkeeper.crypto import cert_info, key_matches_cert, split_pem_chain
from testbench import cluster as bench
from testbench import containers
from testbench.pebble import Pebble

ROOT = Path(__file__).resolve().parents[2]
# The kubelet mounts /var/run/secrets/kubernetes.io/serviceaccount; /var/run is a symlink to /run in
# the image, which runc follows and buildah's chroot mounts do not.
SERVICE_ACCOUNT_DIR = "/run/secrets/kubernetes.io/serviceaccount"
CA_BUNDLE = "/etc/certkeeper/pebble-ca.pem"


def service_account_volume(client: Client, namespace: str, cluster: bench.Cluster, directory: Path) -> Path:
    """What the kubelet mounts for the pod's ServiceAccount: token, ca.crt, namespace."""

    def token_secret() -> str | None:
        account = client.get(ServiceAccount, "certkeeper", namespace=namespace)
        return account.secrets[0].name if account.secrets else None

    name = wait_for("the certkeeper ServiceAccount's token", token_secret)
    directory.mkdir(mode=0o755)
    (directory / "token").write_bytes(secret_bytes(client.get(Secret, name, namespace=namespace), "token"))
    (directory / "ca.crt").write_bytes(cluster.ca_file.read_bytes())
    (directory / "namespace").write_text(namespace)
    for path in directory.iterdir():
        path.chmod(0o644)
    return directory


def test_the_image_run_as_deployed_issues_the_secret_with_its_service_account(
    kube_client: Client, namespace: str, kubectl: Any, cluster: bench.Cluster, pebble: Pebble, tmp_path: Path
) -> None:
    kubectl("apply", "-k", str(ROOT / "deploy" / "certkeeper"))
    make_rc(kube_client, namespace, replicas=1)
    pod = containers.pod_spec(ROOT / "deploy" / "certkeeper" / "deployment.yaml")
    assert pod["securityContext"]["runAsUser"] == containers.images.UID
    spec = pod["containers"][0]
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert containers.pod_mounts(pod, {}) == [], "certkeeper run needs no writable volume"
    env = {item["name"]: item["value"] for item in spec.get("env", [])}
    env.update(
        DOMAINS=DOMAINS,  # names Pebble's validation reaches on this machine
        LETSENCRYPT_ENDPOINT=pebble.directory_url,
        CERTKEEPER_CA_BUNDLE=CA_BUNDLE,
        # The shared loopback: an unprivileged port instead of the pod's own port 80.
        CERTKEEPER_HTTP_BIND=f"127.0.0.1:{pebble.http_port}",
        # What the kubelet sets for in-cluster configuration.
        KUBERNETES_SERVICE_HOST="127.0.0.1",
        KUBERNETES_SERVICE_PORT=cluster.server.rsplit(":", 1)[1],
    )
    account = service_account_volume(kube_client, namespace, cluster, tmp_path / "serviceaccount")
    mounts = [
        containers.Mount(SERVICE_ACCOUNT_DIR, account, read_only=True),
        containers.Mount(CA_BUNDLE, Path(pebble.ca_bundle), read_only=True),
    ]
    image = containers.built()["certkeeper"].reference
    log = tmp_path / "run.log"
    with containers.container(image, mounts) as box:
        box.set_env(env)
        assert box.run(["/bin/true"]).returncode == 0
        before = box.written()
        entrypoint = containers.oci_config(image)["config"]["Entrypoint"]
        with log.open("wb") as out:
            running = box.start([*entrypoint, *spec["args"]], out)
        try:

            def written() -> Secret | None:
                assert running.proc.poll() is None, f"certkeeper run exited:\n{log.read_text()[-3000:]}"
                return get_secret(kube_client, namespace)

            try:
                secret = wait_for("the Secret written from the image", written)
            except AssertionError as error:
                raise AssertionError(f"{error}\n{log.read_text(errors='replace')[-3000:]}") from None
            port = env["CERTKEEPER_HTTP_BIND"].rsplit(":", 1)[1]
            probe = spec["readinessProbe"]["httpGet"]["path"]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe}", timeout=5) as answer:
                assert answer.status == 200
            assert {p.uids().effective for p in running.processes()} == {containers.images.UID}
        finally:
            exit_code = running.stop()
        text = log.read_text(errors="replace")
        assert exit_code == 0, text[-3000:]
        assert box.written() == before, "certkeeper run wrote into the image (readOnlyRootFilesystem)"

    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines, "--log-format=json from the manifest gives JSON lines"
    assert "Forbidden" not in text and not re.search(r"\b403\b", text), text[-3000:]
    assert secret.metadata is not None and secret.metadata.name == SECRET
    chain = split_pem_chain(secret_bytes(secret, "proxycert"))
    assert set(cert_info(chain[0]).names) == set(DOMAINS.split())
    assert key_matches_cert(secret_bytes(secret, "proxykey"), chain[0])


def test_deploy_proxy_is_accepted_with_its_unprivileged_read_only_pod(
    kube_client: Client, namespace: str, kubectl: Any
) -> None:
    from lightkube.resources.apps_v1 import Deployment

    applied = kubectl("apply", "-k", str(ROOT / "deploy" / "proxy"))
    assert "deployment.apps/nginx-ssl-proxy-api created" in applied.stdout
    deployment = kube_client.get(Deployment, "nginx-ssl-proxy-api", namespace=namespace)
    assert deployment.spec is not None and deployment.spec.template.spec is not None
    pod = deployment.spec.template.spec
    assert pod.securityContext is not None and pod.securityContext.runAsUser == containers.images.UID
    assert [(s.name, s.value) for s in pod.securityContext.sysctls or []] == [
        ("net.ipv4.ip_unprivileged_port_start", "0")
    ]
    container = pod.containers[0]
    assert container.securityContext is not None and container.securityContext.readOnlyRootFilesystem
    run_mount = next(m for m in container.volumeMounts or [] if m.mountPath == containers.images.PROXY_RUN_DIR)
    volume = next(v for v in pod.volumes or [] if v.name == run_mount.name)
    assert volume.emptyDir is not None and volume.emptyDir.medium == "Memory"
