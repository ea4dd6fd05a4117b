# Ping decode/encode time per call inside a unix-port firmware, native (_moat)
# and pure Python in the same run:
#   MICROPYPATH=.frozen FIRMWARE bench/codec_node_target.py
import time, gc, msgpack
from msgpack import Packer, Decoder, NONE
ping = bytes(Packer().msg(a=["ping"], d={"m": 12345}, i=2))
pk = Packer(256)
def run(tag):
    d = Decoder(ping, 0, len(ping), 1024)
    N = 2000
    t = time.ticks_us()
    for _ in range(N):
        d.p = 0
        d.val()
    dec = time.ticks_diff(time.ticks_us(), t) / N
    t = time.ticks_us()
    for _ in range(N):
        pk.msg(NONE, {"m": 12345}, 3)
    enc = time.ticks_diff(time.ticks_us(), t) / N
    print("%-7s ping %d B: decode %.1f us, encode reply %.1f us" % (tag, len(ping), dec, enc))
if msgpack._N:
    run("native")
n = msgpack._N
msgpack._N = None
run("python")
