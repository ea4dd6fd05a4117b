# moat node runtime: MsgPack, sized for small heaps.
#
# Encoding goes into one reusable bytearray (Packer); decoding reads from a
# buffer the caller owns (Unpacker for streams, unpackb for whole values).
# Lengths are checked against the buffer before anything is allocated, and
# nesting is bounded, so a malformed or hostile length never kills the node.
# The encoder and decoder run in C when the firmware has the native module
# (_moat, node-runtime/native: same semantics and limits); the Python below
# is the fallback for a firmware built without it (node-runtime/README.md).
from micropython import const
import struct

try:
    import _moat as _N
except ImportError:
    _N = None

_DEPTH = const(16)  # maximum nesting of arrays/maps


class Proxy:
    # ext type 4: a named stand-in for an object that cannot travel.
    def __init__(self, name):
        self.name = name

    def __eq__(self, o):
        return isinstance(o, Proxy) and o.name == self.name

    def __ne__(self, o):
        return not self.__eq__(o)

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return "Proxy(%r)" % (self.name,)


NoData = Proxy("-")
_BIN = (bytes, bytearray, memoryview)
# one-letter strings used as protocol keys, shared instead of allocated
_ONE = {0x61: "a", 0x64: "d", 0x69: "i", 0x65: "e", 0x72: "r", 0x6E: "n", 0x78: "x",
        0x73: "s", 0x6D: "m", 0x70: "p", 0x66: "f", 0x6F: "o", 0x63: "c", 0x74: "t"}
_SEQ = (list, tuple)  # "no data": writing it to a config key deletes the key


class Ext:
    # Any other extension type, passed through opaque.
    def __init__(self, code, data):
        self.code = code
        self.data = data

    def __eq__(self, o):
        return isinstance(o, Ext) and o.code == self.code and o.data == self.data

    def __ne__(self, o):
        return not self.__eq__(o)

    def __hash__(self):
        return hash(self.data)

    def __repr__(self):
        return "Ext(%d,%r)" % (self.code, self.data)


class Malformed(ValueError):
    pass


class TooLong(Malformed):
    # a length or count beyond the buffer: valid MsgPack, too big to take
    pass


class _Incomplete(Exception):
    pass


_INC = _Incomplete()
NONE = object()  # Unpacker.next(): no complete value buffered yet
BIG = object()  # Unpacker.next(): a message too long for the buffer was skipped
if _N:
    _N.init(Proxy, Ext, Malformed, TooLong, _INC, NONE)
# Headers 0xc4..0xdf for skipping by declared lengths: what the bytes after
# the lead byte are (_HK: 0 a fixed-size value, 1 a payload length, 2 an
# ext length (+1 type byte), 3 an array count, 4 a map count) and how many
# there are (_HW: the value's size, or the length field's width).
_HK = b"\x01\x01\x01\x02\x02\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x01\x01\x03\x03\x04\x04"
_HW = b"\x01\x02\x04\x01\x02\x04\x04\x08\x01\x02\x04\x08\x01\x02\x04\x08\x02\x03\x05\x09\x11\x01\x02\x04\x02\x04\x02\x04"


class Packer:
    # Encodes into self.b[:self.n]; grows up to `limit` bytes, never beyond.
    def __init__(self, size=256, limit=16384, proxy=None):
        self.b = bytearray(size)
        self.n = 0
        self.lim = limit
        self.px = proxy  # callable(obj) -> proxy name, for unencodable objects
        # where msg() starts: an authenticated link leaves room in front for
        # the sealed map's header, counter and tag (auth.Guard.seal)
        self.o = 0

    def out(self):
        # The encoded bytes (a view: copy it if you keep it past the next pack).
        return memoryview(self.b)[: self.n]

    def _room(self, k):
        n = self.n + k
        b = self.b
        if n > len(b):
            if n > self.lim:
                raise ValueError("message too big")
            s = len(b) * 2
            while s < n:
                s *= 2
            nb = bytearray(min(s, self.lim))
            nb[: self.n] = memoryview(b)[: self.n]
            self.b = nb

    def _hdr(self, code, v, w):
        # code byte, then v big-endian in w bytes
        self._room(w + 1)
        b = self.b
        n = self.n
        b[n] = code
        self.n = n + 1 + w
        while w:
            b[n + w] = v & 0xFF
            v >>= 8
            w -= 1

    def _b1(self, c):
        self._room(1)
        self.b[self.n] = c
        self.n += 1

    def _raw(self, data):
        k = len(data)
        self._room(k)
        n = self.n
        b = self.b
        if k <= 16:  # a slice would allocate
            for j in range(k):
                b[n + j] = data[j]
        else:
            b[n : n + k] = data
        self.n = n + k

    def _len(self, k, fix, lim, c8, c16, c32):
        if k < lim:
            self._b1(fix | k)
        elif c8 and k < 0x100:
            self._hdr(c8, k, 1)
        elif k < 0x10000:
            self._hdr(c16, k, 2)
        else:
            self._hdr(c32, k, 4)

    def pack(self, x, depth=0):
        if _N:
            while True:  # -n: the end it needs; grow (up to lim) and again
                n = _N.pack(self.b, self.n, x, depth, self.px)
                if n >= 0:
                    self.n = n
                    return
                self._room(-n - self.n)
        if depth > _DEPTH:
            raise ValueError("too deep")
        if x is None:
            self._b1(0xC0)
        elif x is False:
            self._b1(0xC2)
        elif x is True:
            self._b1(0xC3)
        elif isinstance(x, int):
            self._int(x)
        elif isinstance(x, str):
            m = memoryview(x)
            self._len(len(m), 0xA0, 32, 0xD9, 0xDA, 0xDB)
            self._raw(m)
        elif isinstance(x, _BIN):
            self._len(len(x), 0, 0, 0xC4, 0xC5, 0xC6)
            self._raw(x)
        elif isinstance(x, float):
            self._float(x)
        elif isinstance(x, dict):
            self._len(len(x), 0x80, 16, 0, 0xDE, 0xDF)
            for k in x:
                self.pack(k, depth + 1)
                self.pack(x[k], depth + 1)
        elif isinstance(x, _SEQ):
            self._len(len(x), 0x90, 16, 0, 0xDC, 0xDD)
            for v in x:
                self.pack(v, depth + 1)
        elif isinstance(x, Proxy):
            self._ext(4, memoryview(x.name))
        elif isinstance(x, Ext):
            self._ext(x.code, x.data)
        elif self.px is not None:
            self._ext(4, memoryview(self.px(x)))
        else:
            raise TypeError("cannot encode %s" % type(x).__name__)

    def _int(self, x):
        if x >= 0:
            if x < 0x80:
                self._b1(x)
            elif x < 0x100:
                self._hdr(0xCC, x, 1)
            elif x < 0x10000:
                self._hdr(0xCD, x, 2)
            elif x < 0x100000000:
                self._hdr(0xCE, x, 4)
            elif x < 0x10000000000000000:
                self._hdr(0xCF, x, 8)
            else:
                raise ValueError("int too big")
        elif x >= -32:
            self._b1(x & 0xFF)
        elif x >= -0x80:
            self._hdr(0xD0, x & 0xFF, 1)
        elif x >= -0x8000:
            self._hdr(0xD1, x & 0xFFFF, 2)
        elif x >= -0x80000000:
            self._hdr(0xD2, x & 0xFFFFFFFF, 4)
        elif x >= -0x8000000000000000:
            self._hdr(0xD3, x & 0xFFFFFFFFFFFFFFFF, 8)
        else:
            raise ValueError("int too small")

    def _float(self, x):
        # float32 when that is exact, else float64
        self._room(9)
        b = self.b
        n = self.n
        struct.pack_into(">f", b, n + 1, x)
        if struct.unpack_from(">f", b, n + 1)[0] == x:
            b[n] = 0xCA
            self.n = n + 5
        else:
            b[n] = 0xCB
            struct.pack_into(">d", b, n + 1, x)
            self.n = n + 9

    def _ext(self, code, data):
        k = len(data)
        if k == 1:
            self._b1(0xD4)
        elif k == 2:
            self._b1(0xD5)
        elif k == 4:
            self._b1(0xD6)
        elif k == 8:
            self._b1(0xD7)
        elif k == 16:
            self._b1(0xD8)
        elif k < 0x100:
            self._hdr(0xC7, k, 1)
        elif k < 0x10000:
            self._hdr(0xC8, k, 2)
        else:
            self._hdr(0xC9, k, 4)
        self._b1(code & 0xFF)
        self._raw(data)

    def msg(self, a=NONE, d=NONE, i=NONE, e=NONE, r=NONE, n=NONE):
        # One protocol message, keys in the order a d i e r n; absent = NONE.
        # -> its bytes, b[o:n] (a view)
        o = self.o
        if _N:
            while True:
                k = _N.msg(self.b, o, a, d, i, e, r, n, self.px)
                if k >= 0:
                    self.n = k
                    return memoryview(self.b)[o:k]
                self.n = o
                self._room(-k - o)
        self.n = o + 1
        c = self._kv(0x61, a) + self._kv(0x64, d) + self._kv(0x69, i)
        c += self._kv(0x65, e) + self._kv(0x72, r) + self._kv(0x6E, n)
        self.b[o] = 0x80 | c
        return memoryview(self.b)[o : self.n]

    def _kv(self, k, v):
        if v is NONE:
            return 0
        self._b1(0xA1)
        self._b1(k)
        self.pack(v, 1)
        return 1


class Decoder:
    # Decodes values from b[p:e]; raises _INC when the data ends early and
    # Malformed when it can never be valid (bad byte, length > cap, depth).
    def __init__(self, b, p, e, cap):
        self.b = b
        self.m = memoryview(b)
        self.p = p
        self.e = e
        self.cap = cap

    def _u(self, w):
        p = self.p
        if p + w > self.e:
            raise _INC
        b = self.b
        v = 0
        for j in range(p, p + w):
            v = (v << 8) | b[j]
        self.p = p + w
        return v

    def _take(self, k):
        if k > self.cap:
            raise TooLong("length %d" % k)
        p = self.p
        if p + k > self.e:
            raise _INC
        self.p = p + k
        return self.m[p : p + k]

    def _count(self, k):
        if k > self.cap:
            raise TooLong("count %d" % k)
        return k

    def val(self, depth=0):
        if _N:
            v, self.p = _N.unpack(self.b, self.p, self.e, self.cap, depth)
            return v
        return self._val(depth)

    def _val(self, depth):
        p = self.p
        if p >= self.e:
            raise _INC
        c = self.b[p]
        self.p = p + 1
        if c < 0x80:
            return c
        if c >= 0xE0:
            return c - 0x100
        if c < 0x90:
            return self._map(c & 0x0F, depth)
        if c < 0xA0:
            return self._arr(c & 0x0F, depth)
        if c < 0xC0:
            return self._str(c & 0x1F)
        if c == 0xC0:
            return None
        if c == 0xC2:
            return False
        if c == 0xC3:
            return True
        if c == 0xC1:
            raise Malformed("byte 0xc1")
        if c <= 0xC6:  # bin 8/16/32
            return bytes(self._take(self._u(1 << (c - 0xC4))))
        if c <= 0xC9:  # ext 8/16/32
            k = self._u(1 << (c - 0xC7))
            return self._ext(k)
        if c == 0xCA:
            return struct.unpack(">f", self._take(4))[0]
        if c == 0xCB:
            return struct.unpack(">d", self._take(8))[0]
        if c <= 0xCF:  # uint 8..64
            return self._u(1 << (c - 0xCC))
        if c <= 0xD3:  # int 8..64
            w = 1 << (c - 0xD0)
            v = self._u(w)
            if v >> (w * 8 - 1):
                v -= 1 << (w * 8)
            return v
        if c <= 0xD8:  # fixext 1..16
            return self._ext(1 << (c - 0xD4))
        if c <= 0xDB:  # str 8/16/32
            return self._str(self._u(1 << (c - 0xD9)))
        if c <= 0xDD:  # array 16/32
            return self._arr(self._u(2 if c == 0xDC else 4), depth)
        if c <= 0xDF:  # map 16/32
            return self._map(self._u(2 if c == 0xDE else 4), depth)
        raise Malformed("byte 0x%02x" % c)

    def _str(self, k):
        if k == 1 and self.p < self.e:
            c = _ONE.get(self.b[self.p])
            if c is not None:  # protocol keys: no allocation
                self.p += 1
                return c
        m = self._take(k)
        try:
            return str(m, "utf-8")
        except UnicodeError:
            raise Malformed("utf-8")

    def _ext(self, k):
        p = self.p
        if p >= self.e:
            raise _INC
        code = self.b[p]
        self.p = p + 1
        m = self._take(k)
        if code == 4:
            try:
                return Proxy(str(m, "utf-8"))
            except UnicodeError:
                raise Malformed("proxy name")
        if code > 127:
            code -= 256
        return Ext(code, bytes(m))

    def _arr(self, k, depth):
        if depth >= _DEPTH:
            raise Malformed("too deep")
        if k > 8:
            r = [None] * self._count(k)
            for j in range(k):
                r[j] = self._val(depth + 1)
        else:  # small: appending allocates less than [None] * k
            r = []
            for _ in range(k):
                r.append(self._val(depth + 1))
        return r

    def _map(self, k, depth):
        if depth >= _DEPTH:
            raise Malformed("too deep")
        self._count(k)
        r = {}
        for _ in range(k):
            key = self._val(depth + 1)
            if isinstance(key, (list, dict)):
                raise Malformed("unhashable key")
            r[key] = self._val(depth + 1)
        return r


def size(x, depth=0):
    # encoded size of x, without encoding it (floats counted as float64)
    if depth > _DEPTH:
        raise ValueError("too deep")
    if x is None or x is True or x is False:
        return 1
    if isinstance(x, int):
        if -32 <= x < 0x80:
            return 1
        if -0x80 <= x < 0x100:
            return 2
        if -0x8000 <= x < 0x10000:
            return 3
        if -0x80000000 <= x < 0x100000000:
            return 5
        return 9
    if isinstance(x, float):
        return 9
    if isinstance(x, str):
        k = len(memoryview(x))
        return k + (1 if k < 32 else 2 if k < 0x100 else 3 if k < 0x10000 else 5)
    if isinstance(x, _BIN):
        k = len(x)
        return k + (2 if k < 0x100 else 3 if k < 0x10000 else 5)
    if isinstance(x, dict):
        n = 1 if len(x) < 16 else 3 if len(x) < 0x10000 else 5
        for k in x:
            n += size(k, depth + 1) + size(x[k], depth + 1)
        return n
    if isinstance(x, _SEQ):
        n = 1 if len(x) < 16 else 3 if len(x) < 0x10000 else 5
        for v in x:
            n += size(v, depth + 1)
        return n
    if isinstance(x, Proxy):
        return len(memoryview(x.name)) + 3
    if isinstance(x, Ext):
        return len(x.data) + 6
    return 16  # becomes a proxy


def packb(x, proxy=None):
    p = Packer(64, 1 << 30, proxy)
    p.pack(x)
    return bytes(p.out())


def unpackb(data):
    # Exactly one value; raises Malformed (also for truncated/trailing data).
    d = Decoder(data, 0, len(data), len(data))
    try:
        v = d.val()
    except _Incomplete:
        raise Malformed("truncated")
    if d.p != len(data):
        raise Malformed("trailing data")
    return v


class Unpacker:
    # Stream decoding: read into space(), report with got(n), then call
    # next() until it returns NONE. A malformed byte is counted in .bad and,
    # with resync, skipped (without, next() stops there: the caller closes
    # the stream). A message bigger than the buffer is dropped: with resync
    # with what is buffered, without by its declared lengths (never
    # resynchronising inside it: a message hidden in its payload is not
    # decoded); then next() returns BIG once, and .big is (its bytes, its
    # top-level i or None).
    def __init__(self, size=1024, resync=True):
        self.resync = resync
        self.sk = None  # skipping: items left per nesting level
        self.left = 0  # payload bytes left to skip
        self.big = None
        self.b = bytearray(size)
        self.s = 0  # start of undecoded data
        self.e = 0  # end of data
        self.bad = 0
        self.dec = Decoder(self.b, 0, 0, size)
        self.mv = self.dec.m

    def space(self):
        s = self.s
        if s:
            k = self.e - s
            if k:
                self.b[0:k] = self.mv[s : self.e]
            self.s = 0
            self.e = k
        return self.mv[self.e :]

    def got(self, n):
        self.e += n

    def pending(self):
        return self.e - self.s

    def clear(self):
        self.s = self.e = 0
        self.sk = None
        self.left = 0

    def next(self, keep=False):
        # keep: a MemoryError propagates and leaves the value buffered, to
        # be decoded again once there is heap (otherwise it counts as junk
        # and a byte is skipped: the message is lost)
        if self.bad and not self.resync:
            return NONE  # a strict stream ends at its first malformed byte
        while True:
            if self.sk is not None:
                return BIG if self._skip() else NONE
            s = self.s
            e = self.e
            if s >= e:
                return NONE
            d = self.dec
            d.p = s
            d.e = e
            try:
                v = d.val()
            except _Incomplete:
                if s == 0 and e == len(self.b):
                    # can never fit: drop it
                    if not self.resync:
                        self._skipping()
                        continue
                    self.bad += 1
                    self.s = self.e = 0  # resync on what follows
                return NONE
            except TooLong:
                if not self.resync:
                    self.s = s
                    self._skipping()
                    continue
                self.bad += 1
                self.s = s + 1
                continue
            except Exception as x:  # Malformed, MemoryError, ...: skip a byte
                if keep and isinstance(x, MemoryError):
                    raise
                self.bad += 1
                if not self.resync:
                    return NONE
                self.s = s + 1
                continue
            self.s = d.p
            return v

    def _skipping(self):
        self.sk = [1]  # the message itself
        self.left = 0
        self.big = [0, None, False, False]  # bytes, i, top is a map, key was "i"

    def _skip(self):
        # Walks the message at self.s by its headers, dropping what it
        # passes. -> True when it has ended; False when more input is needed
        # (or it turned out malformed: .bad, and the caller closes).
        b = self.b
        p = self.s
        e = self.e
        sk = self.sk
        bg = self.big
        try:
            while sk or self.left:
                if self.left:
                    k = min(self.left, e - p)
                    p += k
                    self.left -= k
                    if self.left:
                        break
                    continue
                if p >= e:
                    break
                c = b[p]
                hl = 1  # header bytes, fixed-size values included
                k = 0  # items inside
                pl = 0  # payload bytes after the header
                top = len(sk) == 2 and bg[2]  # an entry of the message map
                if c < 0x80 or c >= 0xE0 or 0xC0 <= c <= 0xC3:
                    if c == 0xC1:
                        raise Malformed("byte 0xc1")
                elif c < 0x90:
                    k = 2 * (c & 0x0F)
                elif c < 0xA0:
                    k = c & 0x0F
                elif c < 0xC0:
                    pl = c & 0x1F
                    if top and not sk[1] & 1 and pl == 1:
                        hl = 2  # a one-letter key: is it "i"?
                        pl = 0
                else:
                    kd = _HK[c - 0xC4]
                    w = _HW[c - 0xC4]
                    hl = 1 + w
                    if p + hl > e:
                        break
                    v = 0
                    for j in range(p + 1, p + hl):
                        v = (v << 8) | b[j]
                    if kd == 1:
                        pl = v
                    elif kd == 2:
                        pl = v + 1
                    elif kd == 3:
                        k = v
                    elif kd == 4:
                        k = 2 * v
                    elif top and bg[3] and 0xCC <= c <= 0xCF:
                        bg[1] = v
                if p + hl > e:
                    break
                if top:
                    if sk[1] & 1:  # a value: of key "i"?
                        if bg[3] and c < 0x80:
                            bg[1] = c
                        bg[3] = False
                    else:
                        bg[3] = hl == 2 and b[p + 1] == 0x69
                p += hl
                self.left = pl
                sk[-1] -= 1
                if k:
                    if len(sk) > _DEPTH:
                        raise Malformed("too deep")
                    if len(sk) == 1:
                        bg[2] = 0x80 <= c < 0x90 or c >= 0xDE
                    sk.append(k)
                while sk and not sk[-1]:
                    sk.pop()
        except Malformed:
            self.bad += 1
            self.sk = None
            self.s = p
            return False
        bg[0] += p - self.s
        self.s = p
        if sk or self.left:
            return False
        self.sk = None
        self.big = (bg[0], bg[1])
        return True
