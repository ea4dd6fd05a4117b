#!/usr/bin/env python3
"""Peer baseline for bench/run: mpremote against the unix port's plain
REPL on a pty (the same firmware moat builds, started without the node
runtime), bridged so mpremote opens a tty path like a USB serial device.

Prints key=value lines:
  call=OURS|THEIRS|NOTE   a small call (when mpremote works)
  copy=OURS|THEIRS|NOTE   a 4 KiB file copy (when mpremote works)
  repl=N                  typed REPL round trips/s over the pty (python host)
  why=TEXT                why mpremote could not be measured
"""
import argparse
import os
import select
import subprocess
import threading
import time


def bridge(a, b, stop):
    # copy bytes both ways between two pty masters
    while not stop.is_set():
        r, _, _ = select.select([a, b], [], [], 0.05)
        for fd in r:
            try:
                data = os.read(fd, 4096)
            except OSError:
                return
            os.write(b if fd == a else a, data)


def raw(fd):
    import tty

    tty.setraw(fd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mpremote", required=True)
    ap.add_argument("--firmware", required=True)
    a = ap.parse_args()
    if not os.path.isfile(a.firmware):
        print("why=no unix satellite firmware (run the e2e tests once)")
        return 0
    node_m, node_s = os.openpty()
    host_m, host_s = os.openpty()
    raw(host_s)
    host_path = os.ttyname(host_s)
    stop = threading.Event()
    th = threading.Thread(target=bridge, args=(node_m, host_m, stop), daemon=True)
    th.start()
    env = {"HOME": "/tmp", "PATH": os.environ.get("PATH", "")}
    p = subprocess.Popen([a.firmware], stdin=node_s, stdout=node_s, stderr=node_s, env=env,
                         close_fds=True)
    try:
        time.sleep(0.5)
        # Typed REPL round trips through the same pty pair, from python.
        hs = os.open(host_path, os.O_RDWR | os.O_NOCTTY)

        def expect(token, limit=5.0):
            buf = b""
            end = time.time() + limit
            while token not in buf and time.time() < end:
                r, _, _ = select.select([hs], [], [], 0.05)
                if r:
                    buf += os.read(hs, 4096)
            return token in buf

        os.write(hs, b"\r")
        expect(b">>> ")
        n = 0
        t = time.time()
        while time.time() - t < 2.0:
            os.write(hs, b"7*6\r")
            if not expect(b"42\r\n>>> "):
                break
            n += 1
        print("repl=%.0f" % (n / (time.time() - t)))
        # mpremote needs the raw REPL (Ctrl-A); see whether this REPL has it.
        os.write(hs, b"\x01")
        has_raw = expect(b"raw REPL", 1.0)
        os.write(hs, b"\x02")
        os.close(hs)
        if not has_raw:
            print("why=the unix port's REPL has no raw REPL (Ctrl-A is ignored); mpremote needs it, "
                  "so it cannot drive this node")
            return 0
        t = time.time()
        r = subprocess.run([a.mpremote, "connect", host_path, "exec", "print(7*6)"],
                           capture_output=True, text=True, timeout=60)
        call = time.time() - t
        if r.returncode != 0 or "42" not in r.stdout:
            print("why=mpremote exec failed: %s" % (r.stderr.strip().splitlines() or ["?"])[-1])
            return 0
        print("call=|mpremote exec %.2f s|per call, incl. process start" % call)
    finally:
        stop.set()
        p.kill()
        p.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
