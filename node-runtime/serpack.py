# moat node runtime: SerialPacker framing for lossy serial links (../docs/protocol.md: Framing):
#   START(1) LEN(1 or 2) DATA(LEN) CRC16(2, high byte first)
# LEN is one byte when the maximum is <= 255, else len < 128: [len],
# otherwise [(len & 0x7F) | 0x80, len >> 7]. CRC16: polynomial 0xBAAD
# (reflected), nibble table, initial 0, no final XOR, over DATA only.
# The byte loops run in C when the firmware has the native module (_moat).
from micropython import const
from time import ticks_ms, ticks_diff

try:
    import _moat as _N  # the native module (node-runtime/native), when built in
except ImportError:
    _N = None

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
    if _N:
        return _N.crc16(data)
    c = 0
    for b in data:
        c = crc_byte(c, b)
    return c


# parser state, a list so the native unframe() can keep it too
_ST = const(0)  # 0 start, 1 len, 2 len high, 3 data, 4 crc high, 5 crc low
_K = const(1)  # payload length (in state 2: its low 7 bits)
_N_ = const(2)  # payload bytes so far
_C = const(3)  # their CRC
_H = const(4)  # the CRC's high byte
_BAD = const(5)  # CRC errors
_LONG = const(6)  # over-long or zero lengths
# then the limits: max payload, one-byte length, start byte


class Frames:
    # Decoder over whole buffers: take() finds the frames in data[i:j];
    # feed() does one byte. Bytes outside frames go to `console` (a
    # callable) when given (per byte, in Python).
    def __init__(self, m=127, start=0x85, idle=100, console=None):
        self.m = m
        self.one = m <= 255
        self.start = start
        self.idle = idle
        self.buf = bytearray(m)
        self.mv = memoryview(self.buf)
        self.console = console
        self.s = [0, 0, 0, 0, 0, 0, 0, m, self.one, start]
        self.last = 0

    @property
    def st(self):
        return self.s[_ST]

    @property
    def bad(self):
        return self.s[_BAD]

    @property
    def long(self):
        return self.s[_LONG]

    def payload(self):
        # the last complete frame's payload (valid until the next take/feed)
        return self.mv[: self.s[_K]]

    def _idle(self, now):
        if now is None:
            now = ticks_ms()
        if self.s[_ST] and ticks_diff(now, self.last) > self.idle:
            self.s[_ST] = 0  # silence inside a frame: start over
        self.last = now

    def take(self, data, i, j, now=None):
        # -> the index after the next complete, CRC-checked frame in
        # data[i:j] (its payload: payload()), or -1 when all was taken
        self._idle(now)
        if _N and self.console is None:
            return _N.unframe(self.s, self.buf, data, i, j)
        now = self.last
        while i < j:
            b = data[i]
            i += 1
            if self.feed(b, now) is not None:
                return i
        return -1

    def feed(self, b, now=None):
        # one byte: a memoryview of a complete, CRC-checked payload (valid
        # until the next feed) or None
        self._idle(now)
        s = self.s
        st = s[_ST]
        if st == 0:
            if b == self.start:
                s[_ST] = 1
            elif self.console is not None:
                self.console(b)
        elif st == 1:
            if self.one or b < 0x80:
                self._len(b)
            else:
                s[_K] = b & 0x7F
                s[_ST] = 2
        elif st == 2:
            self._len(s[_K] | (b << 7))
        elif st == 3:
            n = s[_N_]
            self.buf[n] = b
            s[_N_] = n = n + 1
            s[_C] = crc_byte(s[_C], b)
            if n == s[_K]:
                s[_ST] = 4
        elif st == 4:
            s[_H] = b
            s[_ST] = 5
        else:
            s[_ST] = 0
            if (s[_H] << 8 | b) == s[_C]:
                return self.mv[: s[_K]]
            s[_BAD] += 1
        return None

    def _len(self, k):
        s = self.s
        if k == 0 or k > self.m:
            s[_LONG] += 1
            s[_ST] = 0
        else:
            s[_K] = k
            s[_N_] = 0
            s[_C] = 0
            s[_ST] = 3

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
