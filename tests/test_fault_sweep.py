"""Crash consistency: kill ``certkeeper issue`` before each of its changes to the store, then run it again.

Every point of the write sequence is a place a SIGKILL, an OOM kill or a power cut can land. After
each, the next plain run must leave the store as an uninterrupted run does (``current`` and every
link good, key and certificate from one issuance, no leftovers, nothing owed in the state), run the
deploy hook once per certificate that became current, and order nothing again for a certificate
that was already issued and kept. ``make test`` runs every STRIDE-th point (and the last); ``make faults``
(CERTKEEPER_FAULT_SWEEP=full) runs them all.
"""

from __future__ import annotations

import os
from pathlib import Path

from storecheck import consistency_problems, count_points, killed_run, orders_for, serial_of

from testbench.ari import AcmeFront
from testbench.command import Env, Run

STRIDE = 7


def points(total: int) -> list[int]:
    if os.environ.get("CERTKEEPER_FAULT_SWEEP") == "full":
        return list(range(1, total + 1))
    return sorted(set(range(1, total + 1, STRIDE)) | {total})


def hook_runs(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_first_issuance_killed_at_any_write_is_completed_by_the_next_run(
    ari: AcmeFront, ari_env: Env, certkeeper: Run, tmp_path: Path
) -> None:
    probe = tmp_path / "probe"
    trace = tmp_path / "trace"
    total = count_points({**ari_env, "CERTKEEPER_STORE": str(probe)}, probe, trace, "issue", "--deploy-hook", "true",
                         "probe.first.test")  # fmt: skip
    steps = trace.read_text().splitlines()
    assert total > 40, steps  # account, lineage, version, links, state: a sweep over a handful would prove little
    failures = []
    for n in points(total):
        store, name, calls = tmp_path / f"store{n}", f"p{n}.first.test", tmp_path / f"calls{n}"
        env = {**ari_env, "CERTKEEPER_STORE": str(store)}
        args = ("issue", "--deploy-hook", f"echo run >> {calls}", name)
        killed = killed_run(env, store, n, *args)
        if killed.returncode != -9:
            failures.append(f"{steps[n - 1]}: not killed (exit {killed.returncode}) {killed.stderr[-300:]}")
            continue
        kept = (store / name / "pending.json").exists() or (store / name / "current").exists()
        hooked = hook_runs(calls)
        again = certkeeper(env, *args)
        problems = []
        if again.returncode != 0:
            problems.append(f"the next run failed: {again.stderr.strip()}")
        else:
            problems += consistency_problems(store / name, [name])
        if not (hook_runs(calls) == 1 or (hooked and hook_runs(calls) == 2)):
            problems.append(f"the hook ran {hook_runs(calls)} times")
        orders = orders_for(ari, name)
        if (kept and orders != 1) or orders > 2:
            problems.append(f"{orders} orders (certificate kept by the killed run: {kept})")
        accounts = [p.name for p in (store / "accounts").iterdir() if not p.name.startswith(".")]
        if len(accounts) != 1:
            problems.append(f"accounts {accounts}")
        if problems:
            failures.append(f"killed before {steps[n - 1]}: {problems}")
    assert not failures, "\n".join(failures)


def test_renewal_killed_at_any_write_keeps_a_good_certificate_and_finishes(
    ari: AcmeFront, ari_env: Env, certkeeper: Run, tmp_path: Path
) -> None:
    probe = tmp_path / "probe"
    trace = tmp_path / "trace"
    probe_env = {**ari_env, "CERTKEEPER_STORE": str(probe)}
    assert certkeeper(probe_env, "issue", "--deploy-hook", "true", "probe.renew.test").returncode == 0
    total = count_points(probe_env, probe, trace, "issue", "--force", "--deploy-hook", "true", "probe.renew.test")
    steps = trace.read_text().splitlines()
    failures = []
    for n in points(total):
        store, name, calls = tmp_path / f"store{n}", f"p{n}.renew.test", tmp_path / f"calls{n}"
        env = {**ari_env, "CERTKEEPER_STORE": str(store)}
        hook = ("--deploy-hook", f"echo run >> {calls}")
        assert certkeeper(env, "issue", *hook, name).returncode == 0
        lineage = store / name
        first = serial_of(lineage / "cert.pem")
        killed = killed_run(env, store, n, "issue", "--force", *hook, name)
        if killed.returncode != -9:
            failures.append(f"{steps[n - 1]}: not killed (exit {killed.returncode}) {killed.stderr[-300:]}")
            continue
        # A consumer reading at this moment still gets a matching pair (the old one or the new one).
        problems = [p for p in consistency_problems(lineage, [name]) if "key" in p or "fullchain" in p]
        kept = (lineage / "pending.json").exists() or serial_of(lineage / "current" / "cert.pem") != first
        hooked = hook_runs(calls)
        again = certkeeper(env, "issue", *hook, name)  # the next cron run: not forced
        if again.returncode != 0:
            problems.append(f"the next run failed: {again.stderr.strip()}")
        else:
            problems += consistency_problems(lineage, [name])
        now = serial_of(lineage / "cert.pem")
        if kept != (now != first):
            problems.append(f"kept a new certificate: {kept}, but current is {'new' if now != first else 'the first'}")
        wanted = 2 if now != first else 1
        if not (hook_runs(calls) == wanted or (hooked > 1 and hook_runs(calls) == wanted + 1)):
            problems.append(f"the hook ran {hook_runs(calls)} times, wanted {wanted}")
        if orders_for(ari, name) > 2:
            problems.append(f"{orders_for(ari, name)} orders")
        if now != first and first not in [serial_of(v / "cert.pem") for v in (lineage / "versions").iterdir()]:
            problems.append("the version that was current before was not kept")
        if problems:
            failures.append(f"killed before {steps[n - 1]}: {problems}")
    assert not failures, "\n".join(failures)


def test_several_certificates_killed_at_any_write_are_all_completed_by_the_next_run(
    ari: AcmeFront, ari_env: Env, certkeeper: Run, tmp_path: Path
) -> None:
    """Three certificates in flight at once: the kill lands wherever the threads happen to be."""

    def name_file(prefix: str) -> tuple[Path, list[str]]:
        names = [f"{prefix}-{c}.many.test" for c in "abc"]
        path = tmp_path / f"{prefix}.txt"
        path.write_text("\n".join(names) + "\n")
        return path, names

    probe = tmp_path / "probe"
    probe_file, _ = name_file("probe")
    trace = tmp_path / "trace"
    total = count_points({**ari_env, "CERTKEEPER_STORE": str(probe)}, probe, trace, "issue", "--file", str(probe_file))
    failures = []
    for n in points(total)[::2]:
        store, calls = tmp_path / f"store{n}", tmp_path / f"calls{n}"
        listed, names = name_file(f"p{n}")
        env = {**ari_env, "CERTKEEPER_STORE": str(store)}
        args = ("issue", "--deploy-hook", f'echo "$RENEWED_DOMAINS" >> {calls}', "--file", str(listed))
        killed = killed_run(env, store, n, *args)
        if killed.returncode != -9:
            failures.append(f"{n}: not killed (exit {killed.returncode}) {killed.stderr[-300:]}")
            continue
        kept = {m for m in names if (store / m / "pending.json").exists() or (store / m / "current").exists()}
        hooked = calls.read_text().splitlines() if calls.exists() else []
        again = certkeeper(env, *args)
        problems = [] if again.returncode == 0 else [f"the next run failed: {again.stderr.strip()}"]
        ran = calls.read_text().splitlines() if calls.exists() else []
        for name in names:
            problems += [f"{name}: {p}" for p in consistency_problems(store / name, [name])] if not problems else []
            if not (ran.count(name) == 1 or (name in hooked and ran.count(name) == 2)):
                problems.append(f"{name}: the hook ran {ran.count(name)} times")
            orders = orders_for(ari, name)
            if (name in kept and orders != 1) or orders > 2:
                problems.append(f"{name}: {orders} orders (kept by the killed run: {name in kept})")
        if problems:
            failures.append(f"killed at change {n} of {total}: {problems}")
    assert not failures, "\n".join(failures)
