"""`make demo`: certkeeper issuing real certificates from a local test CA (Pebble), end to end.

Starts Pebble on loopback, issues one certificate with several names (real HTTP-01 validation),
shows that its chain verifies against the CA's root, re-runs to show nothing is re-ordered,
issues a batch concurrently, prints the status table, and stops its servers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testbench.pebble import running_pebble

CERTKEEPER = str(Path(sys.executable).with_name("certkeeper"))


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    print("$ certkeeper " + " ".join(args), flush=True)
    started = time.perf_counter()
    result = subprocess.run([CERTKEEPER, *args], env=env, text=True, capture_output=True)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    print(f"   ({time.perf_counter() - started:.2f} s, exit {result.returncode})")
    return result


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="certkeeper-demo-") as tmp:
        work = Path(tmp)
        step("Starting Pebble, a local ACME test CA, on loopback")
        with running_pebble(workdir=work / "pebble") as pebble:
            print(f"ACME directory: {pebble.directory_url}")
            env = {
                **os.environ,
                "CERTKEEPER_SERVER": pebble.directory_url,
                "CERTKEEPER_CA_BUNDLE": str(pebble.ca_bundle),
                "CERTKEEPER_HTTP_BIND": f"127.0.0.1:{pebble.http_port}",
                "CERTKEEPER_STORE": str(work / "store"),
                "CERTKEEPER_EMAIL": "demo@example.com",
            }
            step("Issue one certificate for three names (HTTP-01 answered by certkeeper's responder)")
            if run(["issue", "shop.example.com", "www.shop.example.com", "api.shop.example.com"], env).returncode:
                return 1
            lineage = work / "store" / "shop.example.com"
            root = work / "pebble-root.pem"
            root.write_bytes(pebble.root_pem())
            step("Verify the chain against Pebble's root with openssl")
            verify = subprocess.run(
                ["openssl", "verify", "-CAfile", str(root), "-untrusted", str(lineage / "chain.pem"),
                 str(lineage / "cert.pem")],
                text=True, capture_output=True,
            )  # fmt: skip
            print(verify.stdout.strip() or verify.stderr.strip())
            if verify.returncode:
                return 1
            print(f"privkey.pem mode: {oct((lineage / 'privkey.pem').stat().st_mode & 0o777)}")
            step("Run again: the certificate is still good, so no order is made")
            run(["issue", "shop.example.com", "www.shop.example.com", "api.shop.example.com"], env)
            step("Issue 20 certificates concurrently from a file")
            names = work / "names.txt"
            names.write_text("".join(f"site{i}.example.com www.site{i}.example.com\n" for i in range(20)))
            if run(["issue", "--file", str(names), "--concurrency", "8"], env).returncode:
                return 1
            step("A bad name is refused before any order")
            run(["issue", "bad..name"], env)
            step("Status")
            run(["status", "--store", str(work / "store")], env)
        step("Pebble stopped; demo done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
