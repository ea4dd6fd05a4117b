# moat node runtime: the reliable layer for lossy links (../docs/reliable.md), sans I/O.
# Mirrors mux-runtime/src/reliable (same semantics; docs/reliable.md):
# reset handshake {a:"r", n:1|2|3, c:{t,m}, i, p} (n:0 closes, with e and
# p), data/ack frames {s, r, x, d}, sequence numbers modulo the agreed
# window, at most (window-1)/2 in flight, selective repeat, retransmit after
# the timeout, down after `retries` retransmissions. `i` is the sender's
# random connection id, `p` the id it answers: a request with the current
# peer's id (or an earlier one's) is an echo, any other id a new peer,
# answered at once; no rule depends on time.
#
# The owner feeds frames (on_frame(dict, now)) and time (tick(now)), sends
# messages (send(encoded bytes)) and takes frames to transmit from .out
# (encoded payloads). Events go to the listener: on_up(), on_msg(d),
# on_reset(), on_down(reason).
from micropython import const
from time import ticks_diff, ticks_add, ticks_us
from msgpack import Packer

_IDLE = const(0)
_REQ = const(1)
_ACC = const(2)
_UP = const(3)
_DOWN = const(4)

# in-flight entry fields
_MSG = const(0)
_AT = const(1)
_TRIES = const(2)
_SACK = const(3)
_FIRST = const(4)
_LAST = const(5)

_ID = const(0x3FFFFFFF)  # connection ids: 30 bits, a small int everywhere
_OLD = const(4)  # earlier peer ids remembered


def _entropy():
    try:
        from os import urandom

        b = urandom(4)
        return (b[0] << 22) | (b[1] << 14) | (b[2] << 6) | (b[3] >> 2)
    except Exception:  # no urandom on this port (qemu): ticks and the peer's id
        return 0


class Reliable:
    def __init__(self, ev, t=1000, w=8, r=5, m=1024):
        if w < 4 or w > 128 or t < 1:
            raise ValueError("reliable: window 4..128, timeout >= 1 ms")
        self.ev = ev
        self.ct = t
        self.cw = w
        self.retries = r
        self.t = t
        self.w = w
        self.ph = _IDLE
        self.tries = 0
        self.next = 0
        self.rs = (_entropy() ^ ticks_us()) & _ID or 1
        self.id = self._draw(0)  # our connection id
        self.pid = None  # the peer's (None: none yet, or a peer without ids)
        self.pup = False  # the handshake with pid completed
        self.old = []  # the peer's earlier ids
        self.queue = []  # encoded messages waiting for the window
        self.fly = []  # in flight: entry k has sequence number base + k
        self.base = 0
        self.rn = 0  # next sequence number expected from the peer
        self.ahead = {}  # received out of order: abs seq -> message
        self.txc = 0
        self.ackp = False
        self.out = []  # encoded frames to transmit
        self.pk = Packer(m + 32, m + 32)  # all of it now: no growing on a fragmented heap
        self.bad = 0
        self.retx = 0

    def up(self):
        return self.ph == _UP

    def _draw(self, mix):
        # xorshift over 30 bits, stirred with fresh entropy and `mix` (the
        # peer's id: random on a host, so our answer's id is too)
        x = (self.rs ^ mix ^ ticks_us() ^ _entropy()) & _ID or 1
        x ^= (x << 13) & _ID
        x ^= x >> 17
        x ^= (x << 5) & _ID
        self.rs = x
        return x

    # --- frames out
    def _emit(self):
        self.out.append(bytes(self.pk.out()))

    def _reset_frame(self, n):
        pk = self.pk
        pk.n = 0
        f = {"a": "r", "n": n, "c": {"t": self.ct, "m": self.cw}, "i": self.id}
        if n > 1 and self.pid is not None:
            f["p"] = self.pid
        pk.pack(f)
        self._emit()

    def _close_frame(self, why, p):
        pk = self.pk
        pk.n = 0
        f = {"a": "r", "n": 0, "e": why}
        if p is not None:
            f["p"] = p
        pk.pack(f)
        self._emit()

    def _data_frame(self, s, d):
        pk = self.pk
        pk.n = 0
        x = self._x()
        pk._b1(0x80 | (2 + (1 if x else 0) + (1 if d is not None else 0)))
        pk._kv(0x73, s)
        pk._kv(0x72, self.rn % self.w)
        if x:
            pk._kv(0x78, x)
        if d is not None:
            pk._b1(0xA1)
            pk._b1(0x64)
            pk._raw(d)
        self._emit()

    def _x(self):
        if not self.ahead:
            return None
        return [q % self.w for q in sorted(self.ahead)]

    # --- control
    def connect(self, now):
        if self.ph in (_REQ, _ACC):
            return
        if self.ph == _UP:
            self._flush()
            self.ev.on_reset()
            # for a peer without ids, which cannot tell our request from an echo
            self._close_frame("link reset", self.pid)
        self.id = self._draw(0)
        self._reset_frame(1)
        self.ph = _REQ
        self.tries = 1
        self.next = ticks_add(now, self.ct)

    def close(self, why):
        if self.ph != _DOWN:
            self._close_frame(why, self.pid if self.ph in (_ACC, _UP) else None)
            self._down("closed locally: " + why)

    def send(self, msg, now):
        # msg: the encoded message (bytes); False while down
        if self.ph == _DOWN:
            return False
        self.queue.append(msg)
        self._pump(now)
        return True

    def busy(self):
        return len(self.queue) + len(self.fly)

    # --- frames in
    def on_frame(self, f, now):
        if not isinstance(f, dict):
            self.bad += 1
            return
        if "a" in f:
            n = f.get("n")
            i = f.get("i")
            p = f.get("p")
            if f["a"] != "r" or not isinstance(n, int) or not _opt_int(i) or not _opt_int(p):
                self.bad += 1
            elif n == 0:
                # a closing frame for another id of ours is stale
                if self.ph not in (_IDLE, _DOWN) and (p is None or p == self.id):
                    self._down("peer closed the link: %s" % (f.get("e"),))
            elif 1 <= n <= 3 and isinstance(f.get("c"), dict):
                self._on_reset(n, f["c"], i, p, now)
            else:
                self.bad += 1
            return
        s = f.get("s")
        r = f.get("r")
        x = f.get("x", ())
        if not (isinstance(s, int) and isinstance(r, int) and isinstance(x, (list, tuple))):
            self.bad += 1
            return
        if self.ph != _UP:
            return  # an old epoch's data: the peer retransmits it
        w = self.w
        if not (0 <= s < w and 0 <= r < w) or any(not isinstance(q, int) or not 0 <= q < w for q in x):
            self.bad += 1
            return
        self._take_ack(r, x, now)
        if "d" in f:
            # owed before the message is delivered: an answer sent at once
            # (a plain command, inline) carries the ack and clears it, so
            # no bare ack follows
            self.ackp = True
            self._take_msg(s, f["d"])
        self._pump(now)
        if self.ackp:
            self.ackp = False
            self._data_frame((self.base + len(self.fly)) % w, None)

    def _agree(self, c, i):
        # (timeout, window) agreed with the peer's offer c, or None after
        # refusing it with a closing frame to its sender (id i)
        pt = c.get("t")
        pw = c.get("m")
        if not isinstance(pw, int) or pw < 4:
            self.bad += 1
            self._close_frame("reset refused: window %s is below the minimum 4" % (pw,), i)
            return None
        if not isinstance(pt, int) or not 1 <= pt <= 3600000:
            self.bad += 1
            self._close_frame("reset refused: timeout %s ms is outside 1..=3600000" % (pt,), i)
            return None
        return max(pt, self.ct), min(pw, self.cw)

    def _peer(self, i):
        # from the peer of the current handshake (True when ids are missing)
        return i is None or self.pid is None or i == self.pid

    def _adopt(self, i):
        if i != self.pid:
            if self.pid is not None:
                self.old.append(self.pid)
                if len(self.old) > _OLD:
                    self.old.pop(0)
            self.pid = i
            self.pup = False

    def _on_reset(self, n, c, i, p, now):
        ph = self.ph
        if n == 1:
            if ph == _ACC and i == self.pid:
                self._reset_frame(2)  # our ack got lost or is on its way
                return
            if i is not None and (self.pup and i == self.pid or i in self.old):
                return  # an echo of a request answered already
            a = self._agree(c, i)
            if a is None:
                return
            if ph == _UP:  # a new id: the peer restarted
                self._flush()
                self.ev.on_reset()
            if ph != _REQ:  # both requesting at once: keep ours, the peer's ack names it
                self.id = self._draw(i or 0)
            self._adopt(i)
            self._accept(a[0], a[1], now)
            return
        if p is not None and p != self.id:
            return  # answers an earlier request of ours
        if n == 2:
            if ph == _REQ or ph == _ACC and self._peer(i):
                a = self._agree(c, i)
                if a is not None:
                    self._adopt(i)
                    self.t, self.w = a
                    self._reset_frame(3)
                    self._come_up(now)
            elif ph == _UP and self._peer(i):
                self._reset_frame(3)  # our ack2 got lost
        elif ph == _ACC and self._peer(i):
            a = self._agree(c, i)
            if a is not None:
                self.t, self.w = a
                self._come_up(now)

    def _accept(self, t, w, now):
        self.t = t
        self.w = w
        self._reset_frame(2)
        self.ph = _ACC
        self.tries = 1
        self.next = ticks_add(now, t)

    def _come_up(self, now):
        self.base = 0
        self.rn = 0
        self.fly = []
        self.ahead = {}
        self.ackp = False
        self.ph = _UP
        self.pup = True
        self.ev.on_up()
        self._pump(now)

    def _down(self, why):
        self._flush()
        self.ph = _DOWN
        self.ev.on_down(why)

    def _flush(self):
        self.fly = []
        self.queue = []
        self.ahead = {}
        self.ackp = False

    # --- data
    def _take_ack(self, r, x, now):
        w = self.w
        fl = len(self.fly)
        b = self.base
        acked = (r - b) % w
        if acked > fl:
            return
        for q in x:
            k = (q - b) % w
            if not acked < k < fl:
                return  # stale: ignore the whole ack
        del self.fly[:acked]
        self.base = b = b + acked
        top = -1
        for q in x:
            k = (q - b) % w
            self.fly[k][_SACK] = True
            if k > top:
                top = k
        if top >= 0:
            nf = self.fly[top][_FIRST]
            for k in range(top):
                o = self.fly[k]
                if not o[_SACK] and o[_LAST] < nf and o[_TRIES] <= self.retries:
                    self._transmit(k, now)

    def _take_msg(self, s, d):
        w = self.w
        k = (s - self.rn) % w
        if k >= w // 2:
            return  # behind: delivered already, our ack was lost
        if k:
            self.ahead[self.rn + k] = d
            return
        self._deliver(d)
        while self.rn in self.ahead:
            self._deliver(self.ahead.pop(self.rn))

    def _deliver(self, d):
        self.rn += 1
        self.ackp = True  # each message owes an ack, whatever went out before it
        self.ev.on_msg(d)

    def _pump(self, now):
        if self.ph != _UP:
            return
        mx = (self.w - 1) // 2
        while len(self.fly) < mx and self.queue:
            m = self.queue.pop(0)
            self.fly.append([m, now, 0, False, self.txc, self.txc])
            self._transmit(len(self.fly) - 1, now)

    def _transmit(self, k, now):
        o = self.fly[k]
        o[_LAST] = self.txc
        self.txc += 1
        o[_AT] = now
        o[_TRIES] += 1
        self.ackp = False
        self._data_frame((self.base + k) % self.w, o[_MSG])

    def tick(self, now):
        ph = self.ph
        if ph == _REQ or ph == _ACC:
            if ticks_diff(now, self.next) >= 0:
                if self.tries > self.retries:
                    self._down("peer did not answer the reset (is it running?)")
                else:
                    self._reset_frame(1 if ph == _REQ else 2)
                    self.tries += 1
                    self.next = ticks_add(now, self.ct if ph == _REQ else self.t)
        elif ph == _UP:
            for k in range(len(self.fly)):
                o = self.fly[k]
                if o[_SACK] or ticks_diff(now, o[_AT]) < self.t:
                    continue
                if o[_TRIES] > self.retries:
                    why = "no acknowledgement after %d transmissions" % o[_TRIES]
                    self._close_frame(why, self.pid)
                    self._down(why)
                    return
                self.retx += 1
                self._transmit(k, now)


def _opt_int(v):
    return v is None or isinstance(v, int) and v >= 0
