"""A real Kubernetes control plane for the tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, and a small kubelet stand-in (``testbench.kubelet``).

The binaries come from Debian's ``kubernetes`` source package, built once and cached outside the
repository, keyed by version (``build()``). ``start()`` runs everything on 127.0.0.1 with token
authentication and RBAC, and writes an admin kubeconfig. Every process runs in its own process group
and is recorded in ``DIR/processes.json`` so that ``stop()`` (or ``scripts/test-cluster down DIR``
from another shell) ends exactly those processes.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from testbench import aptsources

KUBERNETES_VERSION = "1.20.2"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
NODE_NAME = "certkeeper-node"
SERVICE_CIDR = "10.0.0.0/24"
# The first address of SERVICE_CIDR: the ``kubernetes`` Service, which the serving cert must name.
SERVICE_IP = "10.0.0.1"
SA_ISSUER = "https://kubernetes.default.svc"


def _child_env() -> dict[str, str]:
    """The environment for children, with the repository root importable (``python -m testbench.kubelet``)."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}


class ClusterError(RuntimeError):
    """The control plane could not be built, started or stopped; the message says which part and why."""


# --------------------------------------------------------------------------------------------- build


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "certkeeper" / f"kubernetes-{KUBERNETES_VERSION}"


def binary(name: str) -> Path:
    return cache_dir() / name


def binaries_ready() -> bool:
    return all(os.access(binary(name), os.X_OK) for name in BINARIES)


def _deb_src_entries() -> str:
    """The system's Debian package sources, copied as ``deb-src`` entries in deb822 form."""
    stanzas = aptsources.binary_sources()
    if not stanzas:
        raise ClusterError("no Debian package source found in /etc/apt: cannot fetch the kubernetes source package")
    return aptsources.render(stanzas, types="deb-src")


def _run(cmd: Sequence[str | os.PathLike[str]], log: TextIO, cwd: Path | None = None) -> None:
    log.write(f"+ {' '.join(map(str, cmd))}\n")
    log.flush()
    result = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise ClusterError(f"{' '.join(map(str, cmd))} failed with exit code {result.returncode}")


def build(log: TextIO = sys.stderr) -> Path:
    """Build the control-plane binaries from Debian's source package unless they are cached.

    Returns the cache directory. Takes 5 to 20 minutes (CPU-bound) and 1.3 GB of scratch space on a
    fresh machine; a no-op afterwards. Concurrent callers wait for one build instead of racing.
    """
    target = cache_dir()
    if binaries_ready():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binaries_ready():
            return target
        return _build(target, log)


def _build(target: Path, log: TextIO) -> Path:
    for tool in ("apt-get", "dpkg-source", "go", "make", "rsync"):
        if shutil.which(tool) is None:
            raise ClusterError(f"{tool} not found: run scripts/install (it installs scripts/debian-packages)")
    reflect2 = Path("/usr/share/gocode/src/github.com/modern-go/reflect2")
    if not reflect2.is_dir():
        raise ClusterError("golang-github-modern-go-reflect2-dev is not installed: run scripts/install")
    log.write(
        f"building Kubernetes {KUBERNETES_VERSION} from Debian's source package into {target} "
        "(once per machine; 5 to 15 minutes)\n"
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kubernetes-build-", dir=target.parent) as tmp:
        work = Path(tmp)
        apt_dir = work / "apt"
        (apt_dir / "sources").mkdir(parents=True)
        (apt_dir / "lists" / "partial").mkdir(parents=True)
        (apt_dir / "cache" / "archives" / "partial").mkdir(parents=True)
        (apt_dir / "sources" / "deb-src.sources").write_text(_deb_src_entries())
        # A private source list and state: the machine's own apt configuration is left untouched.
        apt_options = [
            "-o", "Dir::Etc::SourceList=/dev/null",
            "-o", f"Dir::Etc::SourceParts={apt_dir / 'sources'}",
            "-o", f"Dir::State::Lists={apt_dir / 'lists'}",
            "-o", f"Dir::Cache={apt_dir / 'cache'}",
            "-o", "APT::Sandbox::User=root",
        ]  # fmt: skip
        _run(["apt-get", *apt_options, "update"], log)
        source = work / "source"
        source.mkdir()
        _run(["apt-get", *apt_options, "source", "--download-only", "kubernetes"], log, cwd=source)
        origs = sorted(source.glob("kubernetes_*.orig.tar.*"))
        if not origs:
            raise ClusterError(f"apt-get source kubernetes gave no orig tarball in {source}")
        tree = work / "tree"
        tree.mkdir()
        _run(["tar", "-xf", origs[0], "-C", tree, "--strip-components=1"], log)
        version_file = tree / "CHANGELOG" / f"CHANGELOG-{KUBERNETES_VERSION.rsplit('.', 1)[0]}.md"
        if not (tree / "Makefile").is_file():
            raise ClusterError(f"{origs[0].name} does not hold a Kubernetes source tree")
        if not version_file.is_file():
            log.write(f"warning: {version_file.name} missing; the source may not be {KUBERNETES_VERSION}\n")
        # Go 1.19 crashes the reflect2 copy vendored with 1.20 at run time; Debian's newer one works.
        vendored = tree / "vendor" / "github.com" / "modern-go" / "reflect2"
        shutil.rmtree(vendored)
        shutil.copytree(reflect2, vendored, symlinks=False)
        env_cmd = ["env", f"KUBE_GIT_VERSION=v{KUBERNETES_VERSION}", "KUBE_GIT_TREE_STATE=clean"]
        # One make: the code generators it runs first then run once, not once per binary.
        _run([*env_cmd, "make", "WHAT=" + " ".join(f"cmd/{name}" for name in BINARIES)], log, cwd=tree)
        staging = target.parent / f".{target.name}.new"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name in BINARIES:
            built = tree / "_output" / "bin" / name
            if not built.is_file():
                raise ClusterError(f"the build did not produce {name}")
            shutil.copy2(built, staging / name)
        # Rename last so that a half-finished build never looks like a cached one.
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    log.write(f"built {', '.join(BINARIES)} in {time.monotonic() - started:.0f} s into {target}\n")
    return target


# ------------------------------------------------------------------------------------------- start-up


@dataclass(frozen=True)
class ProcessRecord:
    """One started process. ``start_ticks`` tells it apart from a later process reusing the pid."""

    name: str
    pid: int
    start_ticks: int


@dataclass
class Cluster:
    workdir: Path
    server: str
    kubeconfig: Path
    admin_token: str
    ca_file: Path
    node_name: str = NODE_NAME
    processes: list[ProcessRecord] = field(default_factory=list)
    milestones: dict[str, float] = field(default_factory=dict)
    _children: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def kubectl(self) -> Path:
        return binary("kubectl")

    def log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def restart(
        self, name: str, *, down_s: float = 0.0, timeout: float = 60.0, while_down: Callable[[], None] | None = None
    ) -> None:
        """Kill one component (e.g. ``kube-apiserver``) and start it again with the same arguments.

        ``down_s``: how long it stays down. For kube-apiserver, returns once ``/readyz`` answers again.
        ``while_down``: called once it is stopped; it is started again when the call returns (a test acts
        during the outage, e.g. kills a client, for as long as it needs).
        """
        record = next(r for r in self.processes if r.name == name)
        proc = Path(f"/proc/{record.pid}")
        argv = proc.joinpath("cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        environ = dict(
            item.split(b"=", 1) for item in proc.joinpath("environ").read_bytes().split(b"\0") if b"=" in item
        )
        cwd = os.readlink(proc / "cwd")
        _stop_records([record], self._children)
        if while_down is not None:
            while_down()
        time.sleep(down_s)
        with open(self.log(name), "ab") as log:
            child = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=cwd, env=environ,
            )  # fmt: skip
        ticks = _start_ticks(child.pid)
        if ticks is None:
            raise ClusterError(f"{name} exited at once after a restart:\n{_tail(self.log(name))}")
        self.processes[self.processes.index(record)] = ProcessRecord(name, child.pid, ticks)
        self._children[child.pid] = child
        data = [{"name": r.name, "pid": r.pid, "start_ticks": r.start_ticks} for r in self.processes]
        (self.workdir / "processes.json").write_text(json.dumps(data, indent=1) + "\n")
        if name == "kube-apiserver":
            deadline = time.monotonic() + timeout
            while not _ready_quietly(f"{self.server}/readyz", self.admin_token, self.ca_file):
                if time.monotonic() > deadline or child.poll() is not None:
                    raise ClusterError(f"kube-apiserver not ready after a restart:\n{_tail(self.log(name))}")
                time.sleep(0.2)

    def stop(self) -> None:
        _stop_records(self.processes, self._children)
        self.processes.clear()
        (self.workdir / "processes.json").unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def is_alive(record: ProcessRecord) -> bool:
    return _start_ticks(record.pid) == record.start_ticks


def _stop_records(records: Sequence[ProcessRecord], children: dict[int, subprocess.Popen[bytes]]) -> None:
    """Stop in reverse start order: the stand-in and controllers first, etcd last."""
    for record in reversed(records):
        own = children.get(record.pid)
        if (own is not None and own.poll() is not None) or (own is None and not is_alive(record)):
            children.pop(record.pid, None)
            continue
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                # Each process leads its own group, so this reaches anything it started too.
                os.killpg(record.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                child = children.get(record.pid)
                if child is not None and child.poll() is not None:
                    break
                if child is None and not is_alive(record):
                    break
                time.sleep(0.05)
            else:
                continue
            break
        else:
            raise ClusterError(f"{record.name} (pid {record.pid}) did not exit after SIGKILL")
        children.pop(record.pid, None)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Launcher:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.records: list[ProcessRecord] = []
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.started = time.monotonic()
        # Seconds from start until each wait succeeded: where start-up time goes.
        self.milestones: dict[str, float] = {}
        (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, argv: Sequence[str | os.PathLike[str]]) -> None:
        log_path = self.workdir / "logs" / f"{name}.log"
        with open(log_path, "ab") as log:
            child = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
                env=_child_env(),
            )
        ticks = _start_ticks(child.pid)
        if ticks is None:
            child.wait()
            raise ClusterError(f"{name} exited at once (code {child.returncode}):\n{_tail(log_path)}")
        self.records.append(ProcessRecord(name, child.pid, ticks))
        self.children[child.pid] = child
        self.save()

    def save(self) -> None:
        data = [{"name": r.name, "pid": r.pid, "start_ticks": r.start_ticks} for r in self.records]
        (self.workdir / "processes.json").write_text(json.dumps(data, indent=1) + "\n")

    def check_running(self) -> None:
        for record in self.records:
            child = self.children[record.pid]
            if child.poll() is not None:
                log = self.workdir / "logs" / f"{record.name}.log"
                raise ClusterError(
                    f"{record.name} exited with code {child.returncode} during start-up; "
                    f"last lines of {log}:\n{_tail(log)}"
                )

    def wait_for(self, what: str, ready: Any, timeout: float) -> None:
        self._wait_for(what, ready, timeout)
        self.milestones[what] = round(time.monotonic() - self.started, 2)

    def _wait_for(self, what: str, ready: Any, timeout: float) -> None:
        """Poll ``ready()`` until true; fail early if a process died, and name what never came."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            self.check_running()
            try:
                if ready():
                    return
            except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
                last_error = f" (last error: {exc})"
            if time.monotonic() > deadline:
                raise ClusterError(f"{what} not ready after {timeout:.0f} s{last_error}; logs in {self.workdir}")
            time.sleep(0.1)


def _write_pki(pki: Path) -> None:
    """A CA, the apiserver's serving certificate, and the service-account signing key pair."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from testbench.pki import TestCA, key_pem

    pki.mkdir(parents=True, exist_ok=True)
    ca = TestCA("certkeeper test cluster CA")
    names = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local")  # fmt: skip
    serving = ca.issue(names, ips=("127.0.0.1", SERVICE_IP), server_auth=True)
    (pki / "ca.crt").write_bytes(ca.cert_pem)
    (pki / "apiserver.crt").write_bytes(serving.cert_pem)
    (pki / "apiserver.key").write_bytes(serving.key_pem)
    # ES256 service-account tokens: the apiserver accepts them, and the key is made in microseconds.
    sa_key = ec.generate_private_key(ec.SECP256R1())
    (pki / "sa.key").write_bytes(key_pem(sa_key))
    pub = sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (pki / "sa.pub").write_bytes(pub)
    for path in pki.glob("*.key"):
        path.chmod(0o600)


def write_kubeconfig(path: Path, server: str, ca_file: Path, user: str, token: str) -> None:
    """A kubeconfig that embeds the CA, so it stays valid when copied elsewhere."""
    ca_data = base64.b64encode(ca_file.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "certkeeper-test", "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "certkeeper-test", "context": {"cluster": "certkeeper-test", "user": user}}],
        "current-context": "certkeeper-test",
    }
    # JSON is YAML, and every kubeconfig reader accepts it.
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


def _get(url: str, token: str, ca_file: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca_file))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context, timeout=5) as response:
        body: bytes = response.read()
        return body


def _get_json(url: str, token: str, ca_file: Path) -> Any:
    return json.loads(_get(url, token, ca_file))


def _get_ok(url: str, token: str, ca_file: Path) -> bool:
    try:
        _get(url, token, ca_file)
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 500, 503):
            return False
        raise
    return True


def _ready_quietly(url: str, token: str, ca_file: Path) -> bool:
    try:
        return _get_ok(url, token, ca_file)
    except (OSError, urllib.error.URLError):
        return False


def start(
    workdir: Path,
    *,
    ready_delay: float = 0.2,
    timeout: float = 60.0,
    log: TextIO = sys.stderr,
) -> Cluster:
    """Start the control plane and the kubelet stand-in in ``workdir``; return once pods can run.

    ``ready_delay`` is how long the stand-in waits before it reports a scheduled pod Running and Ready.
    Raises ClusterError (after stopping whatever it started) when a part fails or is not ready within
    ``timeout`` seconds.
    """
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "processes.json").exists():
        raise ClusterError(f"{workdir} already holds a cluster: stop it first (scripts/test-cluster down)")
    missing = [name for name in BINARIES if not os.access(binary(name), os.X_OK)]
    if missing:
        raise ClusterError(f"{', '.join(missing)} not built: run scripts/test-cluster build (about 5 minutes)")
    if shutil.which("etcd") is None:
        raise ClusterError("etcd not found: run scripts/install (Debian package etcd-server)")
    started = time.monotonic()
    pki = workdir / "pki"
    _write_pki(pki)
    ca_file = pki / "ca.crt"
    tokens = {
        user: secrets.token_urlsafe(32) for user in ("admin", "kube-controller-manager", "kube-scheduler", "kubelet")
    }
    # Static tokens: token,user,uid,"groups". The controller-manager, scheduler and kubelet get the
    # identities the bootstrap RBAC policy and the Node authorizer expect, not admin rights.
    token_lines = [
        f'{tokens["admin"]},certkeeper-admin,certkeeper-admin,"system:masters"',
        f"{tokens['kube-controller-manager']},system:kube-controller-manager,system:kube-controller-manager",
        f"{tokens['kube-scheduler']},system:kube-scheduler,system:kube-scheduler",
        f'{tokens["kubelet"]},system:node:{NODE_NAME},system:node:{NODE_NAME},"system:nodes"',
    ]
    (pki / "tokens.csv").write_text("\n".join(token_lines) + "\n")
    (pki / "tokens.csv").chmod(0o600)

    etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = workdir / "kubeconfig"
    write_kubeconfig(kubeconfig, server, ca_file, "certkeeper-admin", tokens["admin"])
    component_configs = {}
    for user in ("kube-controller-manager", "kube-scheduler", "kubelet"):
        component_configs[user] = pki / f"{user}.kubeconfig"
        write_kubeconfig(component_configs[user], server, ca_file, user, tokens[user])

    launcher = _Launcher(workdir)
    cluster = Cluster(workdir, server, kubeconfig, tokens["admin"], ca_file)
    try:
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        launcher.spawn(
            "etcd",
            [
                "etcd", "--name=certkeeper", f"--data-dir={workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=certkeeper={peer_url}",
                # Test data is thrown away; fsync would only slow every write.
                "--unsafe-no-fsync", "--logger=zap", "--log-level=warn",
            ],
        )  # fmt: skip
        launcher.spawn(
            "kube-apiserver",
            [
                binary("kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}", "--insecure-port=0",
                f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={ca_file}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
            ],
        )  # fmt: skip

        def etcd_ready() -> bool:
            with urllib.request.urlopen(f"{etcd_url}/health", timeout=2) as response:
                return bool(json.load(response).get("health") == "true")

        launcher.wait_for("etcd", etcd_ready, timeout)
        launcher.wait_for(
            "kube-apiserver /readyz", lambda: _get_ok(f"{server}/readyz", tokens["admin"], ca_file), timeout
        )
        # /readyz answers before the system namespaces exist; objects need the namespace first.
        launcher.wait_for(
            "namespace default",
            lambda: _get_ok(f"{server}/api/v1/namespaces/default", tokens["admin"], ca_file),
            timeout,
        )
        launcher.spawn(
            "kube-controller-manager",
            [
                binary("kube-controller-manager"),
                f"--kubeconfig={component_configs['kube-controller-manager']}",
                "--bind-address=127.0.0.1", "--port=0", "--secure-port=0",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={ca_file}",
                "--use-service-account-credentials=true",
                # The TaintNodesByCondition admission plugin taints a new node not-ready; the node
                # lifecycle controller lifts it on its next pass, which by default is up to 5 s away.
                "--node-monitor-period=1s",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
            ],
        )  # fmt: skip
        launcher.spawn(
            "kube-scheduler",
            [
                binary("kube-scheduler"),
                f"--kubeconfig={component_configs['kube-scheduler']}",
                "--bind-address=127.0.0.1", "--port=0", "--secure-port=0",
                "--leader-elect=false", "--profiling=false",
            ],
        )  # fmt: skip
        launcher.spawn(
            "kubelet",
            [
                sys.executable, "-m", "testbench.kubelet",
                f"--kubeconfig={component_configs['kubelet']}",
                f"--node-name={NODE_NAME}", f"--ready-delay={ready_delay}",
            ],
        )  # fmt: skip

        def node_ready() -> bool:
            node = _get_json(f"{server}/api/v1/nodes/{NODE_NAME}", tokens["admin"], ca_file)
            conditions = node.get("status", {}).get("conditions", [])
            taints = node.get("spec", {}).get("taints") or []
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
            return ready and not taints

        launcher.wait_for(f"node {NODE_NAME}", node_ready, timeout)

        def token_secret() -> bool:
            account = _get_json(f"{server}/api/v1/namespaces/default/serviceaccounts/default", tokens["admin"], ca_file)
            return bool(account.get("secrets"))

        # Pods are refused until their namespace's default ServiceAccount has a token Secret.
        launcher.wait_for("the default ServiceAccount's token (kube-controller-manager)", token_secret, timeout)
    except BaseException:
        _stop_records(launcher.records, launcher.children)
        (workdir / "processes.json").unlink(missing_ok=True)
        raise
    cluster.processes = launcher.records
    cluster._children = launcher.children
    cluster.milestones = launcher.milestones
    steps = ", ".join(f"{what} {seconds:.1f} s" for what, seconds in launcher.milestones.items())
    log.write(f"cluster up in {time.monotonic() - started:.1f} s at {server} ({steps}; logs in {workdir / 'logs'})\n")
    return cluster


def stop(workdir: Path) -> bool:
    """Stop the cluster recorded in ``workdir``; False if none was running."""
    path = workdir / "processes.json"
    if not path.exists():
        return False
    records = [ProcessRecord(**entry) for entry in json.loads(path.read_text())]
    _stop_records(records, {})
    path.unlink()
    return True


@contextmanager
def running(workdir: Path, *, ready_delay: float = 0.2, timeout: float = 60.0) -> Iterator[Cluster]:
    cluster = start(workdir, ready_delay=ready_delay, timeout=timeout)
    try:
        yield cluster
    finally:
        cluster.stop()


# ------------------------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="scripts/test-cluster", description="A real Kubernetes control plane for tests and demos."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build and cache the binaries (a no-op once cached)")
    up = commands.add_parser("up", help="start a cluster in DIR and print KUBECONFIG=DIR/kubeconfig")
    up.add_argument("dir", type=Path)
    up.add_argument("--ready-delay", type=float, default=0.2, help="seconds before a pod turns Ready")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each part")
    down = commands.add_parser("down", help="stop the cluster started in DIR")
    down.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            path = build()
            print(f"kubernetes {KUBERNETES_VERSION} binaries in {path}", file=sys.stderr)
        elif args.command == "up":
            if not binaries_ready():
                build()
            cluster = start(args.dir, ready_delay=args.ready_delay, timeout=args.timeout)
            print(f"kubectl: {cluster.kubectl}", file=sys.stderr)
            print(f"KUBECONFIG={cluster.kubeconfig}")
        elif not stop(args.dir.resolve()):
            print(f"no cluster running in {args.dir}", file=sys.stderr)
    except ClusterError as exc:
        print(f"test-cluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
