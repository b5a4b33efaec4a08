#!/usr/bin/env python3
"""Builds every test target of the workspace once, then runs the test binaries a few at a time.

`cargo test` runs its test binaries one after another, and many of tailor's spend much of their
time waiting on the processes they start (a simulated cluster, trainers, servers, Python
cross-checks). Two binaries side by side keep a 2-core machine busy: 8.1 min instead of 12.8 for
the whole suite here. Each binary runs its own tests as under cargo (its own harness, threads and
filters), in its package's directory with the variables cargo gives it at run time. Binaries
share no fixed resource: each end-to-end binary starts its own simulated cluster on its own
loopback network, and fixtures live in per-process temporary directories.

    scripts/run_tests.py [--also COMMAND]... [CARGO TEST ARGS...] [-- TEST BINARY ARGS...]

`--also COMMAND` runs a shell command as one more job beside the binaries (scripts/test.sh runs
the image test that way), after the binaries that took longer on the last run.
TAILOR_TEST_JOBS sets how many binaries run at once (default 2). Every binary runs even when an
earlier one failed (as `cargo test --no-fail-fast`); the exit status is non-zero if any failed.
Each binary's output is printed whole when it finishes; a summary of all of them comes last.
The longest binaries of the last run start first (durations kept in the target directory).
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULT = re.compile(r"test result: (\w+)\. (\d+) passed; (\d+) failed; (\d+) ignored")


def package_name(package_id):
    """The name in a package ID: `path+file:///r/api#tailor-api@0.1.0`, or `path+file:///r/wire#0.1.0`
    when the name is the directory's."""
    url, _, fragment = package_id.partition("#")
    if "@" in fragment:
        return fragment.split("@")[0]
    return url.rstrip("/").rsplit("/", 1)[-1]


def build(cargo, cargo_args):
    """The test executables of `cargo test --no-run`, as (name, executable, package dir, package)."""
    cmd = [cargo, "test", "--workspace", "--all-targets", "--no-run",
           "--message-format=json-render-diagnostics", *cargo_args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"run_tests: `{' '.join(cmd)}` failed (exit {proc.returncode})")
    tests = []
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg["profile"]["test"]:
            continue
        target = msg["target"]
        pkg_dir = str(Path(msg["manifest_path"]).parent)
        package = package_name(msg["package_id"])
        src = os.path.relpath(target["src_path"], pkg_dir)
        tests.append((f"{package} {src}", msg["executable"], pkg_dir, package))
    return tests


def order(tests, durations):
    """Longest first by the last run; without one, the end-to-end suite (the longest) first and
    `--also` commands last."""
    def key(t):
        name = t[0]
        if name in durations:
            return (0, -durations[name])
        return (1, 0 if name.startswith("tailor-e2e ") else 2 if t[3] is None else 1, name)
    return sorted(tests, key=key)


def main():
    argv = sys.argv[1:]
    also = []
    while argv[:1] == ["--also"] and len(argv) > 1:
        also.append(argv[1])
        argv = argv[2:]
    cargo_args, test_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) \
        if "--" in argv else (argv, [])
    cargo = os.environ.get("CARGO", "cargo")
    jobs = int(os.environ.get("TAILOR_TEST_JOBS", "2"))
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    times_file = target_dir / "test-durations.json"
    try:
        durations = json.loads(times_file.read_text())
    except (OSError, ValueError):
        durations = {}

    commands = [(f"command: {c}", c, None, None) for c in also]
    tests = order(build(cargo, cargo_args) + commands, durations)
    print(f"run_tests: {len(tests) - len(commands)} test binaries and {len(commands)} commands, "
          f"{jobs} at a time", flush=True)
    lock = threading.Lock()
    started = time.monotonic()

    def run(test):
        name, exe, pkg_dir, package = test
        if package is None:  # an --also command, from the current directory
            cmd, cwd, env = ["bash", "-c", exe], None, None
        else:
            cmd, cwd = [exe, *test_args], pkg_dir
            env = dict(os.environ, CARGO=cargo, CARGO_MANIFEST_DIR=pkg_dir, CARGO_PKG_NAME=package)
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        took = time.monotonic() - t0
        out = proc.stdout.decode("utf-8", "replace")
        with lock:
            print(f"     Running {name} ({exe}) [{took:.1f}s]" if package else
                  f"     Running {name} [{took:.1f}s]", flush=True)
            sys.stdout.write(out)
            if proc.returncode != 0:
                print(f"error: test failed, {name} exited with {proc.returncode}")
            sys.stdout.flush()
        return name, proc.returncode, took, RESULT.findall(out)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(run, tests))

    durations.update({name: took for name, _, took, _ in results})
    try:
        times_file.write_text(json.dumps(durations, indent=1, sort_keys=True))
    except OSError:
        pass
    passed = sum(int(r[1]) for *_, found in results for r in found)
    failed = sum(int(r[2]) for *_, found in results for r in found)
    ignored = sum(int(r[3]) for *_, found in results for r in found)
    bad = [name for name, code, _, _ in results if code != 0]
    wall = time.monotonic() - started
    print(f"\nrun_tests: {passed} passed, {failed} failed, {ignored} ignored in "
          f"{len(results) - len(commands)} binaries, {len(commands)} commands; {wall:.0f}s wall, {sum(r[2] for r in results):.0f}s summed")
    if bad:
        print("run_tests: failed binaries:\n  " + "\n  ".join(bad))
        sys.exit(1)


if __name__ == "__main__":
    main()
