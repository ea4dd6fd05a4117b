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

# a peer that never answers: down after the retries
e = Ev()
r = Reliable(e, 100, 8, 3)
now = 0
r.connect(now)
for _ in range(100):
    now += 50
    r.tick(now)
check(len(e.downs) == 1 and not r.up(), "down after unanswered resets")

if fails:
    print("FAILED test_serial:", len(fails))
    sys.exit(1)
print("OK test_serial")
