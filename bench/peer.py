#!/usr/bin/env python3
"""Peer baseline for bench/run: moat and mpremote against the SAME emulated
serial node, in one run.

The node is the `qemu-mps2` board (MicroPython's qemu port with moat's
patch) under qemu-system-arm: UART0 on a TCP socket is the node's moat link
(SerialPacker frames + the reliable layer), UART1 is its console, here a
pty (what mpremote sees as a serial device). One QEMU instance serves both
tools, in alternating rounds:

  moat      the node runtime answers on UART0:
              per invocation  `moat cmd q ping m=hi` and `moat fs put` of a
                              4 KiB file, each a fresh process that opens the
                              link itself (reliable-layer handshake included)
              in session      `moat mux` holds the link; a client on its
                              socket does `ping` round trips back to back;
                              `moat fs put --socket` copies the file through it
  Ctrl-C    on the console: main.py ends, the friendly REPL runs
  mpremote  over the console pty:
              per invocation  `mpremote connect PTY exec 'print(7*6)'` and
                              `mpremote connect PTY cp -f FILE :mpK.bin`
                              (a fresh process: raw REPL entry, soft reset)
              in session      mpremote's SerialTransport in the raw REPL:
                              exec round trips back to back, fs_writefile
  Ctrl-D    soft reboot: main.py runs the node runtime again

Then one more phase (issue 18), once per line speed: one-shot calls back to
back (10, no pause) against the same call after a 3 s pause (2, the slower
counts), moat (`moat cmd q ping m=hi`) then mpremote (`mpremote connect PTY
exec ...`), first unpaced (moat straight on QEMU's link socket, mpremote on
the console pty), then paced like a 115 200-baud 8N1 line: 11 520 bytes/s
each way through a rate-limiting proxy (a TCP proxy holding one connection
to QEMU's link socket for moat, a pty pair in front of the console pty for
mpremote).

QEMU runs with the board's own command (boards/qemu-mps2.toml), so moat is
measured as shipped: since commit 4dc2bb2 that includes `nodelay=on` on
the link socket (before, Nagle on QEMU's side delayed each reply frame by
the host's delayed ACK). The call_session note says which it was.

The firmware is built once in --work (default target/bench-peer/) with the
e2e tests' cache; each run starts from a fresh flash image (--keep-flash
reuses the last one, e.g. with modules put on the node's filesystem).

Prints key=value lines for bench/run:
  call=OURS|THEIRS|NOTE       small call per invocation (median)
  call_session=OURS|THEIRS|NOTE  small calls per second in one session
  copy=OURS|THEIRS|NOTE       4 KiB copy per invocation (median)
  copy_session=OURS|THEIRS|NOTE  4 KiB copy in one session (median)
  b2b=OURS|THEIRS|NOTE        back to back vs after a pause, unpaced
  b2b_paced=OURS|THEIRS|NOTE  the same at a paced 115 200 baud
  why=TEXT                    why it could not be measured
Progress and details go to stderr.
"""
import argparse
import os
import re
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = "q"
FILE_SIZE = 4096


def log(*a):
    print("peer:", *a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# --- a small MsgPack codec (the mux socket speaks MsgPack back to back) ---

def pack(x, out):
    if x is None:
        out.append(0xC0)
    elif x is True or x is False:
        out.append(0xC3 if x else 0xC2)
    elif isinstance(x, int):
        if 0 <= x < 128:
            out.append(x)
        elif -32 <= x < 0:
            out.append(x & 0xFF)
        else:
            out += b"\xd3" + struct.pack(">q", x)
    elif isinstance(x, str):
        b = x.encode()
        if len(b) < 32:
            out.append(0xA0 | len(b))
        else:
            out += b"\xdb" + struct.pack(">I", len(b))
        out += b
    elif isinstance(x, (bytes, bytearray)):
        out += b"\xc6" + struct.pack(">I", len(x)) + x
    elif isinstance(x, (list, tuple)):
        out += b"\xdd" + struct.pack(">I", len(x))
        for v in x:
            pack(v, out)
    elif isinstance(x, dict):
        out += b"\xdf" + struct.pack(">I", len(x))
        for k, v in x.items():
            pack(k, out)
            pack(v, out)
    else:
        raise TypeError(type(x))
    return out


class Incomplete(Exception):
    pass


def unpack(b, p):
    """(value, next position); raises Incomplete on a truncated prefix."""

    def need(n):
        if p + n > len(b):
            raise Incomplete()

    need(1)
    c = b[p]
    p += 1
    if c < 0x80:
        return c, p
    if c >= 0xE0:
        return c - 256, p
    if 0x80 <= c <= 0x8F or c in (0xDE, 0xDF):
        n, p = fixlen(b, p, c, 0x80, 0xDE)
        d = {}
        for _ in range(n):
            k, p = unpack(b, p)
            v, p = unpack(b, p)
            d[k if not isinstance(k, list) else tuple(k)] = v
        return d, p
    if 0x90 <= c <= 0x9F or c in (0xDC, 0xDD):
        n, p = fixlen(b, p, c, 0x90, 0xDC)
        a = []
        for _ in range(n):
            v, p = unpack(b, p)
            a.append(v)
        return a, p
    if 0xA0 <= c <= 0xBF or c in (0xD9, 0xDA, 0xDB):
        if c <= 0xBF:
            n = c & 0x1F
        else:
            w = {0xD9: 1, 0xDA: 2, 0xDB: 4}[c]
            need(w)
            n = int.from_bytes(b[p:p + w], "big")
            p += w
        need(n)
        return bytes(b[p:p + n]).decode("utf-8", "replace"), p + n
    if c in (0xC4, 0xC5, 0xC6):
        w = {0xC4: 1, 0xC5: 2, 0xC6: 4}[c]
        need(w)
        n = int.from_bytes(b[p:p + w], "big")
        p += w
        need(n)
        return bytes(b[p:p + n]), p + n
    simple = {0xC0: None, 0xC2: False, 0xC3: True}
    if c in simple:
        return simple[c], p
    fmt = {0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
           0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
    if c in fmt:
        n = struct.calcsize(fmt[c])
        need(n)
        return struct.unpack(fmt[c], b[p:p + n])[0], p + n
    ext = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
    if c in ext or c in (0xC7, 0xC8, 0xC9):
        if c in ext:
            n = ext[c]
        else:
            w = {0xC7: 1, 0xC8: 2, 0xC9: 4}[c]
            need(w)
            n = int.from_bytes(b[p:p + w], "big")
            p += w
        need(1 + n)
        return ("ext", b[p], bytes(b[p + 1:p + 1 + n])), p + 1 + n
    raise ValueError("bad MsgPack byte 0x%02x" % c)


def fixlen(b, p, c, fix, w16):
    if c < 0xC0:
        return c & 0x0F, p
    w = 2 if c == w16 else 4
    if p + w > len(b):
        raise Incomplete()
    return int.from_bytes(b[p:p + w], "big"), p + w


class MuxClient:
    """Requests one at a time over the mux's Unix socket."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.buf = bytearray()
        self.i = 2

    def call(self, path, args, timeout=10.0):
        i = self.i
        self.i += 2
        self.s.sendall(pack({"a": path, "d": args, "i": i}, bytearray()))
        end = time.time() + timeout
        while True:
            while self.buf:
                try:
                    m, n = unpack(self.buf, 0)
                except Incomplete:
                    break
                del self.buf[:n]
                if isinstance(m, dict) and m.get("i") == i + 1:
                    if "e" in m:
                        raise RuntimeError("error reply: %r" % (m,))
                    return m.get("d")
            left = end - time.time()
            if left <= 0:
                raise TimeoutError("no reply to %r" % (path,))
            self.s.settimeout(left)
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("the mux closed the socket")
            self.buf += chunk

    def close(self):
        self.s.close()


# --- the node: one QEMU, its console on a pty ---

class Console:
    """The console pty, held open for the whole run (a closed pty makes
    QEMU drop output and poll for a reader once a second, which a real
    serial device would not do). A thread drains it while moat runs; it
    pauses while mpremote owns the console."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        self.buf = bytearray()
        self.lock = threading.Lock()
        self.reading = threading.Event()
        self.reading.set()
        self.stop = threading.Event()
        self.log = bytearray()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        while not self.stop.is_set():
            if not self.reading.wait(0.05):
                continue
            r, _, _ = select.select([self.fd], [], [], 0.05)
            if r and self.reading.is_set():
                try:
                    data = os.read(self.fd, 4096)
                except OSError:
                    return
                with self.lock:
                    self.buf += data
                    self.log += data

    def pause(self):
        self.reading.clear()
        time.sleep(0.15)  # let a select in flight finish

    def resume(self):
        with self.lock:
            self.buf.clear()
        self.reading.set()

    def write(self, b):
        os.write(self.fd, b)

    def expect(self, token, limit):
        end = time.time() + limit
        while time.time() < end:
            with self.lock:
                k = self.buf.find(token)
                if k >= 0:
                    del self.buf[:k + len(token)]
                    return True
            time.sleep(0.02)
        return False

    def close(self):
        self.stop.set()
        time.sleep(0.1)
        os.close(self.fd)


def qemu_command(port):
    """The board's run command (boards/qemu-mps2.toml, what `moat run` and
    the mux start) with the console (UART1, `-serial stdio`) on a pty, as
    cli/src/emulator/qemu.rs builds it for Console::Pty."""
    import tomllib

    with open(os.path.join(ROOT, "boards", "qemu-mps2.toml"), "rb") as f:
        cmd = tomllib.load(f)["run"]["command"]
    cmd = [c.replace("{port}", str(port)).replace("{firmware}", "firmware.elf") for c in cmd]
    serials = [k + 1 for k, c in enumerate(cmd) if c == "-serial"]
    if len(serials) != 2:
        raise RuntimeError("boards/qemu-mps2.toml: expected two -serial options (link, console)")
    cmd[serials[1]] = "pty"
    return cmd


def link_nodelay(port):
    """Whether the board's link socket has nodelay (Nagle off)."""
    cmd = qemu_command(port)
    return "nodelay=on" in cmd[cmd.index("-serial") + 1]


def qemu_start(node_dir, port):
    cmd = qemu_command(port)
    p = subprocess.Popen(cmd, cwd=node_dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    # QEMU 7.2 names the pty on stdout ("char device redirected to
    # /dev/pts/N (label serial1)"), others on stderr: both are read here.
    end = time.time() + 20
    while time.time() < end:
        r, _, _ = select.select([p.stdout], [], [], 0.5)
        if r:
            line = p.stdout.readline().decode(errors="replace")
            if not line:
                break
            m = re.search(r"redirected to (/dev/\S+)", line)
            if m:
                # keep draining QEMU's output so it never blocks on a pipe
                threading.Thread(target=lambda: p.stdout.read(), daemon=True).start()
                return p, m.group(1)
    p.kill()
    p.wait()
    raise RuntimeError("QEMU named no console pty")


# --- a paced line (issue 18) ---

LINE_RATE = 11520  # bytes/s: 115 200 baud, 8N1


def _paced_copy(src, dst, rate, stop, sink=None):
    """Bytes from fd src to fd dst (or to sink() -> fd or None: dropped),
    at most `rate` bytes/s, in small pieces so they trickle as on a wire."""
    due = time.perf_counter()
    while not stop.is_set():
        try:
            r, _, _ = select.select([src], [], [], 0.05)
            if not r:
                continue
            data = os.read(src, 64)
        except OSError:
            return
        if not data:
            return
        now = time.perf_counter()
        due = max(due, now) + len(data) / rate
        if due > now:
            time.sleep(due - now)
        to = sink() if sink else dst
        if to is None:
            continue  # nobody on the other end of the line: the bytes are gone
        try:
            os.write(to, data)
        except OSError:
            if not sink:
                return


class PacedLink:
    """A TCP port in front of QEMU's link socket, paced at `rate` bytes/s
    each way. It holds ONE connection to QEMU for its whole life, as a wire
    stays connected: each client's bytes reach the node in full, also those
    written just before it closed; the node's bytes while no client is
    connected are lost."""

    def __init__(self, upstream_port, rate=LINE_RATE):
        self.up = socket.create_connection(("127.0.0.1", upstream_port))
        self.up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(1)
        self.port = self.ls.getsockname()[1]
        self.rate = rate
        self.stop = threading.Event()
        self.client = None
        threading.Thread(target=_paced_copy, daemon=True,
                         args=(self.up.fileno(), None, rate, self.stop, self._client_fd)).start()
        threading.Thread(target=self._accept, daemon=True).start()

    def _client_fd(self):
        c = self.client
        return c.fileno() if c else None

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.client = c
            _paced_copy(c.fileno(), self.up.fileno(), self.rate, self.stop)
            self.client = None
            c.close()

    def close(self):
        self.stop.set()
        self.ls.close()
        self.up.close()


class PacedPty:
    """A pty pair in front of the console pty (fd), paced at `rate` bytes/s
    each way: mpremote opens `path`."""

    def __init__(self, console_fd, rate=LINE_RATE):
        import tty

        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.stop = threading.Event()
        for a, b in ((self.master, console_fd), (console_fd, self.master)):
            threading.Thread(target=_paced_copy, args=(a, b, rate, self.stop), daemon=True).start()

    def close(self):
        self.stop.set()
        time.sleep(0.1)
        os.close(self.master)
        os.close(self.slave)


def back_to_back(cmd, ok, n=10, pause=3.0, **kw):
    """(slower of two invocations after `pause`, n invocations back to back)."""
    timed(cmd, ok=ok, **kw)  # warm up; the previous step may have been anything
    ref = 0.0
    for _ in range(2):
        time.sleep(pause)  # the pause being measured
        ref = max(ref, timed(cmd, ok=ok, **kw))
    return ref, [timed(cmd, ok=ok, **kw) for _ in range(n)]


def b2b_round(moat, q_port, con, mp, pty, res):
    """Unpaced, then paced: moat (the node runtime on UART0), then mpremote
    (the REPL on the console, after Ctrl-C)."""
    cmd = [moat.exe, "cmd", NODE, "ping", "m=hi"]
    log("back to back vs after a pause: moat, unpaced")
    res["b2b_moat"] = back_to_back(cmd, "hi", cwd=moat.proj, env=moat.env)
    # QEMU serves one connection at a time: the paced line holds it now.
    link = PacedLink(q_port)
    try:
        log("back to back vs after a pause: moat, paced")
        res["b2b_paced_moat"] = back_to_back(cmd, "hi", cwd=moat.paced_proj(link.port),
                                             env=moat.env)
    finally:
        link.close()
    con.write(b"\x03")
    if not con.expect(b">>> ", 10):
        raise RuntimeError("no REPL prompt after Ctrl-C on the console")
    con.pause()
    try:
        log("back to back vs after a pause: mpremote, unpaced")
        res["b2b_mp"] = back_to_back([mp, "connect", pty, "exec", "print(7*6)"], "42")
        paced = PacedPty(con.fd)
        try:
            log("back to back vs after a pause: mpremote, paced")
            res["b2b_paced_mp"] = back_to_back([mp, "connect", paced.path, "exec", "print(7*6)"],
                                               "42")
        finally:
            paced.close()
    finally:
        con.resume()


# --- measurements ---

def timed(cmd, cwd=None, env=None, ok=None, timeout=60):
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    dt = time.perf_counter() - t
    if r.returncode != 0 or (ok and ok not in r.stdout):
        raise RuntimeError("%s failed (%d): %s %s" % (" ".join(cmd[:4]), r.returncode,
                                                     r.stdout[-300:], r.stderr[-500:]))
    return dt


class Moat:
    def __init__(self, exe, proj, link_proj, env, work):
        self.exe, self.proj, self.link_proj, self.env, self.work = exe, proj, link_proj, env, work

    def paced_proj(self, port):
        """A copy of the project's manifest whose node is on `port`."""
        d = os.path.join(self.work, "paced")
        os.makedirs(os.path.join(d, "apps"), exist_ok=True)
        with open(os.path.join(self.proj, "moat.toml")) as f:
            m = re.sub(r"tcp:127\.0\.0\.1:\d+", "tcp:127.0.0.1:%d" % port, f.read())
        with open(os.path.join(d, "moat.toml"), "w") as f:
            f.write(m)
        return d

    def wait_up(self, limit=60):
        end = time.time() + limit
        err = None
        while time.time() < end:
            try:
                timed([self.exe, "cmd", NODE, "ping", "m=hi"], cwd=self.proj, env=self.env,
                      ok="hi", timeout=30)
                return
            except Exception as e:  # not up yet
                err = e
                time.sleep(0.5)
        raise RuntimeError("the node runtime never answered on UART0: %s" % err)

    def per_invocation(self, res, data_path, n):
        for _ in range(n):
            # Spaced as before connection ids (a node from then ignored a
            # new handshake within 500 ms of the last), so the figures stay
            # comparable with earlier runs; back to back: b2b_round.
            time.sleep(0.6)
            res["moat_call"].append(timed([self.exe, "cmd", NODE, "ping", "m=hi"], cwd=self.proj,
                                          env=self.env, ok="hi"))
        for k in range(max(1, n // 2)):
            time.sleep(0.6)
            res["moat_copy"].append(timed([self.exe, "fs", "put", data_path, "peer%d.bin" % k],
                                          cwd=self.proj, env=self.env))

    def session(self, res, data_path, seconds, copies):
        sock = os.path.join(self.work, "mux.sock")
        time.sleep(0.6)
        mux = subprocess.Popen([self.exe, "mux", "--socket", sock, "--json"], cwd=self.link_proj,
                               env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
        try:
            end = time.time() + 30
            while time.time() < end:
                line = mux.stdout.readline()
                if not line:
                    raise RuntimeError("moat mux exited")
                if '"state":"up"' in line.replace(" ", ""):
                    break
            else:
                raise RuntimeError("the mux never brought the link up")
            threading.Thread(target=lambda: mux.stdout.read(), daemon=True).start()
            c = MuxClient(sock)
            c.call([NODE, "ping"], {"m": "hi"})
            k = 0
            t = time.perf_counter()
            while time.perf_counter() - t < seconds:
                if c.call([NODE, "ping"], {"m": "hi"}) != {"m": "hi"}:
                    raise RuntimeError("ping answered wrongly")
                k += 1
            res["moat_rate"].append(k / (time.perf_counter() - t))
            c.close()
            for k in range(copies):
                res["moat_copy_session"].append(
                    timed([self.exe, "fs", "put", "--socket", sock, data_path, "peer%d.bin" % k],
                          cwd=self.link_proj, env=self.env))
        finally:
            mux.terminate()
            mux.wait()


def mpremote_round(mp, pty, res, data_path, data, n, seconds):
    base = [mp, "connect", pty]
    for _ in range(n):
        res["mp_call"].append(timed(base + ["exec", "print(7*6)"], ok="42"))
    for k in range(max(1, n // 2)):
        res["mp_copy"].append(timed(base + ["cp", "-f", data_path, ":mp%d.bin" % k]))
    # In one session: mpremote's own transport, already in the raw REPL.
    try:
        from mpremote.transport_serial import SerialTransport
    except ImportError:  # not run with the venv's python: use the venv's packages
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(mp)), "lib",
                                        "python%d.%d" % sys.version_info[:2], "site-packages"))
        from mpremote.transport_serial import SerialTransport

    t = SerialTransport(pty, baudrate=115200)
    try:
        t.enter_raw_repl(soft_reset=False)
        if t.exec("print(7*6)").strip() != b"42":
            raise RuntimeError("mpremote exec answered wrongly")
        k = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            if t.exec("print(7*6)").strip() != b"42":
                raise RuntimeError("mpremote exec answered wrongly")
            k += 1
        res["mp_rate"].append(k / (time.perf_counter() - t0))
        for k in range(max(1, n // 2)):
            t0 = time.perf_counter()
            t.fs_writefile("mps%d.bin" % k, data)
            res["mp_copy_session"].append(time.perf_counter() - t0)
        if t.eval("__import__('os').stat('mps0.bin')[6]") != len(data):
            raise RuntimeError("mpremote's copy has the wrong size")
        t.exit_raw_repl()
    finally:
        t.close()


def prepare(moat, work, env, keep_flash=False):
    """A qemu-mps2 project (built once, kept under target/) and a second
    manifest for the mux: the same node through a board without a run
    command, so the mux connects to our QEMU instead of starting its own."""
    proj = os.path.join(work, "proj")
    os.makedirs(os.path.join(proj, "apps"), exist_ok=True)
    manifest = ("[project]\nname = \"peer\"\n\n[apps]\npaths = [\"apps\"]\n\n"
                "[nodes.q]\nboard = \"%s\"\nport = \"tcp:127.0.0.1:%d\"\n\n"
                "[nodes.q.config]\napps = { fs = \"fs.Files\" }\n")
    port = free_port()
    with open(os.path.join(proj, "moat.toml"), "w") as f:
        f.write(manifest % ("qemu-mps2", port))
    log("moat build (qemu-mps2; a no-op once built) ...")
    r = subprocess.run([moat, "build", "--node", NODE, "--json"], cwd=proj, env=env,
                       capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError("moat build failed: %s" % r.stderr[-800:])
    node_dir = os.path.join(proj, ".moat", "nodes", NODE)
    # A fresh filesystem each run: `moat flash` leaves moat.cfg, _boot moves it in.
    if not keep_flash and os.path.exists(os.path.join(node_dir, "flash.bin")):
        os.remove(os.path.join(node_dir, "flash.bin"))
    r = subprocess.run([moat, "flash"], cwd=proj, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("moat flash failed: %s" % r.stderr[-800:])
    link = os.path.join(work, "link")
    os.makedirs(os.path.join(link, "boards"), exist_ok=True)
    os.makedirs(os.path.join(link, "apps"), exist_ok=True)
    with open(os.path.join(ROOT, "boards", "qemu-mps2.toml")) as f:
        board = f.read()
    # No run command, so the mux does not start an emulator of its own (and
    # a flash method that needs none; this board is never flashed).
    board = board.split("\n[run]")[0].replace(
        'method = "local"', 'method = "uf2"\nvolume = "NONE"\nfamily = 0')
    with open(os.path.join(link, "boards", "qemu-link.toml"), "w") as f:
        f.write(board)
    with open(os.path.join(link, "moat.toml"), "w") as f:
        f.write(manifest % ("qemu-link", port))
    return proj, link, node_dir, port


def run_node(a, proj, link, node_dir, port, env, data_path, data):
    """One QEMU; `a.rounds` of moat then mpremote."""
    res = {k: [] for k in ("moat_call", "moat_copy", "moat_rate", "moat_copy_session",
                           "mp_call", "mp_copy", "mp_rate", "mp_copy_session")}
    q, pty = qemu_start(node_dir, port)
    con = Console(pty)
    moat = Moat(a.moat, proj, link, env, a.work)
    try:
        log("QEMU up, console on %s; waiting for the node runtime" % pty)
        moat.wait_up()
        for rnd in range(a.rounds):
            log("round %d: moat over UART0" % (rnd + 1))
            moat.per_invocation(res, data_path, a.n)
            moat.session(res, data_path, a.seconds, max(1, a.n // 2))
            log("round %d: Ctrl-C on the console, mpremote over it" % (rnd + 1))
            con.write(b"\x03")
            if not con.expect(b">>> ", 10):
                raise RuntimeError("no REPL prompt after Ctrl-C on the console")
            con.pause()
            mpremote_round(a.mpremote, pty, res, data_path, data, a.n, a.seconds)
            con.resume()
            con.write(b"\r\x04")  # soft reboot: main.py starts the runtime again
            moat.wait_up()
        if a.b2b:
            b2b_round(moat, port, con, a.mpremote, pty, res)
    except Exception as e:
        log("console so far:", bytes(con.log[-2000:]))
        lines = [x for x in bytes(con.log).decode(errors="replace").splitlines() if x.strip()]
        raise RuntimeError("%s; the console's last line: %s" % (e, lines[-1] if lines else "(none)"))
    finally:
        con.close()
        q.kill()
        q.wait()
    for k, v in res.items():
        if v and not k.startswith("b2b"):
            log(k, " ".join("%.3f" % x for x in v))
        elif v:
            log(k, "after a pause %.3f; back to back %s" % (v[0], " ".join("%.3f" % x for x in v[1])))
    return res


def med(xs):
    return statistics.median(xs)


def faster(theirs, ours):
    # times: how many times faster (or slower) moat is
    return ("moat %.1fx faster" % (theirs / ours)) if theirs >= ours else \
        ("moat %.1fx slower" % (ours / theirs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mpremote", required=True)
    ap.add_argument("--moat", required=True)
    ap.add_argument("--work", default=os.path.join(ROOT, "target", "bench-peer"))
    ap.add_argument("--cache", default=os.environ.get("MOAT_TEST_CACHE") or
                    os.path.join(ROOT, "target", "debug", "moat-e2e", "cache"),
                    help="XDG_CACHE_HOME for moat build (the e2e tests' MicroPython sources; "
                    "default $MOAT_TEST_CACHE as for the tests, else theirs)")
    ap.add_argument("--rounds", type=int, default=3, help="moat/mpremote rounds, alternating")
    ap.add_argument("-n", type=int, default=5, help="invocations per round (copies: half)")
    ap.add_argument("--seconds", type=float, default=3.0, help="in-session timing per round")
    ap.add_argument("--no-b2b", dest="b2b", action="store_false",
                    help="skip the back-to-back vs after-a-pause phase")
    ap.add_argument("--keep-flash", action="store_true",
                    help="keep the node's filesystem (flash.bin) from the last run")
    a = ap.parse_args()
    missing = [t for t in ("qemu-system-arm", "arm-none-eabi-gcc") if not shutil.which(t)]
    if missing:
        print("why=%s missing (apt-get install qemu-system-arm gcc-arm-none-eabi "
              "libnewlib-arm-none-eabi)" % " and ".join(missing))
        return 0
    os.makedirs(a.work, exist_ok=True)
    env = dict(os.environ, XDG_CACHE_HOME=a.cache)
    env.pop("MOAT_LOG", None)
    env.pop("MOAT_SOCKET", None)
    data = bytes((i * 7 + i // 251) & 0xFF for i in range(FILE_SIZE))
    tmp = tempfile.mkdtemp(prefix="moat-peer-")
    data_path = os.path.join(tmp, "peer.bin")
    with open(data_path, "wb") as f:
        f.write(data)
    try:
        proj, link, node_dir, port = prepare(a.moat, a.work, env, a.keep_flash)
        res = run_node(a, proj, link, node_dir, port, env, data_path, data)
        nodelay = link_nodelay(port)
    except Exception as e:
        print("why=%s" % str(e).replace("\n", " ")[:400])
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mc, pc = med(res["moat_call"]), med(res["mp_call"])
    print("call=moat cmd ping %.3f s|mpremote exec %.3f s|per invocation: process start, "
          "connect, 1 call (median of %d, alternating); %s"
          % (mc, pc, len(res["moat_call"]), faster(pc, mc)))
    mr, pr = med(res["moat_rate"]), med(res["mp_rate"])
    print("call_session=%.0f ping/s (moat mux client)|%.0f exec/s (mpremote raw REPL)|"
          "back to back in one session, %.0f s x %d; %s; link socket %s"
          % (mr, pr, a.seconds, len(res["moat_rate"]), faster(1 / pr, 1 / mr),
             "nodelay=on" if nodelay else "with Nagle (no nodelay)"))
    mf, pf = med(res["moat_copy"]), med(res["mp_copy"])
    print("copy=moat fs put %.2f s|mpremote cp -f %.2f s|per invocation (median of %d); %s"
          % (mf, pf, len(res["moat_copy"]), faster(pf, mf)))
    ms, ps = med(res["moat_copy_session"]), med(res["mp_copy_session"])
    print("copy_session=moat fs put --socket %.2f s|mpremote fs_writefile %.2f s|"
          "moat through a running mux (process start included), mpremote in its raw REPL; %s"
          % (ms, ps, faster(ps, ms)))
    for key, what in (("b2b", "unpaced"), ("b2b_paced", "paced 115 200 baud (11 520 B/s each way)")):
        if key + "_moat" in res and key + "_mp" in res:
            print("%s=%s|%s|%s; 10 back to back vs the slower of 2 after a 3 s pause; "
                  "per-call mean back to back over after-a-pause: moat %.1fx, mpremote %.1fx"
                  % (key, b2b_fig("moat cmd ping", res[key + "_moat"]),
                     b2b_fig("mpremote exec", res[key + "_mp"]), what,
                     b2b_ratio(res[key + "_moat"]), b2b_ratio(res[key + "_mp"])))
    return 0


def b2b_ratio(m):
    ref, times = m
    return statistics.mean(times) / ref


def b2b_fig(name, m):
    ref, times = m
    return "%s %.3f s back to back (max %.3f) vs %.3f s after a pause" % (
        name, statistics.mean(times), max(times), ref)


if __name__ == "__main__":
    raise SystemExit(main())
