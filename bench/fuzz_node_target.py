# MicroPython side of bench/fuzz_node.py: random and mutated MsgPack fed to
# the node runtime's decoder (msgpack.py, frozen into the firmware).
# argv: RUNS SEED. Prints one line: "runs N ok N malformed N fail N".
# A failure is any exception other than the decoder's ValueError
# (Malformed), a value that does not survive pack -> unpack, or the stream
# Unpacker raising. With the native module (_moat) in the firmware, every
# input also goes to the pure-Python decoder and encoder: both must give
# the same value (or the same kind of error) and the same bytes.
# The first few failures are printed with their input.
import sys
import msgpack
from msgpack import packb, unpackb, Unpacker

NATIVE = msgpack._N


def both(f, x):
    # -> (native outcome, Python outcome): a value or an exception's class
    out = []
    for n in (NATIVE, None):
        msgpack._N = n
        try:
            out.append(f(x))
        except Exception as e:
            out.append(type(e))
    msgpack._N = NATIVE
    return out

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
S = [int(sys.argv[2]) if len(sys.argv) > 2 else 1]


def rnd(n):
    # xorshift32: the same inputs for the same seed
    x = S[0]
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    S[0] = x
    return x % n


SEEDS = [
    None, True, False, 0, 1, -1, 127, 128, -33, 255, 65535, 65536, -(1 << 31),
    (1 << 32) + 5, -(1 << 40), 1.5, -0.25, "", "ping", "x" * 40, "\u00e9t\u00e9",
    b"", b"\x00\x01\xff", bytes(300), [], [1, [2, [3, [4]]]], {}, {"a": ["sys", "mem"], "i": 2},
    {"a": ["t", "inc"], "d": {"m": "hello"}, "i": 7, "r": 100},
    {"s": 3, "r": 5, "x": [6, 7], "d": {"d": [1, "x"], "i": 9}},
    {"a": "r", "n": 1, "c": {"t": 1000, "m": 8}},
    list(range(20)), {str(k): k for k in range(20)},
]


def sample():
    k = rnd(8)
    if k == 0:  # random bytes
        return bytes(rnd(256) for _ in range(rnd(40)))
    if k == 1:  # huge length fields
        lead = (0xDB, 0xC6, 0xDD, 0xDF, 0xC9, 0xDA, 0xC5, 0xDC, 0xDE, 0xD9, 0xC4)[rnd(11)]
        return bytes((0x81, 0xA1, 0x64, lead, 0xFF, 0xFF, 0xFF, 0xFF, rnd(256)))
    if k == 2:  # deep nesting
        return bytes((0x91, 0x81)[rnd(2)] for _ in range(rnd(100)))
    b = bytearray(packb(SEEDS[rnd(len(SEEDS))]))
    for _ in range(1 + rnd(3)):
        m = rnd(5)
        if not b:
            break
        i = rnd(len(b))
        if m == 0:
            b[i] = rnd(256)
        elif m == 1:
            b[i] ^= 1 << rnd(8)
        elif m == 2:
            b = b[:i]  # truncated
        elif m == 3:
            b = b[:i] + bytes((rnd(256),)) + b[i:]
        else:
            b = b[:i] + b[i + 1 :]
    return bytes(b)


counts = {"ok": 0, "malformed": 0, "fail": 0}


def fail(why, data):
    counts["fail"] += 1
    if counts["fail"] <= 5:
        print("FAIL", why, data)


for run in range(RUNS):
    data = sample()
    try:
        v = unpackb(data)
    except ValueError:
        counts["malformed"] += 1
        v = msgpack.NONE
    except Exception as e:
        fail(repr(e), data)
        continue
    if NATIVE:
        a, b = both(unpackb, data)
        if not (a == b or repr(a) == repr(b)):
            fail("native %r, Python %r" % (a, b), data)
        if v is not msgpack.NONE:
            a, b = both(packb, v)
            if a != b:
                fail("encoded: native %r, Python %r" % (a, b), data)
    if v is not msgpack.NONE:
        counts["ok"] += 1
        try:
            again = unpackb(packb(v))
            if again != v and repr(again) != repr(v):
                fail("round trip %r -> %r" % (v, again), data)
        except Exception as e:
            fail("re-encode " + repr(e), data)
    # The stream decoder: same bytes in random read sizes; never raises.
    try:
        u = Unpacker(64)
        p = 0
        while p < len(data):
            sp = u.space()
            n = min(len(sp), 1 + rnd(16), len(data) - p)
            if n == 0:
                fail("Unpacker has no space", data)
                break
            sp[:n] = data[p : p + n]
            u.got(n)
            p += n
            while u.next() is not msgpack.NONE:
                pass
    except Exception as e:
        fail("Unpacker " + repr(e), data)

print("native" if NATIVE else "python", end=" ")
print("runs %d ok %d malformed %d fail %d" % (RUNS, counts["ok"], counts["malformed"], counts["fail"]))
