# Authenticated links (auth.py + proto.Link) against tests/vectors/auth.json
# and a scripted peer:
#   MICROPYPATH=node-runtime:.frozen micropython node-runtime/tests/test_auth.py [tests/vectors]
# Prints "OK test_auth" last and exits 0, or exits 1 naming each failure.
# Also prints the cost of a sealed message and the heap an auth link takes.
import sys
import gc
import json
import time
import hashlib
import binascii
import asyncio
from msgpack import Packer, Proxy, unpackb, packb, NONE
from taskgroup import TaskGroup
from root import Root
from proto import Link
from app import App
import auth

fails = []


def check(ok, what):
    if not ok:
        fails.append(what)
        print("FAIL", what)


def vdir():
    if len(sys.argv) > 1:
        return sys.argv[1]
    f = __file__
    d = f[: f.rfind("/")] if "/" in f else "."
    return d + "/../../tests/vectors"


def conv(j):
    # vector JSON notation -> value
    if isinstance(j, dict):
        if "$map" in j:
            return {conv(k): conv(v) for k, v in j["$map"]}
        if "$bin" in j:
            return binascii.unhexlify(j["$bin"])
        return {k: conv(v) for k, v in j.items()}
    if isinstance(j, list):
        return [conv(v) for v in j]
    return j


def hx(s):
    return binascii.unhexlify(s)


def hm(k, *parts):
    # HMAC-SHA256 written out here, independent of auth.Key
    k = bytes(k) + bytes(64 - len(k))
    h = hashlib.sha256(bytes(x ^ 0x36 for x in k))
    for p in parts:
        h.update(p)
    return hashlib.sha256(bytes(x ^ 0x5C for x in k) + h.digest()).digest()


with open(vdir() + "/auth.json") as f:
    V = json.load(f)
K = hx(V["key"])
NI = hx(V["ni"])
NR = hx(V["nr"])
KS = hx(V["session_key"])
HELLO, CHAL, PROOF = [hx(h["hex"]) for h in V["handshake"]]

# --- HMAC and the handshake values
k = auth.Key(K)
check(k.mac(b"moat/1 R", NI, NR, V["name"].encode(), b"\x00", V["project"].encode()) == hx(V["tr"]), "TR")
check(k.mac(b"moat/1 I", NR, NI) == hx(V["ti"]), "TI")
check(k.mac(b"moat/1 S", NI, NR) == KS, "KS")
check(hm(K, b"moat/1 S", NI, NR) == KS, "the test's own HMAC")
check(auth.same(b"abcd", b"abcd", 4) and not auth.same(b"abcd", b"abce", 4), "same()")
check(len(auth._nonce()) == 16 and auth._nonce() != auth._nonce(), "nonces")

CFG = {
    "auth": {"k": K, "n": V["name"], "p": V["project"], "q": V["project_name"]},
    "sec": [["wifi", "pw"]],
    "wifi": {"ssid": "home", "pw": "hunter2"},
    "apps": {},
}


class Mem(Link):
    # a link whose peer is this test: .raw holds what it sent, .got decoded
    def __init__(self, root, au=None, ini=False, m=1024):
        super().__init__(root, "mem", m, au, ini, "peer test")
        self.raw = []
        self.closed = False

    def _put(self, buf):
        self.raw.append(bytes(buf))
        return len(buf)

    async def _write(self, buf):
        self._put(buf)

    def shut(self):
        self.closed = self.SHUT  # what a link that can close would do


class Tcp(Mem):
    NOW = True
    SHUT = True


class T(App):
    ran = 0

    def cmd_mark(self, v=1):
        T.ran += v
        return T.ran


def c4(c):
    return bytes([c >> 24, (c >> 16) & 255, (c >> 8) & 255, c & 255])


def sealed(dirn, c, body):
    # the peer's side of a sealed message, written out (docs/auth.md): the
    # counter's low byte, a 16-byte tag over the whole counter, the body
    return {"s": bytes([c & 255]) + hm(KS_, dirn, c4(c), body)[:16] + body}


def opened(raw, dirn, last):
    # -> (counter, message) of a sealed map the node sent, checked here
    m = unpackb(raw)
    s = m["s"]
    c = last + ((s[0] - last) & 255 or 256)
    check(len(m) == 1, "sealed map %r" % (m,))
    check(hm(KS_, dirn, c4(c), s[17:])[:16] == s[1:17], "tag of %r" % (s,))
    return c, unpackb(s[17:])


KS_ = KS


async def until(f, ms=2000):
    for _ in range(ms // 5):
        if f():
            return True
        await asyncio.sleep_ms(5)
    return False


async def main():
    global KS_
    async with TaskGroup() as tg:
        root = Root(CFG, tg)
        root.apps["t"] = T({}, "t", root)
        cf = auth.conf(CFG, "mem")
        check(cf is not None and cf.n == V["name"], "conf")
        check(auth.conf({}, "tcp") is None, "no auth.k: no conf")

        # --- responder: the vector handshake byte for byte
        real = auth._nonce
        auth._nonce = lambda: NR
        l = Tcp(root, cf)
        check(l.rx(unpackb(HELLO)) is False, "hello taken")
        await until(lambda: l.raw)
        check(l.raw == [CHAL], "challenge bytes %s != %s" % (binascii.hexlify(l.raw[0]) if l.raw else None, binascii.hexlify(CHAL)))
        l.raw.clear()
        l.rx(unpackb(PROOF))
        await until(lambda: l.raw)
        check(l.au.ok() and l.up and not l.closed, "authenticated")
        c, a = opened(l.raw[0], b"R", 0)
        check(c == 1 and a == {"a": ["link"], "d": True}, "announce sealed first %r" % (a,))
        # the vectors' requests (I to R) are accepted; each answered sealed
        last = c
        for e in V["sealed"]:
            if e["dir"] != "I":
                continue
            l.raw.clear()
            m = unpackb(hx(e["hex"]))
            l.au.rc = e["counter"] - 1  # the vectors skip counters (300)
            n0 = auth.N[0]
            l.rx(m)
            await until(lambda: l.raw)
            check(auth.N[0] == n0 + 1, "accepted: %s" % e["name"])
            check(len(l.raw) == 1, "answered: %s %r" % (e["name"], l.raw))
            if l.raw:
                c, a = opened(l.raw[0], b"R", last)
                check(c == last + 1 and a.get("i") == conv(e["message"])["i"] + 1, "reply %r" % (a,))
                last = c
        # a replay of the last one now: dropped and counted, the link goes on
        n1 = auth.N[1]
        l.raw.clear()
        l.rx(unpackb(hx(V["sealed"][3]["hex"])))
        await asyncio.sleep_ms(20)
        check(auth.N[1] == n1 + 1 and not l.raw and l.up, "replay dropped")
        auth._nonce = real
        l.detach()

        # --- seal: the vectors' bytes in both directions, in both forms
        cu = auth.conf(CFG, "uart")  # a uart link's: a bare bin, 8-byte tag
        check(cu.fr and cu.t == 8 and not cf.fr and cf.t == 16, "forms by link kind")
        for c, es in ((cf, V["sealed"]), (cu, V["sealed_serial"])):
            for e in es:
                g = auth.Guard(c, l, e["dir"] == "I", "")
                g.ks.set(KS)
                g.st = 3
                g.tx = e["counter"] - 1
                pk = Packer(1024 + c.o, 1024 + c.o)
                pk.o = c.o
                mm = conv(e["message"])  # keys a d i: Packer.msg's order
                pk.msg(mm.get("a", NONE), mm.get("d", NONE), mm.get("i", NONE))
                check(bytes(g.seal(pk)) == hx(e["hex"]), "seal %s" % e["name"])
                check(bytes(pk.b[c.o : pk.n]) == hx(e["body"]), "body %s" % e["name"])
                # and the other side opens it
                o = auth.Guard(c, l, e["dir"] == "R", "")
                o.ks.set(KS)
                o.st = 3
                o.rc = e["counter"] - 1
                v = o.rx(unpackb(hx(e["hex"])))
                check(v == conv(e["message"]), "open %s: %r" % (e["name"], v))
        # a message the link encodes itself (Packer.msg at the offset)
        g = auth.Guard(cf, l, False, "")
        g.ks.set(KS)
        g.st = 3
        pk = Packer(1024 + cf.o, 1024 + cf.o)
        pk.o = cf.o
        pk.msg(d={"m": "hi"}, i=3)
        check(bytes(g.seal(pk)) == hx(V["sealed"][1]["hex"]), "seal after Packer.msg")

        # --- rejected entries: each dropped and counted
        for c, es in ((cf, V["rejected"]), (cu, V["serial_rejected"])):
            for e in es:
                g = auth.Guard(c, l, e["dir"] == "R", "")
                g.ks.set(KS)
                g.st = 3
                g.rc = e["last"]
                n1 = auth.N[1]
                v = g.rx(unpackb(hx(e["hex"])))
                check(v is None and auth.N[1] == n1 + 1 and g.rc == e["last"], "rejected: %s" % e["name"])

        # --- encrypted sessions: the vectors' bytes both ways, and drops
        KE = hx(V["encryption_key"])
        check(hm(K, b"moat/1 E", hx(V["ni"]), hx(V["nr"])) == KE, "KE")
        ce = auth.conf(CFG, "mem", True)
        native = auth._N
        for nat in (native, None):  # the C xor, then the Python loop
            auth._N = nat
            for e in V["encrypted"]:
                g = auth.Guard(ce, l, e["dir"] == "I", "")
                g.ni = hx(V["ni"])
                g.nr = hx(V["nr"])
                g._session(True)
                g.tx = e["counter"] - 1
                pk = Packer(1024 + ce.o, 1024 + ce.o)
                pk.o = ce.o
                mm = conv(e["message"])
                pk.msg(mm.get("a", NONE), mm.get("d", NONE), mm.get("i", NONE))
                check(bytes(g.seal(pk)) == hx(e["hex"]), "seal encrypted %s (native %s)" % (e["name"], nat is not None))
                o = auth.Guard(ce, l, e["dir"] == "R", "")
                o.ni = g.ni
                o.nr = g.nr
                o._session(True)
                o.st = 3
                o.rc = e["counter"] - 1
                v = o.rx(unpackb(hx(e["hex"])))
                check(v == conv(e["message"]), "open encrypted %s: %r" % (e["name"], v))
        auth._N = native
        for e in V["encrypted_rejected"]:
            g = auth.Guard(ce, l, e["dir"] == "R", "")
            g.ni = hx(V["ni"])
            g.nr = hx(V["nr"])
            g._session(True)
            g.rc = e["last"]
            n1 = auth.N[1]
            v = g.rx(unpackb(hx(e["hex"])))
            check(v is None and auth.N[1] == n1 + 1 and g.rc == e["last"], "encrypted rejected: %s" % e["name"])
        # a responder that encrypts says so in step 2 (the vector's bytes)
        auth._nonce = lambda: hx(V["nr"])
        le = Tcp(root, ce)
        le.rx(unpackb(HELLO))
        await until(lambda: le.raw)
        check(le.raw == [hx(V["challenge_encrypted"]["hex"])], "encrypted challenge bytes")
        auth._nonce = real
        le.detach()
        # an initiator that insists refuses a responder that does not offer it
        auth._nonce = lambda: NI
        le = Tcp(root, ce, True)
        le.au.hello()
        f0 = auth.N[2]
        le.rx(unpackb(CHAL))
        await asyncio.sleep_ms(10)
        check(le.closed and auth.N[2] == f0 + 1 and not le.up, "initiator insists on encryption")
        auth._nonce = real
        le.detach()

        # --- initiator: hello and proof bytes of the vector
        auth._nonce = lambda: NI
        l = Tcp(root, cf, True)
        check(l.au.hello() == HELLO, "hello bytes")
        l.rx(unpackb(CHAL))
        await until(lambda: len(l.raw) >= 2)
        check(l.raw[:1] == [PROOF], "proof bytes %r" % l.raw[:1])
        check(l.au.ok() and l.up, "initiator authenticated")
        if len(l.raw) > 1:
            c, a = opened(l.raw[1], b"I", 0)
            check(c == 1 and a == {"a": ["link"], "d": True}, "initiator announce %r" % (a,))
        auth._nonce = real
        l.detach()
        # a challenge under another key: refused, counted, closed
        l = Tcp(root, cf, True)
        l.au.hello()
        f0 = auth.N[2]
        bad = dict(unpackb(CHAL))
        bad["p"] = "0000000000000000"
        l.rx(bad)
        await asyncio.sleep_ms(10)
        check(l.closed and auth.N[2] == f0 + 1 and not l.up and l.raw == [], "initiator refuses a wrong peer")

        # --- a full handshake against a scripted peer (random nonces)
        l = Tcp(root, cf)
        ni = b"0123456789abcdef"
        l.rx({"h": 1, "c": ni})
        await until(lambda: l.raw)
        ch = unpackb(l.raw[0])
        nr = ch["c"]
        check(len(ch) == 7 and ch["q"] == V["project_name"], "challenge keys %r" % (ch,))
        check(ch["t"] == hm(K, b"moat/1 R", ni, nr, b"demo", b"\x00", V["project"].encode()), "TR checks")
        check(ch["m"] == 1024 and ch["n"] == "demo", "challenge m, n")
        KS_ = hm(K, b"moat/1 S", ni, nr)
        l.raw.clear()
        l.rx({"h": 3, "t": hm(K, b"moat/1 I", nr, ni)})
        await until(lambda: l.raw)
        check(l.up, "scripted peer authenticated")
        T.ran = 0
        l.raw.clear()
        l.rx(sealed(b"I", 1, packb({"a": ["t", "mark"], "d": {"v": 5}, "i": 2})))
        await until(lambda: len(l.raw) >= 2)
        check(T.ran == 5, "a sealed request ran")
        if len(l.raw) >= 2:
            c, a = opened(l.raw[1], b"R", 1)
            check(a == {"d": 5, "i": 3}, "sealed answer %r" % (a,))
        # altered, reordered, unsealed, wrong direction: dropped, link goes on
        l.raw.clear()
        n1 = auth.N[1]
        m = sealed(b"I", 3, packb({"a": ["t", "mark"], "i": 4}))
        bb = bytearray(m["s"])
        bb[-1] ^= 1
        l.rx({"s": bytes(bb)})
        l.rx(sealed(b"R", 3, packb({"a": ["t", "mark"], "i": 4})))
        l.rx({"a": ["t", "mark"], "i": 4})
        l.rx(sealed(b"I", 1, packb({"a": ["t", "mark"], "i": 4})))
        l.rx(42)
        l.rx({"s": b"short"})
        l.rx({"s": 7})
        l.rx({"h": 1, "c": ni})
        await asyncio.sleep_ms(20)
        check(auth.N[1] == n1 + 8 and T.ran == 5 and not l.raw and not l.closed, "tampered dropped %d" % (auth.N[1] - n1))
        l.rx(sealed(b"I", 9, packb({"a": ["t", "mark"], "i": 6})))
        await until(lambda: l.raw)
        check(T.ran == 6 and len(l.raw) == 1, "the link goes on after drops")
        l.detach()

        # --- nothing before a valid step 3 runs; the peer is told once, closed
        for first, why in (
            ({"a": ["t", "mark"], "i": 2}, "request before authentication"),
            (7, "junk before the auth handshake"),
            ({"h": 3, "t": bytes(32)}, "expected auth handshake step 1"),
        ):
            T.ran = 0
            l = Tcp(root, cf)
            f0 = auth.N[2]
            l.rx(first)
            l.rx({"a": ["t", "mark"], "i": 4})
            await until(lambda: l.raw)
            await asyncio.sleep_ms(10)
            check(T.ran == 0 and not l.up, "nothing ran (%s)" % why)
            check(l.raw == [packb({"e": Proxy("_AuErr"), "d": [why]})] or len(l.raw) == 1, "told once: %r" % l.raw)
            check(l.raw and unpackb(l.raw[0]) == {"e": Proxy("_AuErr"), "d": [why]}, "_AuErr %r" % l.raw)
            check(l.closed and auth.N[2] == f0 + 1, "closed and counted (%s)" % why)
        # a second h: 1, then a wrong proof
        for steps, why in (
            ([{"h": 1, "c": ni}, {"h": 1, "c": ni}], "second h: 1"),
            ([{"h": 1, "c": ni}, {"h": 3, "t": bytes(32)}], "wrong key"),
        ):
            l = Tcp(root, cf)
            for s in steps:
                l.rx(s)
            await until(lambda: len(l.raw) >= 2)
            await asyncio.sleep_ms(10)
            check(len(l.raw) == 2 and unpackb(l.raw[1]) == {"e": Proxy("_AuErr"), "d": [why]}, "%s: %r" % (why, l.raw))
            check(l.closed and not l.up, "closed: %s" % why)

        # stdio-like link (cannot close, console bytes): ignores until a new h: 1
        class Con(Mem):
            CON = True

        l = Con(root, cf)
        l.rx(65)  # a console byte: no harm
        check(not l.raw, "console byte before auth")
        l.rx({"a": ["ping"], "i": 2})
        await until(lambda: l.raw)
        l.rx({"a": ["ping"], "i": 4})
        await asyncio.sleep_ms(10)
        check(len(l.raw) == 1 and not l.closed, "told once, stays open %r" % l.raw)
        l.raw.clear()
        l.rx({"h": 1, "c": ni})
        await until(lambda: l.raw)
        nr = unpackb(l.raw[0])["c"]
        l.rx({"h": 3, "t": hm(K, b"moat/1 I", nr, ni)})
        await until(lambda: len(l.raw) >= 2)
        check(l.up, "a new h: 1 after a failure authenticates")
        l.detach()

        # --- random input in every state never raises
        import random

        def junk(d=0):
            r = random.getrandbits(3)
            if r == 0:
                return random.getrandbits(8)
            if r == 1:
                return bytes(random.getrandbits(8) for _ in range(random.getrandbits(6)))
            if r == 2 and d < 2:
                return {random.choice(["h", "c", "t", "s", "a", "i", "n"]): junk(d + 1) for _ in range(random.getrandbits(2) + 1)}
            if r == 3:
                return {"h": random.getrandbits(2), "c": junk(d + 1), "t": junk(d + 1)}
            if r == 4:
                return {"s": bytes(random.getrandbits(8) for _ in range(random.getrandbits(6)))}
            return [junk(d + 1)] if d < 2 else None

        for j in range(300):
            l = Tcp(root, cf, j & 1)
            if j & 1:
                l.au.hello()
            try:
                for _ in range(4):
                    l.rx(junk())
            except Exception as e:
                check(False, "junk raised %r" % (e,))
            await asyncio.sleep_ms(0)
            l.detach()
        await asyncio.sleep_ms(20)

        # --- cfg.r masks secrets, cfg.w of _sec keeps them
        cfg = root.apps["cfg"]
        sec = Proxy("_sec")
        r = cfg.cmd_r()
        check(r["auth"]["k"] == sec and r["wifi"]["pw"] == sec and r["auth"]["n"] == "demo", "cfg.r masks %r" % (r,))
        check(root.cfg["auth"]["k"] == K and root.cfg["wifi"]["pw"] == "hunter2", "the running config keeps them")
        check(cfg.cmd_r(["auth", "k"]) == sec and cfg.cmd_r(["wifi", "pw"]) == sec, "cfg.r of a secret")
        check(cfg.cmd_r(["auth"])["k"] == sec and cfg.cmd_r(["wifi"]) == {"ssid": "home", "pw": sec}, "cfg.r above a secret")
        cfg.cmd_w([], r)
        check(root.cfg["auth"]["k"] == K and root.cfg["wifi"]["pw"] == "hunter2", "cfg.w of the masked config keeps secrets")
        cfg.cmd_w(["wifi", "pw"], sec)
        check(root.cfg["wifi"]["pw"] == "hunter2", "cfg.w _sec over a value")
        cfg.cmd_w(["wifi", "pw"], "new")
        check(root.cfg["wifi"]["pw"] == "new", "cfg.w of a new secret")
        try:
            cfg.cmd_w(["nothere"], sec)
            check(False, "cfg.w _sec with nothing to keep")
        except ValueError:
            pass
        info = root.apps["sys"].cmd_info()
        check(info["au"] == {"ok": auth.N[0], "bad": auth.N[1], "fail": auth.N[2]}, "sys.info au %r" % (info["au"],))

        # --- figures: a sealed ping round trip (open + seal) and the heap a link takes
        l = Tcp(root, cf)
        g = l.au
        g.ks.set(KS)
        g.st = 3
        KS_ = KS
        msgs = [sealed(b"I", c + 1, packb({"a": ["ping"], "d": {"m": "hi"}, "i": 2})) for c in range(200)]
        pk = l.pk
        gc.collect()
        t0 = time.ticks_us()
        for m in msgs:
            g.rx(m)
            g.done()
        t1 = time.ticks_us()
        for m in msgs:
            pk.msg(d={"m": "hi"}, i=3)
            g.seal(pk)
        t2 = time.ticks_us()
        print("open (check + decode) %d us, seal %d us per ping-sized message" % (time.ticks_diff(t1, t0) // 200, time.ticks_diff(t2, t1) // 200))
        gc.collect()
        gc.disable()
        a0 = gc.mem_alloc()
        for _ in range(10):
            pk.msg(d={"m": "hi"}, i=3)
            g.seal(pk)
        a1 = gc.mem_alloc()
        for _ in range(10):
            pk.msg(d={"m": "hi"}, i=3)
        a2 = gc.mem_alloc()
        gc.enable()
        print("seal garbage %d B per message (beyond encoding it)" % ((a1 - a0 - (a2 - a1)) // 10))
        l.detach()
        del msgs
        gc.collect()
        a0 = gc.mem_alloc()
        l0 = Tcp(root, None)
        gc.collect()
        a1 = gc.mem_alloc()
        l1 = Tcp(root, cf)
        gc.collect()
        a2 = gc.mem_alloc()
        print("link heap (m=1024, encode buffer only): %d B plain, %d B authenticating (+%d)" % (a1 - a0, a2 - a1, a2 - a1 - (a1 - a0)))
        check(a2 - a1 - (a1 - a0) < 1024, "auth costs < 1 KB per link")
        tg.cancel()


asyncio.run(main())
if fails:
    print("FAILED test_auth:", len(fails))
    sys.exit(1)
print("OK test_auth")
