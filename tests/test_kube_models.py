"""lightkube's models used by many threads at once: msgspec builds a model's type information at its
first use, and two threads doing that together crashed the controller (a segfault, seen at start-up
when 16 workers' first Secret reads all came back 404). Every entry point primes the models when it
loads its credentials, before any thread starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

RACE = textwrap.dedent(
    """
    import sys, threading
    from lightkube.models import meta_v1
    from lightkube.resources.apps_v1 import Deployment
    from lightkube.resources.core_v1 import Event, Secret
    from certkeeper.errors import ConfigError
    from certkeeper.kube.api import load_kubeconfig

    try:
        load_kubeconfig()  # what `run`, `controller` and `status` do first
    except ConfigError:
        pass  # no credentials here: the models are primed all the same
    sys.setswitchinterval(1e-6)  # switch threads as often as a busy controller does, and more
    barrier = threading.Barrier(16)
    NOT_FOUND = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 404,
                 "message": 'secrets "x" not found', "reason": "NotFound", "details": {"name": "x"}}

    def work(i):
        barrier.wait()
        meta_v1.Status.from_dict(NOT_FOUND)
        [Secret, Event, Deployment][i % 3].from_dict({"metadata": {"name": "x", "labels": {"a": "b"}}})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    """
)


def test_sixteen_threads_using_the_models_at_once_do_not_crash_the_process(tmp_path: Path) -> None:
    script = tmp_path / "race.py"
    script.write_text(RACE)
    env = {"KUBECONFIG": str(tmp_path / "missing"), "PATH": "/usr/bin:/bin"}
    # Without the priming, 45 of 50 such processes died of SIGSEGV on this machine.
    codes = [subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=60).returncode
             for _ in range(20)]  # fmt: skip
    assert codes == [0] * 20, codes
