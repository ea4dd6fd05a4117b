# moat node runtime: SerialPacker framing for lossy serial links (§4):
#   START(1) LEN(1 or 2) DATA(LEN) CRC16(2, high byte first)
# LEN is one byte when the maximum is <= 255, else len < 128: [len],
# otherwise [(len & 0x7F) | 0x80, len >> 7]. CRC16: polynomial 0xBAAD
# (reflected), nibble table, initial 0, no final XOR, over DATA only.
from micropython import const
from time import ticks_ms, ticks_diff

_POLY = const(0xBAAD)


def _table():
    t = []
    for n in range(16):
        c = n
        for _ in range(4):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        t.append(c)
    return tuple(t)


_T = _table()


def crc_byte(c, b):
    c = (c >> 4) ^ _T[(c ^ (b >> 4)) & 0xF]
    return (c >> 4) ^ _T[(c ^ b) & 0xF]


def crc16(data):
    c = 0
    for b in data:
        c = crc_byte(c, b)
    return c


class Frames:
    # Byte-at-a-time decoder. feed() returns a memoryview of a complete,
    # CRC-checked payload (valid until the next feed) or None; bytes outside
    # frames go to `console` (a callable) when given.
    def __init__(self, m=127, start=0x85, idle=100, console=None):
        self.m = m
        self.one = m <= 255
        self.start = start
        self.idle = idle
        self.buf = bytearray(m)
        self.mv = memoryview(self.buf)
        self.console = console
        self.st = 0  # 0 start, 1 len, 2 len high, 3 data, 4 crc high, 5 crc low
        self.k = 0
        self.n = 0
        self.c = 0
        self.last = 0
        self.bad = 0  # CRC errors
        self.long = 0  # over-long or zero length

    def feed(self, b, now=None):
        if now is None:
            now = ticks_ms()
        if self.st and ticks_diff(now, self.last) > self.idle:
            self.st = 0  # silence inside a frame: start over
        self.last = now
        st = self.st
        if st == 0:
            if b == self.start:
                self.st = 1
            elif self.console is not None:
                self.console(b)
        elif st == 1:
            if self.one or b < 0x80:
                self._len(b)
            else:
                self.k = b & 0x7F
                self.st = 2
        elif st == 2:
            self._len(self.k | (b << 7))
        elif st == 3:
            self.buf[self.n] = b
            self.n += 1
            self.c = crc_byte(self.c, b)
            if self.n == self.k:
                self.st = 4
        elif st == 4:
            self.h = b
            self.st = 5
        else:
            self.st = 0
            if (self.h << 8 | b) == self.c:
                return self.mv[: self.k]
            self.bad += 1
        return None

    def _len(self, k):
        if k == 0 or k > self.m:
            self.long += 1
            self.st = 0
        else:
            self.k = k
            self.n = 0
            self.c = 0
            self.st = 3

    def frame(self, data, out):
        # the frame for `data`, written into bytearray `out`; returns its length
        k = len(data)
        if k == 0 or k > self.m:
            raise ValueError("frame length", k)
        out[0] = self.start
        if self.one or k < 128:
            out[1] = k
            p = 2
        else:
            out[1] = (k & 0x7F) | 0x80
            out[2] = k >> 7
            p = 3
        out[p : p + k] = data
        c = crc16(data)
        out[p + k] = c >> 8
        out[p + k + 1] = c & 0xFF
        return p + k + 2
