# moat node runtime: the protocol engine of one link (protocol.md §1).
#
# A Link turns decoded messages into tasks and replies. Subclasses provide
# `_write(buf)` (write all of buf; must finish even when the calling task is
# cancelled, so a cancellation never cuts a message in half) and `serve()`.
from micropython import const
import asyncio
from msgpack import Packer, NONE
import err

_MAXSEQ = const(0x7FFFFFFE)
_GEN = type((lambda: (yield))())  # what calling an `async def` returns
_KEYS = "adiernx"
_seen = []  # unknown keys already logged
# f(link) for each link that detaches: apps free what its peer held there
# (fs closes the files it opened); apps add and remove their own
detached = []


async def result(v):
    # await the value of a command call when it is a coroutine
    if type(v) is _GEN:
        v = await v
    return v


def _expected(ex, x):
    # the caller listed this error type in `x`: do not log it
    if not isinstance(x, list):
        return False
    e, _ = err.encode(ex)
    return e in x


class _Call:
    # one of our own open requests
    def __init__(self):
        self.ev = asyncio.Event()
        self.v = None
        self.e = None


class _Feed:
    # a stream's latest value; producer calls it, the request task sends
    def __init__(self):
        self.v = None
        self.n = 0
        self.sent = 0
        self.done = False
        self.e = None
        self.ev = asyncio.Event()

    def __call__(self, v):
        self.v = v
        self.n += 1
        self.ev.set()


class Link:
    def __init__(self, root, name, m=1024):
        self.root = root
        self.name = name
        self.m = m  # message size limit (both directions)
        # the whole encode buffer now, while the heap is young: grown on
        # demand, a big reply later needs m contiguous bytes of a heap that
        # is fragmented by then (a MemoryError instead of the answer)
        self.pk = Packer(m, m, root.proxy)
        self.lock = asyncio.Lock()
        self.peer = {}  # peer's open requests: flipped i -> task
        self.own = {}  # our open requests: i -> _Call
        self.seq = 0
        self.up = False
        self.q = 16  # most requests of the peer running at once

    # --- sending
    def _put(self, buf):
        # write without waiting if the link can: -> bytes written (0: none)
        return 0

    def _enc(self, a, d, i, e, r, n):
        try:
            return self.pk.msg(a, d, i, e, r, n)
        except (ValueError, TypeError, MemoryError) as ex:
            if i is NONE or e is not NONE:
                raise
            ep, ed = err.encode(ex)  # a reply that cannot be sent: say why
            return self.pk.msg(NONE, NONE if ed is None else ed, i, ep)

    async def send(self, a=NONE, d=NONE, i=NONE, e=NONE, r=NONE, n=NONE):
        lk = self.lock
        # Not `lk.locked()`: while release() hands the lock to a waiting task,
        # state holds that task and locked() reads False; encoding then would
        # overwrite the buffer the woken task is about to write.
        if lk.state == 0:
            # fast path: encode and write without yielding (no other task
            # can touch the buffer meanwhile), no lock objects needed
            buf = self._enc(a, d, i, e, r, n)
            w = self._put(buf)
            if w == len(buf):
                return
            async with lk:  # acquired at once: it was free and we did not yield
                await self._write(buf[w:])
            return
        async with lk:
            await self._write(self._enc(a, d, i, e, r, n))

    async def send_err(self, i, ex):
        e, d = err.encode(ex)
        await self.send(NONE, NONE if d is None else d, i, e)

    async def announce(self, up):
        try:
            await self.send(["link"], up)
        except Exception:
            pass

    # --- receiving
    def rx(self, m):
        if not isinstance(m, dict):
            return  # console byte or junk
        c = ("a" in m) + ("d" in m) + ("i" in m) + ("e" in m) + ("r" in m) + ("n" in m) + ("x" in m)
        if c != len(m):
            self._unknown(m)
        i = m.get("i")
        if i is not None and (not isinstance(i, int) or i < 0 or i > _MAXSEQ + 1):
            return
        if "a" in m:
            self._req(m, i)
            return
        if i is None:
            return
        k = i ^ 1
        if "e" in m:
            c = self.own.get(k)
            if c is not None:
                c.e = err.decode(m["e"], m.get("d"))
                c.ev.set()
        elif "r" in m:
            pass  # end of a stream we asked for: we never ask for streams
        elif "d" in m:
            c = self.own.get(k)
            if c is not None:
                c.v = m["d"]
                c.ev.set()
        else:  # cancellation
            t = self.peer.pop(k, None)
            if t is not None:
                t.cancel()

    def _unknown(self, m):
        for k in m:
            if not (isinstance(k, str) and len(k) == 1 and k in _KEYS) and k not in _seen and len(_seen) < 8:
                _seen.append(k)
                err.log("ignoring unknown message key", k)

    def _req(self, m, i):
        a = m["a"]
        if isinstance(a, str):
            a = [a]
        d = m.get("d", NONE)
        if d is NONE or d is None:
            d = {}
        r = m.get("r")
        if i is None:
            asyncio.create_task(self._serve(a, d, None, None, None))
            return
        k = i ^ 1
        if k in self.peer:
            asyncio.create_task(self.send_err(k, err.DupSeq(i)))
            return
        if len(self.peer) >= self.q:  # bounded: a flood must not exhaust the heap
            asyncio.create_task(self.send(NONE, NONE, k, "E:busy: %d requests open" % self.q))
            return
        self.peer[k] = asyncio.create_task(self._serve(a, d, k, r, m.get("x")))

    async def _serve(self, a, d, k, r, x):
        try:
            if not isinstance(a, list) or not isinstance(d, dict):
                raise err.NoPath(a, "bad request")
            if isinstance(r, int) and r > 0 and k is not None:
                await self._stream(a, d, k, r)
            else:
                f, _ = self.root.resolve(a)
                v = f(**d)
                if type(v) is _GEN:
                    v = await v
                if k is not None:
                    await self.send(NONE, v, k)
        except asyncio.CancelledError:
            k = None
        except Exception as ex:
            if not (isinstance(ex, (err.NoPath, err.DupSeq)) or _expected(ex, x)):
                err.log("error in", a, repr(ex))
            if k is not None:
                try:
                    await self.send_err(k, ex)
                except Exception:
                    pass
        finally:
            if k is not None and self.peer.get(k) is asyncio.current_task():
                del self.peer[k]

    async def _stream(self, a, d, k, r):
        f = _Feed()
        pt = asyncio.create_task(self._produce(f, a, d, r))
        try:
            while True:
                if f.n == f.sent:  # nothing new to send
                    if f.done:
                        break
                    f.ev.clear()
                    await f.ev.wait()
                    continue
                f.sent = f.n
                await self.send(NONE, f.v, k, NONE, NONE, f.n)
            if f.e is not None:
                raise f.e
            await self.send(NONE, NONE, k, NONE, False)
        finally:
            if not f.done:
                pt.cancel()

    async def _produce(self, f, a, d, r):
        try:
            fn, native = self.root.resolve(a, True)
            if native:
                await fn(f, r, **d)
            else:
                t = asyncio.ticks()
                while True:
                    f(await result(fn(**d)))
                    t = asyncio.ticks_add(t, r)
                    w = asyncio.ticks_diff(t, asyncio.ticks())
                    if w < 0:  # running late: do not try to catch up
                        t = asyncio.ticks()
                        w = 0
                    await asyncio.sleep_ms(w)
        except asyncio.CancelledError:
            pass
        except Exception as ex:
            f.e = ex
        f.done = True
        f.ev.set()

    # --- our own requests
    async def call(self, a, d=None):
        s = self.seq
        while True:
            s += 2
            if s > _MAXSEQ:
                s = 2
            if s not in self.own:
                break
        self.seq = s
        c = _Call()
        self.own[s] = c
        try:
            await self.send(a, {} if d is None else d, s)
            await c.ev.wait()
        except asyncio.CancelledError:
            if self.up:
                await self.send(NONE, NONE, s)
            raise
        finally:
            del self.own[s]
        if c.e is not None:
            raise c.e
        return c.v

    # --- life cycle
    def attach(self):
        self.up = True
        self.root.links.append(self)

    def detach(self):
        # the link is gone: fail our calls, stop the peer's requests
        self.up = False
        if self in self.root.links:
            self.root.links.remove(self)
        for c in self.own.values():
            c.e = err.LinkDown(self.name)
            c.ev.set()
        for t in self.peer.values():
            t.cancel()
        self.peer.clear()
        for f in detached:
            try:
                f(self)
            except Exception as e:
                err.log("detach hook:", repr(e))

    async def close(self):
        pass
