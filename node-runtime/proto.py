# moat node runtime: the protocol engine of one link (docs/protocol.md: Encoding).
#
# A Link turns decoded messages into tasks and replies. Subclasses provide
# `_write(buf)` (write all of buf; must finish even when the calling task is
# cancelled, so a cancellation never cuts a message in half) and `serve()`.
from micropython import const
import gc
import asyncio
from msgpack import Packer, NONE
import err

_MAXSEQ = const(0x7FFFFFFE)
_GEN = type((lambda: (yield))())  # what calling an `async def` returns
_KEYS = "adiernx"
_seen = []  # unknown keys already logged
# Out of heap: a request that finds no memory is delayed (its link reads
# nothing more for a while, which holds the peer back), then refused with
# this error; nothing is logged (that would allocate), no link is dropped.
BUSY = "E:busy: out of memory, retry later"
_NAP = const(20)  # ms to wait for heap before trying again
_QUIET = const(5)  # failed tries at sending a reply before it becomes BUSY
_SLACK = const(1024)  # heap kept free for running requests (beyond the spare)
# f(link) for each link that detaches: apps free what its peer held there
# (fs closes the files it opened); apps add and remove their own
detached = []


async def result(v):
    # await the value of a command call when it is a coroutine
    if type(v) is _GEN:
        v = await v
    return v


def _room(n):
    # whether the heap has n bytes free, after a collection if need be
    if gc.mem_free() >= n:
        return True
    gc.collect()
    return gc.mem_free() >= n


_BUSY = (BUSY, NONE)


def _why(ex, a, x):
    # -> (e, d) of the error reply to ex, logged unless expected; the busy
    # error when there is no heap to say more
    if not isinstance(ex, MemoryError):
        try:
            if not (isinstance(ex, (err.NoPath, err.DupSeq)) or _expected(ex, x)):
                err.log("error in", a, repr(ex))
            e, d = err.encode(ex)
            return e, NONE if d is None else d
        except MemoryError:
            pass
    return _BUSY


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
    NOW = False  # whether _put() can write at once (then plain commands run inline)
    SHUT = False  # whether shut() can close the link (TCP); else it stays, ignoring
    CON = False  # whether console bytes (non-map values) come between messages
    def __init__(self, root, name, m=1024, au=None, initiator=False, peer=""):
        # au: the auth.Conf when the link authenticates (`a` true)
        self.root = root
        self.name = name
        self.m = m  # message size limit (both directions; sealed: the body's)
        o = au.o if au is not None else 0  # room for the seal (auth.Conf.o)
        self.rm = m + o  # receive buffer: a sealed message of an m-byte body
        # the whole encode buffer now, while the heap is young: grown on
        # demand, a big reply later needs m contiguous bytes of a heap that
        # is fragmented by then (a MemoryError instead of the answer)
        self.pk = Packer(m + o, m + o, root.proxy)
        self.pk.o = o  # bodies go after the room for the seal
        self.au = None if au is None else au.guard(self, initiator, peer)
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
        # -> the bytes to send (a view of the encode buffer), sealed when
        # the link authenticates; before its handshake nothing goes out
        au = self.au
        if au is not None and not au.ok():
            raise err.LinkDown(self.name)
        try:
            b = self.pk.msg(a, d, i, e, r, n)
        except (ValueError, TypeError) as ex:
            if i is NONE or e is not NONE:
                raise
            ep, ed = err.encode(ex)  # a reply that cannot be sent: say why
            b = self.pk.msg(NONE, NONE if ed is None else ed, i, ep)
        if au is None:
            return b
        return au.seal(self.pk)

    def _now(self, a, d, i, e, r, n):
        # The cheap send: encode and write at once, without yielding (no
        # other task can touch the buffer meanwhile) and without a coroutine
        # or lock object, for which a full heap may have no room.
        # -> 0: sent; -1: the lock is taken, nothing done; k > 0: the last k
        # bytes are still to go and the lock is ours: pass k to send(), and
        # again if calling it fails for lack of memory (a MemoryError then
        # comes before it starts).
        lk = self.lock
        # Not `lk.locked()`: while release() hands the lock to a waiting task,
        # state holds that task and locked() reads False; encoding then would
        # overwrite the buffer the woken task is about to write.
        if lk.state != 0:
            return -1
        buf = self._enc(a, d, i, e, r, n)
        k = len(buf) - self._put(buf)
        if k:
            lk.state = 1  # it was free and we did not yield: ours
        return k

    async def send(self, a=NONE, d=NONE, i=NONE, e=NONE, r=NONE, n=NONE, left=0):
        # The whole message or, raising MemoryError (or OSError), none of
        # it: a message is never cut, however full the heap. `left`: what
        # the caller's own _now() returned, 0 if it did not try.
        # No `async with`: its __aexit__ is allocated on the way out, and
        # without memory for it the lock would stay taken.
        if not left:
            left = self._now(a, d, i, e, r, n)
            if not left:
                return
        lk = self.lock
        whole = left < 0  # nothing written yet
        if whole:
            await lk.acquire()
        try:
            pk = self.pk
            if whole:
                left = len(self._enc(a, d, i, e, r, n))
            ce = None
            while True:
                try:
                    wr = self._write(memoryview(pk.b)[pk.n - left : pk.n])
                    break
                except MemoryError:
                    if whole:
                        raise  # the caller may try again
                # part of it is out: wait for memory to finish it
                if self.root.spend():
                    continue
                try:
                    await asyncio.sleep_ms(_NAP)
                except asyncio.CancelledError as x:
                    ce = x
            await wr
            if ce is not None:
                raise ce
        finally:
            lk.release()

    async def send_err(self, i, ex):
        e, d = err.encode(ex)
        await self.send(NONE, NONE if d is None else d, i, e)

    def refuse(self, m):
        # Says E:busy to a request rx() found no heap for, at once and
        # without a coroutine. -> as _now(): 0 done (or nothing to say, for
        # fire and forget), -1 not now, k > 0: finish with send(left=k).
        if self.au is not None:
            m = self.au.inner(m)  # what the sealed message held
            if m is None:
                return 0
        i = m.get("i") if "a" in m else None
        if not isinstance(i, int):
            return 0
        try:
            return self._now(NONE, NONE, i ^ 1, BUSY, NONE, NONE)
        except MemoryError:
            return -1

    def too_long(self, big):
        # A message longer than m was skipped (msgpack.Unpacker): says so to
        # its request when its i was read. -> as refuse().
        n, i = big
        if not isinstance(i, int):
            return 0
        try:
            e = "E:size: message of %d bytes, this link takes %d" % (n, self.m)
            return self._now(NONE, NONE, i ^ 1, e, NONE, NONE)
        except MemoryError:
            return -1

    async def announce(self, up):
        try:
            await self.send(["link"], up)
        except Exception:
            pass

    # --- authentication (auth.Guard drives these)
    def hs(self, buf, ok):
        # Sends a handshake message (unsealed bytes; None: nothing), then
        # ok True: the link is up; False: auth failed, close it; None: no more
        try:
            asyncio.create_task(self._hs(buf, ok))
        except MemoryError:
            if ok is not False:
                raise  # nothing done: the message is handled again later
            self.shut()  # the peer is not told, but it is closed

    async def _hs(self, buf, ok):
        try:
            if buf is not None:
                lk = self.lock
                await lk.acquire()
                try:
                    await self._write(buf)
                finally:
                    lk.release()
            if ok:
                self.attach()
                await self.announce(True)
        except Exception:
            ok = False if self.SHUT else ok  # cannot write: the link is gone
        if ok is False:
            self.shut()

    def shut(self):
        # close the link after auth failed (a link that can: TCP)
        pass

    def lost(self):
        # the peer starts over (a new handshake on stdio): its requests are void
        if self.up:
            self.detach()

    # --- receiving
    def rx(self, m):
        # -> True when there was no heap for m and nothing of it was done:
        # the link's loop waits a little and calls again, and in the end
        # refuses it (refuse()). A link that ignores this drops m, not itself.
        # On an authenticated link only what auth.Guard opens is processed.
        au = self.au
        if au is None:
            return self._rx(m)
        try:
            v = au.rx(m)
        except MemoryError:
            return True  # nothing of it was done (the Guard commits last)
        if v is None:
            return False
        r = self._rx(v)
        if not r:
            au.done()
        return r

    def _rx(self, m):
        if not isinstance(m, dict):
            return False  # console byte or junk
        i = m.get("i")
        try:
            c = ("a" in m) + ("d" in m) + ("i" in m) + ("e" in m) + ("r" in m) + ("n" in m) + ("x" in m)
            if c != len(m):
                self._unknown(m)
            if i is not None and (not isinstance(i, int) or i < 0 or i > _MAXSEQ + 1):
                return False
            if "a" in m:
                self._req(m, i)
                return False
        except MemoryError:
            return True
        if i is None:
            return False
        k = i ^ 1
        if "e" in m:
            c = self.own.get(k)
            if c is not None:
                try:
                    c.e = err.decode(m["e"], m.get("d"))
                except MemoryError as x:  # no memory to build the error: this one says why
                    c.e = x
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
        # Admission. A request waits while a new link waits for heap (it
        # comes first), and while less than _SLACK x 2 is free (after a
        # collection) for it and the running ones to finish; a stream, which
        # holds its share for long, while less than _SLACK x 8 is; twice
        # that while the spare is given up (to tasks that found no heap) and
        # cannot be taken again. Not a link's only request (a sequential
        # client's): it is tried at once, so a busy node still answers
        # `sys.mem` or `ping`.
        r = self.root
        held = r.keep()
        st = m.get("r")
        if isinstance(st, int) and st > 0:
            need = _SLACK << 3
        else:
            need = _SLACK << 1 if self.peer else 0
        if need and (r.hold or not _room(need if held else need << 1)):
            raise MemoryError
        try:
            self._start(m, i)
        except MemoryError:
            if not r.spend():
                raise
            self._start(m, i)  # with the spare (nothing of the first try was done)

    def _start(self, m, i):
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
        p = self.peer
        if k in p:
            asyncio.create_task(self.send_err(k, err.DupSeq(i)))
            return
        if self.root.boot:
            # going down: its apps may be stopped already ("no such app"
            # would mislead); a link that re-handshakes meanwhile (uart)
            # hears it is stopping
            asyncio.create_task(self.send_err(k, err.Stopped("node stopping")))
            return
        if len(p) >= self.q:  # bounded: a flood must not exhaust the heap
            asyncio.create_task(self.send(NONE, NONE, k, "E:busy: %d requests open" % self.q))
            return
        x = m.get("x")
        if self.NOW and self.lock.state == 0 and self.root.spare is not None and not (isinstance(r, int) and r > 0):
            if self._inline(a, d, k, x):
                return
        p[k] = None  # the table grows first: a MemoryError below leaves nothing
        try:
            p[k] = asyncio.create_task(self._serve(a, d, k, r, x))
        except MemoryError:
            del p[k]
            raise

    def _inline(self, a, d, k, x):
        # A plain (def) command, called and answered at once in the link's
        # own task: no task, no coroutine, which a fragmented heap may have
        # no block for. -> False: it runs in a task after all (an async
        # command: nothing of it ran). A MemoryError comes only before the
        # command runs.
        if not isinstance(a, list) or not isinstance(d, dict):
            return False
        try:
            f, _ = self.root.resolve(a)
        except MemoryError:
            raise
        except Exception:
            return False  # the task says why
        e = NONE
        p = self.peer
        # open while it runs, served by this task: apps that ask which link
        # a request came from (fs) find it as for a task of its own
        p[k] = asyncio.current_task()
        try:
            try:
                v = f(**d)
            except MemoryError:
                if not self.root.spend():
                    raise
                v = f(**d)  # once more, with the spare: what a client does after BUSY
            if type(v) is _GEN:
                v.close()
                return False
        except Exception as ex:
            e, v = _why(ex, a, x)
        finally:
            del p[k]
        # it ran: from here on it is answered, come what may
        try:
            left = self._now(NONE, v, k, e, NONE, NONE)
        except MemoryError:
            left = -1  # no heap to encode it: a task tries again
        if left:  # the lock was taken, half of it is out, or no heap
            try:
                asyncio.create_task(self._answer(k, v, e, left))
            except MemoryError:
                # the spare, held when this began (_start), unless the
                # command took it; without it the answer is lost
                if self.root.spend():
                    try:
                        asyncio.create_task(self._answer(k, v, e, left))
                    except MemoryError:
                        pass
        return True

    async def _serve(self, a, d, k, r, x):
        # Runs one request and answers it. Never raises: on a full heap the
        # answer waits for memory (NAP), and after a few tries becomes BUSY.
        try:
            e = NONE
            try:
                if not isinstance(a, list) or not isinstance(d, dict):
                    raise err.NoPath(a, "bad request")
                if isinstance(r, int) and r > 0 and k is not None:
                    await self._stream(a, d, k, r)
                    return
                f, _ = self.root.resolve(a)
                try:
                    v = f(**d)
                    if type(v) is _GEN:
                        v = await v
                except MemoryError:
                    if not self.root.spend():
                        raise
                    # once more, with the spare: what a client does after BUSY
                    v = f(**d)
                    if type(v) is _GEN:
                        v = await v
            except asyncio.CancelledError:
                return
            except Exception as ex:
                e, v = _why(ex, a, x)
            # as _answer(), inline: a coroutine for it may find no heap
            j = 0
            left = 0  # see _now()
            while k is not None and self.up:
                try:
                    if left <= 0:
                        left = self._now(NONE, v, k, e, NONE, NONE)
                    if left:
                        await self.send(NONE, v, k, e, NONE, NONE, left)
                    return
                except MemoryError:
                    if left <= 0:
                        j += 1
                        if j == _QUIET:  # the answer itself may be what does not fit
                            v, e = NONE, BUSY
                except asyncio.CancelledError:
                    return
                except Exception:
                    return  # link down
                if self.root.spend():
                    continue  # try again at once, with the spare
                try:
                    await asyncio.sleep_ms(_NAP)
                except asyncio.CancelledError:
                    if left <= 0:
                        return
                    # half of the answer is out: finish it first
        finally:
            if k is not None and self.peer.get(k) is asyncio.current_task():
                del self.peer[k]

    async def _answer(self, k, v, e, left):
        # Sends the answer (v, or the error e) to request k; `left` as from
        # _now(), 0 if not tried. On a full heap it waits for heap (NAP),
        # and after a few tries becomes BUSY. Never raises.
        j = 0
        while self.up:
            try:
                if left <= 0:
                    left = self._now(NONE, v, k, e, NONE, NONE)
                if left:
                    await self.send(NONE, v, k, e, NONE, NONE, left)
                return
            except MemoryError:
                if left <= 0:
                    j += 1
                    if j == _QUIET:  # the answer itself may be what does not fit
                        v, e = NONE, BUSY
            except asyncio.CancelledError:
                return
            except Exception:
                return  # link down
            if self.root.spend():
                continue  # try again at once, with the spare
            try:
                await asyncio.sleep_ms(_NAP)
            except asyncio.CancelledError:
                if left <= 0:
                    return
                # half of the answer is out: finish it first

    async def _stream(self, a, d, k, r):
        f = _Feed()
        pt = asyncio.create_task(self._produce(f, a, d, r))
        try:
            left = 0  # see _now()
            ce = None
            while True:
                try:
                    if left <= 0:
                        if ce is not None:
                            raise ce
                        if f.n == f.sent:  # nothing new to send
                            if f.done:
                                break
                            f.ev.clear()
                            await f.ev.wait()
                            continue
                        n = f.n
                        left = self._now(NONE, f.v, k, NONE, NONE, n)
                    if left:
                        await self.send(NONE, f.v, k, NONE, NONE, n, left)
                        left = 0
                    f.sent = n
                except MemoryError:  # not now: the latest value goes out later
                    if self.root.spend():
                        continue  # try again at once, with the spare
                    try:
                        await asyncio.sleep_ms(_NAP)
                    except asyncio.CancelledError as x:
                        if left <= 0:
                            raise
                        ce = x  # half an item is out: finish it first
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
                    try:
                        f(await result(fn(**d)))
                    except MemoryError:  # no memory for this one: skip it
                        self.root.spend()
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
        self.root.attached(self)

    def detach(self):
        # the link is gone: fail our calls, stop the peer's requests
        # (iterating a dict allocates nothing, its .values() would)
        self.up = False
        if self in self.root.links:
            self.root.links.remove(self)
        for s in self.own:
            c = self.own[s]
            try:
                c.e = err.LinkDown(self.name)
            except MemoryError as x:  # no memory to say more: this says why
                c.e = x
            c.ev.set()
        p = self.peer
        for k in p:
            t = p[k]
            if t is not None:
                t.cancel()
        p.clear()
        for f in detached:
            try:
                f(self)
            except Exception as e:
                try:
                    err.log("detach hook:", repr(e))
                except MemoryError:
                    pass

    async def close(self):
        pass
