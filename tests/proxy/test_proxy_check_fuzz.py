"""check_pair against hostile bytes: whatever a Secret holds, only a refusal (or a valid pair) comes out.

Mutated real certificates (from testbench/pki.py) reach the lazily parsed fields (extensions, names,
serial) that random bytes never would; the crafted ones below are the faults found by hand.
"""

from __future__ import annotations

import base64
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from der_surgery import BREAKS, broken_chain, from_pem, mutate, mutate_inside, to_pem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxy_helpers import LocalCA

from certkeeper.proxy.certs import CertPair, PairRefused, check_pair
from certkeeper.proxy.live import LiveCerts

NAMES = ("proxycert", "proxykey")
_CA = LocalCA()
_ISSUED = _CA.issue(("proxy.test", "www.proxy.test"))
LEAF_PEM, CA_PEM = _ISSUED.chain_pem.split(b"-----END CERTIFICATE-----\n", 1)
LEAF_PEM += b"-----END CERTIFICATE-----\n"
LEAF_DER = from_pem(LEAF_PEM)
KEY_PEM = _ISSUED.key_pem
KEY_DER = base64.b64decode(b"".join(KEY_PEM.splitlines()[1:-1]))


def outcome(chain_pem: bytes, key_pem: bytes = KEY_PEM) -> str:
    """'ok' or 'refused'; anything else escaping check_pair fails the test with its traceback."""
    try:
        pair = check_pair((chain_pem, key_pem), NAMES)
    except PairRefused as why:
        assert "PRIVATE KEY" not in str(why) and "\n" not in str(why)
        return "refused"
    assert isinstance(pair, CertPair)
    return "ok"


def test_mutated_certificates_and_keys_are_refused_or_served_never_a_crash() -> None:
    rng = random.Random(20261128)  # fixed: a failure reproduces
    seen = {"ok": 0, "refused": 0}
    for _ in range(4000):
        seen[outcome(to_pem(mutate(LEAF_DER, rng)) + CA_PEM)] += 1
    ca_der = from_pem(CA_PEM)
    for _ in range(1000):
        seen[outcome(LEAF_PEM + to_pem(mutate(ca_der, rng)))] += 1
    for _ in range(1000):
        key = base64.encodebytes(mutate(KEY_DER, rng))
        seen[outcome(_ISSUED.chain_pem, b"-----BEGIN PRIVATE KEY-----\n" + key + b"-----END PRIVATE KEY-----\n")] += 1
    # Most edits break something; the count shows the mutations do reach the parsers.
    assert seen["refused"] > 3000, seen


def test_edits_inside_fields_reach_the_lazy_parsers_and_are_refused_never_a_crash(tmp_path: Path) -> None:
    rng = random.Random(5)
    ca_der = from_pem(CA_PEM)
    live = LiveCerts(tmp_path / "live", None)
    live.reset()
    reasons: Counter[str] = Counter()
    for n in range(8000):
        if n % 4:
            chain = to_pem(mutate_inside(LEAF_DER, rng)) + CA_PEM
        else:
            chain = LEAF_PEM + to_pem(mutate_inside(ca_der, rng))
        try:
            pair = check_pair((chain, KEY_PEM), NAMES)
        except PairRefused as why:
            reasons[str(why).split(" on ")[0]] += 1
            continue
        # What check_pair accepts, the OpenSSL nginx uses must load too (or install refuses it).
        try:
            live.install(pair)
        except PairRefused:
            reasons["refused by OpenSSL"] += 1
    # The edits do reach the extension parser, the one that used to raise ValueError.
    assert reasons["the certificate in proxycert has malformed or duplicate extensions"] > 1000, reasons
    assert reasons["certificate 2 in proxycert has malformed or duplicate extensions"] > 300, reasons


@settings(max_examples=1500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    at=st.integers(min_value=0, max_value=len(LEAF_DER) - 1),
    edit=st.sampled_from(["flip", "insert", "delete", "set"]),
    value=st.binary(min_size=1, max_size=8),
)
def test_hypothesis_edits_of_a_real_certificate_never_crash(at: int, edit: str, value: bytes) -> None:
    data = bytearray(LEAF_DER)
    if edit == "flip":
        data[at] ^= value[0] or 1
    elif edit == "insert":
        data[at:at] = value
    elif edit == "delete":
        del data[at : at + len(value)]
    else:
        data[at : at + len(value)] = value
    outcome(to_pem(bytes(data)) + CA_PEM)


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("corrupt-authority-key-identifier", "the certificate in proxycert has malformed or duplicate extensions"),
        ("duplicate-extension", "the certificate in proxycert has malformed or duplicate extensions"),
        ("negative-serial", "serial number that is not positive"),
        ("bad-version", "proxycert holds a malformed certificate"),
    ],
)
def test_crafted_bad_certificates_are_refused_with_the_reason(how: str, says: str) -> None:
    assert set(BREAKS) >= {how}
    with pytest.raises(PairRefused, match=says):
        check_pair((broken_chain(_ISSUED.chain_pem, how), KEY_PEM), NAMES)


def test_a_malformed_certificate_further_down_the_chain_is_refused() -> None:
    # nginx sends the whole chain; OpenSSL refuses to load one with a broken certificate in it.
    intermediate = broken_chain(CA_PEM, "duplicate-extension")
    with pytest.raises(PairRefused, match="certificate 2 in proxycert has malformed or duplicate extensions"):
        check_pair((LEAF_PEM + intermediate, KEY_PEM), NAMES)


def test_a_fifo_is_refused_not_waited_for(tmp_path: Path) -> None:
    # find_pair skips a FIFO, but one swapped in just after it looked used to block the poll loop for good.
    fifo = tmp_path / "proxycert"
    os.mkfifo(fifo)
    code = (
        "import sys; from pathlib import Path; from certkeeper.proxy import certs\n"
        "try: certs.read_pair((Path(sys.argv[1]), Path(sys.argv[1])))\n"
        "except certs.PairRefused as e: print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "proxycert is not a regular file"
