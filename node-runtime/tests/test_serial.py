# SerialPacker framing and the reliable layer, on MicroPython:
#   micropython node-runtime/tests/test_serial.py [vectors-dir]
import sys
import json
import binascii
import random
from serpack import Frames, crc16
from reliable import Reliable
from msgpack import packb, unpackb

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


with open(vdir() + "/frames.json") as f:
    fv = json.load(f)

check(crc16(fv["crc16_check"]["input_ascii"].encode()) == int(fv["crc16_check"]["crc"], 16), "crc16 check value")

for v in fv["frames"]:
    fr = Frames(v["max_packet"], int(v["start"], 16))
    payload = binascii.unhexlify(v["payload_hex"])
    want = binascii.unhexlify(v["frame_hex"])
    out = bytearray(len(payload) + 5)
    n = fr.frame(payload, out)
    check(bytes(out[:n]) == want, "encode " + v["name"])
    got = None
    for b in want:
        p = fr.feed(b, 0)
        if p is not None:
            got = bytes(p)
    check(got == payload, "decode " + v["name"])
    # whole buffers (take): the frame between junk, in every split
    junk = b"\x00\x85\x00" + want + b"zz" + want + b"zz"
    for cut in range(len(junk) + 1):
        fr3 = Frames(v["max_packet"], int(v["start"], 16))
        got = []
        for part in (junk[:cut], junk[cut:]):
            i = 0
            while True:
                i = fr3.take(part, i, len(part), 0)
                if i < 0:
                    break
                got.append(bytes(fr3.payload()))
        check(got == [payload, payload], "take %s split at %d: %r" % (v["name"], cut, got))
    # a flipped bit anywhere loses the frame, never delivers garbage
    for j in range(len(want)):
        bad = bytearray(want)
        bad[j] ^= 0x10
        fr2 = Frames(v["max_packet"], int(v["start"], 16))
        for b in bad:
            p = fr2.feed(b, 0)
            check(p is None or bytes(p) == payload, "corrupt frame delivered " + v["name"])

cm = fv["console_mix"]
con = bytearray()
msgs = []
fr = Frames(127, 0x85, 100, con.append)
for b in binascii.unhexlify(cm["stream_hex"]):
    p = fr.feed(b, 0)
    if p is not None:
        msgs.append(bytes(p))
check(bytes(con) == cm["console_ascii"].encode(), "console bytes %r" % con)
check([binascii.hexlify(m).decode() for m in msgs] == cm["messages_hex"], "console mix messages")

# idle: silence inside a frame resets the parser
fr = Frames(127)
fr.feed(0x85, 0)
fr.feed(4, 0)
fr.feed(0x81, 500)  # 500 ms later: start over, this byte is console
check(fr.st == 0, "idle reset")

# reliable vectors parse as frames
with open(vdir() + "/reliable.json") as f:
    for v in json.load(f):
        check(isinstance(unpackb(binascii.unhexlify(v["hex"])), dict), "reliable vector " + v["name"])


class Ev:
    def __init__(self):
        self.got = []
        self.ups = 0
        self.downs = []

    def on_up(self):
        self.ups += 1

    def on_msg(self, d):
        self.got.append(d)

    def on_reset(self):
        pass

    def on_down(self, why):
        self.downs.append(why)


def run(loss, dup, n=60, seed=1):
    # two machines over a channel that drops and duplicates frames
    random.seed(seed)
    ea, eb = Ev(), Ev()
    a = Reliable(ea, 200, 8, 20)
    b = Reliable(eb, 300, 16, 20)
    now = 0
    a.connect(now)
    sent = 0
    for step in range(20000):
        for src, dst in ((a, b), (b, a)):
            while src.out:
                f = src.out.pop(0)
                if random.getrandbits(8) < loss:
                    continue
                k = 2 if random.getrandbits(8) < dup else 1
                for _ in range(k):
                    dst.on_frame(unpackb(f), now)
        if a.up() and sent < n and a.busy() < 6:
            a.send(packb({"k": sent}), now)
            sent += 1
        if len(eb.got) == n and not a.busy():
            break
        now += 10
        a.tick(now)
        b.tick(now)
    return ea, eb, a, b


ea, eb, a, b = run(0, 0)
check(eb.got == [{"k": k} for k in range(60)], "lossless delivery")
check(a.w == 8 and b.w == 8 and a.t == 300 and b.t == 300, "agreed min window, max timeout")
for seed in (1, 2, 3):
    ea, eb, a, b = run(60, 30, seed=seed)
    check(a.retx > 0, "lossy run retransmitted")
    check(eb.got == [{"k": k} for k in range(60)], "lossy delivery seed %d: %d msgs, downs %r" % (seed, len(eb.got), ea.downs + eb.downs))

# an answer sent from on_msg (a plain command answered inline) carries the
# ack: no bare ack follows it; a message not answered at once is acked
class Echo(Ev):
    def __init__(self):
        super().__init__()
        self.r = None

    def on_msg(self, d):
        super().on_msg(d)
        if d.get("echo"):
            self.r.send(packb(d), 0)


def pair():
    ea, eb = Ev(), Echo()
    a = Reliable(ea, 200, 8, 20)
    b = Reliable(eb, 200, 8, 20)
    eb.r = b
    a.connect(0)
    for _ in range(10):
        for src, dst in ((a, b), (b, a)):
            while src.out:
                dst.on_frame(unpackb(src.out.pop(0)), 0)
    return ea, eb, a, b


ea, eb, a, b = pair()
check(a.up() and b.up(), "pair up")
for echo, want in ((True, [True]), (False, [False])):
    a.send(packb({"echo": echo}), 0)
    b.on_frame(unpackb(a.out.pop(0)), 0)
    frames = [unpackb(f) for f in b.out]
    b.out.clear()
    check([("d" in f) for f in frames] == want, "echo %s: frames %r" % (echo, frames))
    check(all(f.get("r") == a.base % a.w or f.get("r") == b.rn % b.w for f in frames), "acked %r" % (frames,))
    for f in frames:
        a.on_frame(f, 0)
    a.out.clear()
check(not a.busy() and len(ea.got) == 1, "a's message acked, the echo delivered")

# a peer that never answers: down after the retries
e = Ev()
r = Reliable(e, 100, 8, 3)
now = 0
r.connect(now)
for _ in range(100):
    now += 50
    r.tick(now)
check(len(e.downs) == 1 and not r.up(), "down after unanswered resets")


# --- reset handshake with connection ids (docs/reliable.md)


def pump(*pairs):
    # hands frames along until nobody has any; pairs: (src, dst, strip ids)
    moved = True
    while moved:
        moved = False
        for src, dst, strip in pairs:
            while src.out:
                f = unpackb(src.out.pop(0))
                if strip:
                    f.pop("i", None)
                    f.pop("p", None)
                dst.on_frame(f, 0)
                moved = True


def handshake(host, node, now=0, keep=None, strip=False):
    host.connect(now)
    while host.out or node.out:
        while host.out:
            b = host.out.pop(0)
            if keep is not None:
                keep.append(b)
            f = unpackb(b)
            if strip:
                f.pop("i", None)
                f.pop("p", None)
            node.on_frame(f, now)
        pump((node, host, strip))


class Ev2(Ev):
    def __init__(self):
        super().__init__()
        self.resets = 0

    def on_reset(self):
        self.resets += 1


en = Ev2()
node = Reliable(en)
h1 = Reliable(Ev())
old = []
handshake(h1, node, keep=old)
check(node.up() and h1.up() and en.ups == 1, "ids: first session up")
check(h1.id != node.id and node.pid == h1.id and h1.pid == node.id, "ids: each side knows the other's")
# the host ends without its closing frame arriving; a new one starts at once
h1.close("the host closed the link")
old += h1.out
h1.out.clear()
h2 = Reliable(Ev())
handshake(h2, node, now=1)
check(h2.up() and node.up() and en.ups == 2 and en.resets == 1, "ids: a new peer right after the last one is up at once")
# session 1's request, ack2 and closing frame replayed late
for b in old:
    node.on_frame(unpackb(b), 2)
check(node.up() and en.resets == 1 and not en.downs and not node.out, "ids: replayed old reset frames change nothing")
h2.send(packb({"k": 1}), 3)
pump((h2, node, False), (node, h2, False))
check(en.got[-1:] == [{"k": 1}], "ids: the new session carries messages")
# the current peer's request again, however late: an echo
node.on_frame({"a": "r", "n": 1, "c": {"t": 1000, "m": 8}, "i": h2.id}, 100000)
check(node.up() and en.resets == 1 and not node.out, "ids: an echo of the current request is ignored")
# a closing frame delivered, then a new peer at once
h2.close("bye")
pump((h2, node, False))
check(not node.up() and len(en.downs) == 1, "ids: closing frame obeyed")
h3 = Reliable(Ev())
handshake(h3, node, now=4)
check(h3.up() and node.up(), "ids: a new peer right after a closing frame is up at once")
# a peer from before connection ids (frames stripped both ways)
h4 = Reliable(Ev())
handshake(h4, node, now=5, strip=True)
check(h4.up() and node.up() and node.pid is None, "ids: a peer without ids comes up")
h4.send(packb({"k": 2}), 6)
pump((h4, node, True), (node, h4, True))
check(en.got[-1:] == [{"k": 2}], "ids: messages with a peer without ids")
h4.close("bye")
pump((h4, node, True))
check(not node.up(), "ids: a closing frame without an id is obeyed")
# ids differ between machines (urandom, or ticks and the peer's id)
check(len(set(Reliable(Ev()).id for _ in range(8))) == 8, "ids: random")

if fails:
    print("FAILED test_serial:", len(fails))
    sys.exit(1)
print("OK test_serial")
