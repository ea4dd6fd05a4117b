# MsgPack vectors and robustness, run on MicroPython:
#   micropython node-runtime/tests/test_msgpack.py [vectors-dir]
# Prints "OK test_msgpack" last and exits 0, or exits 1 naming each failure.
import sys
import json
import binascii
import msgpack
from msgpack import Proxy, Packer, Unpacker, unpackb, packb, Malformed, NONE

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
        if "$proxy" in j:
            return Proxy(j["$proxy"])
        if "$float" in j:
            return float(j["$float"])
        return {k: conv(v) for k, v in j.items()}
    if isinstance(j, list):
        return [conv(v) for v in j]
    return j


def same(a, b):
    # equality that also compares types (True != 1, 1.0 != 1, b"" != "")
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        for k, v in a.items():
            if k not in b or not same(v, b[k]):
                return False
        return True
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def load(name):
    with open(vdir() + "/" + name) as f:
        return json.load(f)


KEYS = "adiern"


def vectors(name):
    for v in load(name):
        want = conv(v["value"])
        raw = binascii.unhexlify(v["hex"])
        got = unpackb(raw)
        check(same(got, want), "%s %s: decoded %r" % (name, v["name"], got))
        enc = packb(want)
        check(same(unpackb(enc), want), "%s %s: re-encoding" % (name, v["name"]))
        # messages whose keys come in protocol order encode byte-exact
        ks = [k for k, _ in v["value"]["$map"]] if "$map" in v["value"] else []
        if ks and all(k in KEYS for k in ks) and sorted(ks, key=KEYS.find) == ks and name == "messages.json":
            p = Packer(16)
            out = bytes(p.msg(**want))
            flat = all(not isinstance(x, dict) or len(x) < 2 for x in want.values())
            check(same(unpackb(out), want), "%s %s: msg() decodes" % (name, v["name"]))
            check(out == raw or not flat, "%s %s: msg() gave %s" % (name, v["name"], binascii.hexlify(out)))
        # streaming decode, fed one byte at a time
        u = Unpacker(256)
        got = NONE
        for c in raw:
            sp = u.space()
            sp[0] = c
            u.got(1)
            x = u.next()
            if x is not NONE:
                got = x
        check(same(got, want), "%s %s: streamed" % (name, v["name"]))


vectors("messages.json")
vectors("reliable.json")

fr = load("frames.json")
for f in fr["frames"]:
    p = binascii.unhexlify(f["payload_hex"])
    check(isinstance(unpackb(p), dict), "frame payload " + f["name"])

# scalars at the edges of every width
for x in [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1,
          -1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1, -2**63,
          0.5, 0.1, -2.25, 1e300, "", "x" * 31, "x" * 32, "ü" * 200, "y" * 70000,
          b"", b"\x00" * 300, b"\xff" * 70000, [], [1] * 16, {}, {1: 2, "a": None},
          True, False, None, Proxy("-"), Proxy("_FnErr"), Proxy("x" * 300),
          msgpack.Ext(5, b"abc"), msgpack.Ext(-3, b"12345678")]:
    check(same(unpackb(packb(x)), x), "round trip %r" % (x if not isinstance(x, (str, bytes)) or len(x) < 40 else len(x)))
check(packb(0.5) == b"\xca\x3f\x00\x00\x00", "float32 when exact")
for x in [0, -1, 200, -200, 70000, 2**40, "", "é" * 40, "x" * 300, b"ab", [1, [2, {"a": None}]], {"k": "v" * 20}, Proxy("_FnErr")]:
    check(msgpack.size(x) == len(packb(x)), "size(%r)" % (x,))
check(packb(0.1)[0] == 0xCB, "float64 when not")
check(packb(Proxy("-")) == b"\xd4\x04-", "proxy '-' as fixext1")

# malformed input never raises out of the stream decoder
bad = [b"\xc1", b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xdf\x7f\xff\xff\xff",
       b"\x91" * 100, b"\xa2\xff\xfe", b"\x81\x90\x01", b"\xc9\xff\xff\xff\xff\x04"]
for b in bad:
    try:
        unpackb(b)
        check(False, "unpackb accepted %r" % b)
    except Malformed:
        pass
import random

random.seed(1)
u = Unpacker(128)
for _ in range(2000):
    k = random.getrandbits(6)
    sp = u.space()
    k = min(k, len(sp))
    for j in range(k):
        sp[j] = random.getrandbits(8)
    u.got(k)
    while u.next() is not NONE:
        pass
    if random.getrandbits(3) == 0:
        u.clear()
u.clear()
msg = bytes(Packer().msg(a=["ping"], d={}, i=2))
sp = u.space()
sp[: len(msg)] = msg
u.got(len(msg))
check(same(u.next(), {"a": ["ping"], "d": {}, "i": 2}), "decoder usable after junk")

# a strict stream (resync off, as on TCP) skips a message longer than its
# buffer by the declared lengths, reports its size and i, never decodes what
# hides inside it, and decodes the next message
from msgpack import BIG


def feed(u, data, step):
    # -> what next() returned, in order (NONE left out)
    out = []
    k = 0
    while k < len(data) or u.pending():
        sp = u.space()
        n = min(step, len(sp), len(data) - k)
        sp[:n] = data[k : k + n]
        u.got(n)
        k += n
        while True:
            v = u.next()
            if v is NONE:
                break
            out.append(v)
            if v is BIG:
                out.append(u.big)
        if not n:
            break
    return out


hidden = {"a": ["ping"], "d": {"m": "smuggled"}, "i": 100}
big1 = packb({"a": ["cfg", "w"], "i": 2, "d": {"p": ["junk"], "d": {"pad": "x" * 1100, "z": hidden}}})
big2 = packb({"a": ["ping"], "d": {"m": "y" * 300, "l": [1, -5, 70000, 2.5, None, True, b"z" * 40, Proxy("_x")]}, "i": 300})
big3 = packb([hidden] * 40)  # many small parts, no top-level i
after = packb({"a": ["ping"], "d": {"m": "after"}, "i": 4})
for step in (1, 7, 64):
    for big, i in ((big1, 2), (big2, 300), (big3, None)):
        u = Unpacker(64, False)
        got = feed(u, big + after, step)
        want = [BIG, (len(big), i), {"a": ["ping"], "d": {"m": "after"}, "i": 4}]
        check(len(got) == 3 and got[0] is BIG and got[1] == want[1] and same(got[2], want[2]) and not u.bad,
              "skip by declared lengths (step %d, %d bytes): %r" % (step, len(big), got[:2]))
# junk inside a message being skipped is malformed: next() stops there
u = Unpacker(64, False)
got = feed(u, b"\x92\xda\x01\x00" + b"q" * 256 + b"\xc1" + after, 16)
check(got == [] and u.bad == 1, "malformed inside a skipped message: %r bad %d" % (got, u.bad))
# and a malformed byte stops a strict stream where it is
u = Unpacker(64, False)
got = feed(u, b"\xc1" + after, 64)
check(got == [] and u.bad == 1, "strict stream stops at junk: %r" % (got,))

# allocation: encoding a reply into a warm Packer allocates little
import gc

p = Packer(256)
p.msg(d={"m": "hello"}, i=5)
gc.collect()
a0 = gc.mem_alloc()
for _ in range(10):
    p.msg(d={"m": "hello"}, i=5)
per = (gc.mem_alloc() - a0) // 10
print("encode alloc/msg", per)
check(per <= 256, "encoder allocates %d bytes per message" % per)

if fails:
    print("FAILED test_msgpack:", len(fails))
    sys.exit(1)
print("OK test_msgpack")
