# moat node runtime: authenticated links (../docs/auth.md, normative).
#
# A mutual challenge-response with the node key K (HMAC-SHA256), then every
# message sealed as {s: bin(c | T16 | B)} (stdio, tcp) or bin(c | T8 | B)
# (uart: every byte costs the wire's time): B the message's MsgPack bytes,
# T the first bytes of HMAC(KS, D | C | B), C a 4-byte per-direction
# counter of which c is the low byte (the receiver takes the first counter
# above the last accepted one with that low byte). An encrypted link (`e`
# true) sends X = B XORed with the keystream HMAC(KE, D | C | J) (J = 0,
# 1, ... per 32 bytes) instead of B, T over X, under the key x on stdio and
# tcp, and D lowercase. hashlib's SHA-256 is on every port; cryptolib (AES)
# is not.
#
# Imported only when a link has `a` true. Heap: MicroPython's hashlib has no
# `hmac` and its sha256 objects no copy(), so what can be precomputed is the
# two padded key blocks (K ^ ipad, K ^ opad) per key; a link's session key
# blocks are allocated once with the link and overwritten by each handshake.
# Sealing writes header, counter and tag in front of the body in the link's
# own encode buffer (proto.Link leaves Conf.o bytes free there): no copy of
# the message. A MAC costs two sha256 objects and two 32-byte digests of
# garbage, nothing in proportion to the message.
from micropython import const
import hashlib
import struct
from msgpack import Packer, Proxy, Decoder
import err

try:
    import _moat as _N  # the native module (node-runtime/native): hmac2, stream
except ImportError:
    _N = None

try:
    from os import urandom
except ImportError:  # qemu-mps2: no random source in the port (see _nonce)
    urandom = None

_SO = const(25)  # most bytes the stream form adds to a body: 81 a1 73 c6 LLLL c T16
_FO = const(14)  # most bytes the frame form (uart) adds: c6 LLLL c T8

# the handshake's states (Guard.st)
_HELLO = const(0)  # responder: waits for {h: 1}
_PROOF = const(1)  # responder: waits for {h: 3}
_CHAL = const(2)  # initiator: waits for {h: 2}
_OK = const(3)  # authenticated: sealed messages only
_FAILED = const(4)  # told _AuErr: ignores all (a link that cannot close: until a new h: 1)

# over the whole run (sys.info au): [accepted, dropped, failed handshakes]
N = [0, 0, 0]

_LR = b"moat/1 R"
_LI = b"moat/1 I"
_LS = b"moat/1 S"
_LE = b"moat/1 E"
_DI = const(0x49)  # direction bytes D: I, R (i, r when encrypted)
_DR = const(0x52)
_ZERO = b"\x00"
_AUERR = Proxy("_AuErr")


class Key:
    # HMAC-SHA256 with one key: its two padded blocks, made once
    def __init__(self, k=None):
        self.i = bytearray(64)
        self.o = bytearray(64)
        self.st = bytearray(64) if _N else None  # native: the two midstates
        if k is not None:
            self.set(k)

    def set(self, k):
        # k: at most 64 bytes (node keys are 32), zero-padded as HMAC does
        i = self.i
        o = self.o
        n = len(k)
        for j in range(64):
            x = k[j] if j < n else 0
            i[j] = x ^ 0x36
            o[j] = x ^ 0x5C
        if self.st is not None:
            _N.hmac_key(self.st, i, o)

    def mac(self, a, b, c, d=b"", e=b"", f=b""):
        # HMAC(key, a | b | c | d | e | f) -> 32 bytes (fixed arity: no tuple)
        h = hashlib.sha256(self.i)
        h.update(a)
        h.update(b)
        h.update(c)
        if d:
            h.update(d)
            h.update(e)
            h.update(f)
        t = h.digest()
        h = hashlib.sha256(self.o)
        h.update(t)
        return h.digest()

    def mac2(self, a, b):
        # HMAC(key, a | b): the per-message one, as few calls as it takes
        if self.st is not None:
            return _N.hmac2(self.st, a, b)  # from the midstates, in C
        h = hashlib.sha256(self.i)
        h.update(a)
        h.update(b)
        t = h.digest()
        h = hashlib.sha256(self.o)
        h.update(t)
        return h.digest()


def same(a, b, n):
    # constant-time comparison of a[0:n] and b[0:n]: the time does not say
    # how many leading bytes of a guessed tag matched
    x = 0
    for j in range(n):
        x |= a[j] ^ b[j]
    return x == 0


def _same_tag(t, s, n):
    # same(t, s[1:1+n], n) for a tag of 16 or 8 bytes, in words (fewer
    # bytecodes: a MAC per message)
    if n == 16:
        a, b, c, d = struct.unpack_from(">IIII", t, 0)
        e, f, g, h = struct.unpack_from(">IIII", s, 1)
        return (a ^ e) | (b ^ f) | (c ^ g) | (d ^ h) == 0
    a, b = struct.unpack_from(">II", t, 0)
    e, f = struct.unpack_from(">II", s, 1)
    return (a ^ e) | (b ^ f) == 0


_pool = None


def _nonce():
    # 16 random bytes. Without os.urandom (qemu-mps2) a running SHA-256 pool
    # stirred with the clock's jitter and heap state: unpredictable enough
    # for an emulator, not for a device (every board we flash has urandom).
    if urandom is not None:
        return urandom(16)
    global _pool
    import gc
    from time import ticks_us, ticks_cpu

    h = hashlib.sha256(_pool or b"moat nonce")
    h.update(str((ticks_us(), ticks_cpu(), gc.mem_free(), id(h))))
    _pool = h.digest()
    h = hashlib.sha256(_pool)
    h.update(b"n")
    return h.digest()[:16]


def _map(kv):
    # an unsealed handshake map, keys in the order given -> bytes. Its own
    # small packer, not the link's: a reply may be half out of that one
    pk = Packer(160, 512)
    n = len(kv) // 2
    pk._b1(0x80 | n)
    for j in range(n):
        pk.pack(kv[2 * j])
        pk.pack(kv[2 * j + 1], 1)
    return bytes(pk.out())


def _bin(m, k, n):
    v = m.get(k)
    return v if isinstance(v, (bytes, bytearray)) and len(v) == n else None


class Conf:
    # the node's key and identity for one link, whether it encrypts, and
    # the link's form of sealed messages (fr: a bare bin with an 8-byte tag
    # on uart; else a map with a 16-byte tag)
    def __init__(self, k, n, p, q, e=False, fr=False):
        self.fr = fr
        self.t = 8 if fr else 16  # tag bytes
        self.o = _FO if fr else _SO  # room the link's packer leaves for the seal
        self.key = Key(k)
        self.n = n
        self.p = p
        self.q = q  # the project's name: informative (not in TR)
        self.nb = n.encode()
        self.pb = p.encode()
        self.e = e  # the link's `e`: a responder encrypts, an initiator insists

    def guard(self, link, initiator=False, peer=""):
        return Guard(self, link, initiator, peer)


def conf(cfg, kind, e=False):
    # -> the Conf for a link with `a` true (`e`: it encrypts), or None: then
    # the console has said why and the link does not start
    a = cfg.get("auth")
    k = a.get("k") if isinstance(a, dict) else None
    if not isinstance(k, (bytes, bytearray)) or not 16 <= len(k) <= 64:
        err.log("link %s: auth on and no auth.k in moat.cfg: run moat cfg upload" % kind)
        return None
    return Conf(k, _str(a, "n"), _str(a, "p"), _str(a, "q"), bool(e), kind == "uart")


def _str(a, k):
    v = a.get(k)
    return v if isinstance(v, str) else ""


class Guard:
    # The auth state of one link (proto.Link.au): handshake, then seal/open.
    # The link calls rx(m) with every decoded message and processes only
    # what it returns; it seals what it sends with seal(pk).
    def __init__(self, cf, link, initiator, peer):
        self.cf = cf
        self.l = link
        self.peer = peer  # who is on the other end, for the console
        self.ini = initiator
        self.st = _CHAL if initiator else _HELLO
        self.ni = None
        self.nr = None
        self.ks = Key()  # session key blocks, filled by the handshake
        self.ke = None  # encryption key blocks (encrypted session), made once
        self.enc = False  # whether this session encrypts
        self.jb = None  # J of the keystream, 4 bytes, made once
        self.tx = 0  # last counter sent
        self.rc = 0  # last counter accepted
        self.din = _DR if initiator else _DI  # D of what we receive (plain)
        self.dout = _DI if initiator else _DR  # and of what we send
        self.ds = self.dout  # D sent in this session
        self.pm = None  # the last sealed message opened, and its content:
        self.pv = None  # the link may hand it to rx() again (no heap at first)
        self.ci = bytearray(5)  # D | C of a received message, for its MAC
        self.ci[0] = self.din  # (_session sets D for its kind of session)
        self.bb = None  # the encode buffer, and a view of it made once
        self.mv = None
        self.dec = None  # a Decoder for the bodies, made once

    def ok(self):
        return self.st == _OK

    # --- handshake
    def hello(self):
        # initiator: step 1 -> the bytes to send
        self.ni = _nonce()
        return _map(("h", 1, "c", self.ni))

    def _session(self, enc):
        self.ks.set(self.cf.key.mac(_LS, self.ni, self.nr))
        self.enc = enc
        # D: lowercase in an encrypted session (a plain seal never opens in
        # one, nor the other way round)
        lc = 0x20 if enc else 0
        self.ci[0] = self.din | lc
        self.ds = self.dout | lc
        if enc:
            if self.ke is None:
                self.ke = Key()
                self.jb = bytearray(4)
            self.ke.set(self.cf.key.mac(_LE, self.ni, self.nr))
        self.tx = 0
        self.rc = 0
        self.st = _OK

    def rx(self, m):
        # -> the message to process, or None (handshake, dropped, ignored)
        st = self.st
        if st == _OK:
            if m is self.pm:
                return self.pv
            s = None  # the sealed bytes, in the link's form
            if self.cf.fr:
                if isinstance(m, (bytes, bytearray)):
                    s = m
            elif isinstance(m, dict) and len(m) == 1:
                s = m.get("x" if self.enc else "s")  # the other kind is dropped
            if s is not None:
                v = self._open(s)
                if v is not None:
                    self.pm = m
                    self.pv = v
                    return v
                N[1] += 1
                return None
            if isinstance(m, dict):
                if not self.l.SHUT and m.get("h") == 1 and not self.ini:
                    # a link that cannot close (stdio, uart): its host came
                    # back (a new mux on the same port) and starts over
                    self.st = _HELLO
                    self.l.lost()
                    return self.rx(m)
            elif self.l.CON:
                return None  # a console byte
            N[1] += 1  # unsealed, not even a message: dropped
            return None
        if not isinstance(m, dict):
            if not self.l.CON:
                self._fail("junk before the auth handshake")
            return None
        h = m.get("h")
        if st == _FAILED:
            if h == 1 and not self.l.SHUT and not self.ini:
                self.st = _HELLO
                return self.rx(m)
            return None
        if st == _HELLO and h == 1 and len(m) == 2:
            ni = _bin(m, "c", 16)
            if ni is not None:
                self.ni = ni
                self.nr = nr = _nonce()
                cf = self.cf
                t = cf.key.mac(_LR, ni, nr, cf.nb, _ZERO, cf.pb)
                kv = ("h", 2, "c", nr, "n", cf.n, "p", cf.p, "q", cf.q, "m", self.l.m, "t", t)
                if cf.e:
                    kv += ("e", True)
                # hs() first: a MemoryError there leaves the state as it was
                self.l.hs(_map(kv), None)
                self.st = _PROOF
                return None
        elif st == _PROOF and h == 3 and len(m) == 2:
            t = _bin(m, "t", 32)
            if t is not None:
                if same(t, self.cf.key.mac(_LI, self.nr, self.ni), 32):
                    self.l.hs(None, True)  # its task runs after the session is set
                    self._session(self.cf.e)
                else:
                    self._fail("wrong key")
                return None
        elif st == _CHAL and h == 2:
            self._challenge(m)
            return None
        if "a" in m:
            why = "request before authentication"
        elif h == 1 and st == _PROOF:
            why = "second h: 1"
        else:
            why = "expected auth handshake step %d" % (3 if st == _PROOF else 1)
        self._fail(why)
        return None

    def _challenge(self, m):
        # initiator: step 2 -> step 3, or close
        nr = _bin(m, "c", 16)
        t = _bin(m, "t", 32)
        n = m.get("n")
        p = m.get("p")
        if nr is None or t is None or not isinstance(n, str) or not isinstance(p, str):
            self._fail("malformed auth handshake step 2")
            return
        cf = self.cf
        # identity first (docs/auth.md step 3): a node of another project is
        # refused even when it shares our key. Which node we meant to reach
        # a node's client link does not say: the project must match.
        if cf.p and p != cf.p:
            q = m.get("q")
            q = "project %r (id %s)" % (q, p) if isinstance(q, str) and q else "project id %s" % p
            self._fail("answers node %r of %s, not this project %r (id %s)" % (n, q, cf.q, cf.p))
            return
        if not same(t, cf.key.mac(_LR, self.ni, nr, n.encode(), _ZERO, p.encode()), 32):
            self._fail("node %r rejected: wrong key" % n)
            return
        enc = m.get("e") is True  # the responder decides; we may insist
        if cf.e and not enc:
            self._fail("node %r does not encrypt this link (e): run moat cfg upload on it" % n)
            return
        mm = m.get("m")
        if isinstance(mm, int) and 0 < mm < self.l.m:
            self.l.pk.lim = mm + cf.o  # never send more than the peer takes
        self.nr = nr
        b = _map(("h", 3, "t", cf.key.mac(_LI, nr, self.ni)))
        self.l.hs(b, True)
        self._session(enc)

    def late(self):
        # the handshake did not finish in time: count it, say it, no message
        # (the link closes)
        if self.st == _OK or self.st == _FAILED:
            return
        self.st = _FAILED
        N[2] += 1
        if self.ini:
            why = "no answer to the auth handshake: its firmware predates authenticated links (reflash it) or auth is off on it"
        else:
            why = "no auth handshake in time"
        try:
            err.log("auth: %s %s failed: %s" % (self.l.name, self.peer, why))
        except MemoryError:
            pass

    def restart(self):
        # the link starts over (uart: the reliable layer was reset)
        self.st = _CHAL if self.ini else _HELLO
        self.done()

    def _fail(self, why):
        # once per link: count, say who and why (no key material), tell the
        # peer (a responder) and close
        self.st = _FAILED
        N[2] += 1
        try:
            err.log("auth: %s %s failed: %s" % (self.l.name, self.peer, why))
        except MemoryError:
            pass
        b = None
        if not self.ini:
            try:
                b = _map(("e", _AUERR, "d", [why]))
            except MemoryError:
                pass
        self.l.hs(b, False)

    # --- sealed messages
    def seal(self, pk):
        # The body is in pk.b[o:pk.n] (proto.Link encodes it there, o the
        # Conf's room): put the header, counter and tag in front -> the
        # whole sealed message
        b = pk.b
        n = pk.n
        cf = self.cf
        o = cf.o
        tl = cf.t
        q = o - tl - 1  # where the counter byte goes
        k = n - q  # length of the bin: c | T | B
        c = self.tx + 1
        if c > 0xFFFFFFFF:
            raise err.LinkDown("auth counter exhausted")  # a new connection starts afresh
        if self.bb is not b:
            self.bb = b
            self.mv = memoryview(b)
        mv = self.mv
        # D | C in one piece for the MAC, where the headers go later
        dc = mv[q - 5 : q]
        struct.pack_into(">BI", b, q - 5, self.ds, c)
        if self.enc:  # encrypt-then-MAC, in place
            self._xor(b, o, n, dc)
        t = self.ks.mac2(dc, mv[o:n])
        mv[q + 1 : o] = memoryview(t)[0:tl]
        self.tx = c  # only now: a MemoryError above used no counter
        b[q] = c & 0xFF
        # the headers last (they overwrote D | C)
        if k < 0x100:
            s = q - 2
            b[s] = 0xC4
            b[s + 1] = k
        elif k < 0x10000:
            s = q - 3
            b[s] = 0xC5
            struct.pack_into(">H", b, s + 1, k)
        else:
            s = q - 5
            b[s] = 0xC6
            struct.pack_into(">I", b, s + 1, k)
        if not cf.fr:
            s -= 3
            b[s] = 0x81
            b[s + 1] = 0xA1
            b[s + 2] = 0x78 if self.enc else 0x73  # x or s
        return mv[s:n]

    def _xor(self, b, o, n, dc):
        # b[o:n] ^= the keystream of the message D | C (dc): one HMAC per 32
        # bytes, XORed in place (no copy of the message)
        ke = self.ke
        if ke.st is not None:
            _N.stream(ke.st, dc, b, o, n)  # the whole message in C
            return
        jb = self.jb
        j = 0
        while o < n:
            struct.pack_into(">I", jb, 0, j)
            k = ke.mac2(dc, jb)
            e = o + 32
            if e > n:
                e = n
            for i in range(o, e):
                b[i] ^= k[i - o]
            o = e
            j += 1

    def _open(self, s):
        # s: c | T | B -> the message B holds, or None (drop it)
        tl = self.cf.t
        h = tl + 1
        if not isinstance(s, (bytes, bytearray)) or len(s) < h:
            return None
        # the first counter above the last accepted one with low byte s[0]:
        # a replayed or reordered message gets one its tag was not made for
        c = self.rc + ((s[0] - self.rc) & 0xFF or 256)
        if c > 0xFFFFFFFF:
            return None
        ci = self.ci
        struct.pack_into(">I", ci, 1, c)
        mv = memoryview(s)
        if not _same_tag(self.ks.mac2(ci, mv[h:]), s, tl):
            return None
        if self.enc:  # authentic: decrypt a copy (s is immutable)
            s = bytearray(s)
            self._xor(s, h, len(s), ci)
            mv = memoryview(s)
        # the body, decoded in place (unpackb would copy nothing either, but
        # makes a Decoder each time)
        d = self.dec
        e = len(s)
        if d is None:
            d = self.dec = Decoder(s, h, e, self.l.rm)
        d.b = s
        d.m = mv
        d.p = h
        d.e = e
        try:
            v = d.val()
            if d.p != e:
                return None  # trailing bytes
        except MemoryError:
            raise  # nothing committed: the link tries again
        except Exception:  # authentic but not one MsgPack value: the peer's bug
            return None
        finally:
            d.b = d.m = None  # do not keep the message alive
        self.rc = c
        N[0] += 1
        return v

    def done(self):
        # the link is through with the last opened message
        self.pm = self.pv = None

    def inner(self, m):
        # the opened content of sealed message m, if it was the last one
        return self.pv if m is self.pm else None
