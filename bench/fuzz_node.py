#!/usr/bin/env python3
"""Fuzz the node's MsgPack decoder inside the built unix-port firmware.

Runs bench/fuzz_node_target.py with the satellite firmware (the one the e2e
tests build with `moat build`, or $MOAT_BENCH_FIRMWARE), where
node-runtime/msgpack.py is frozen: random bytes, huge length fields, deep
nesting and mutated valid messages go to `unpackb` and the stream
`Unpacker`; with the native module (_moat) in the firmware, native and
pure-Python results are compared on every input. Prints one line; exits 1
on any failure.

    bench/fuzz_node.py [--runs N] [--seed S]
"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def firmware():
    fw = os.environ.get("MOAT_BENCH_FIRMWARE") or os.path.join(
        ROOT, "target/debug/moat-e2e/satellite/.moat/build/demo/firmware/micropython")
    if not os.path.isfile(fw):
        sys.exit("no unix satellite firmware at %s: run `cargo test -p moat-e2e --test reliability` "
                 "once (it builds it) or set MOAT_BENCH_FIRMWARE" % fw)
    return fw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=12345)
    a = ap.parse_args()
    target = os.path.join(ROOT, "bench", "fuzz_node_target.py")
    env = dict(os.environ)
    env.pop("MICROPYPATH", None)  # the frozen runtime, as on a node
    t = time.time()
    p = subprocess.run([firmware(), "-X", "heapsize=4m", target, str(a.runs), str(a.seed)],
                       capture_output=True, text=True, env=env, timeout=3600)
    dt = time.time() - t
    out = (p.stdout + p.stderr).strip()
    last = out.splitlines()[-1] if out else ""
    ok = p.returncode == 0 and " runs " in last and last.endswith(" fail 0")
    print("%-18s %8d runs %5.0fs  %s" % ("node msgpack.py", a.runs, dt,
                                          last if ok else "FAILED\n" + out[-3000:]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
