# moat node runtime: TCP links (protocol.md §4): a server for any number of
# clients, and a client that connects out with back-off. MsgPack objects
# back to back, no framing.
from micropython import const
import gc
import asyncio
from asyncio import core
from msgpack import Unpacker, NONE
from proto import Link
import err

_PORT = 27587
_NAP = const(20)  # ms to wait for heap before trying again (as proto's)
_TRIES = const(10)  # naps a request waits for heap before it is refused
_PLENTY = const(4096)  # free heap in which a value that finds none is junk
# What a client refused for lack of heap reads before the socket closes:
# {e: "E:busy: ..."}, encoded here because there is no heap to encode it then.
_NOMEM = b"\x81\xa1e\xd9/E:busy: no memory for another link, retry later"


class SockLink(Link):
    NOW = True  # _put() writes at once: plain commands are answered inline
    def __init__(self, root, name, rd, wr, m, idle):
        super().__init__(root, name, m)
        self.rd = rd
        self.wr = wr
        self.s = wr.s
        self.idle = idle
        self.task = None
        self.busy = False  # reading or digesting input: may free heap soon

    def _put(self, buf):
        try:
            return self.s.write(buf) or 0
        except OSError:
            return 0

    async def _write(self, buf):
        # non-blocking socket writes; a cancellation waits for the message
        # end, and so does a full heap (the slice and the poller allocate)
        s = self.s
        off = 0
        n = len(buf)
        ce = None
        while off < n:
            try:
                w = s.write(buf[off:] if off else buf)
                if w:
                    off += w
                    continue
                if w is not None and not self.up:
                    raise err.LinkDown(self.name)
                yield core._io_queue.queue_write(s)
            except asyncio.CancelledError as e:
                ce = e
            except MemoryError:
                if not self.up:
                    raise
                if self.root.spend():
                    continue  # try again at once, with the spare
                try:
                    await asyncio.sleep_ms(_NAP)
                except asyncio.CancelledError as e:
                    ce = e
        if ce is not None:
            raise ce

    async def serve(self):
        self.task = asyncio.current_task()
        s = self.s
        try:
            try:
                u = await _alloc(self.root, lambda: Unpacker(self.m))
            except MemoryError:
                u = None
            if u is None:
                _refuse(s)
                return
            self.attach()
            await self.announce(True)
            rd = self.rd
            while True:
                try:
                    sp = u.space()
                    if u.pending():
                        try:
                            n = await asyncio.wait_for_ms(rd.readinto(sp), self.idle)
                        except asyncio.TimeoutError:
                            u.clear()  # half a message and silence: resync
                            continue
                    else:
                        self.busy = False  # idle: nothing of ours to free
                        yield core._io_queue.queue_read(s)  # like Stream.readinto, minus a generator
                        n = s.readinto(sp)
                    self.busy = True
                except MemoryError:  # wait for memory; the peer waits for us
                    if self.root.spend():
                        continue  # try again at once, with the spare
                    await asyncio.sleep_ms(_NAP)
                    continue
                if n is None:  # spurious wake-up
                    continue
                if not n:
                    break
                u.got(n)
                j = 0
                while True:
                    try:
                        v = u.next(True)
                    except MemoryError:  # it stays buffered: decode it again
                        if self.root.spend():
                            continue  # at once, with the spare
                        j += 1
                        if j >= _TRIES:
                            gc.collect()
                            if gc.mem_free() >= _PLENTY:
                                # the heap has room, the value wants more:
                                # junk (a length field), skip a byte
                                u.bad += 1
                                u.s += 1
                                j = 0
                                continue
                        await asyncio.sleep_ms(_NAP)
                        continue
                    if v is NONE:
                        break
                    j = 0
                    while self.rx(v):  # no heap to start it (nothing of it was)
                        # read nothing more meanwhile: that holds the peer back
                        j += 1
                        if j >= _TRIES:
                            left = self.refuse(v)
                            if left >= 0:
                                while left:  # half of it is out: finish it
                                    try:
                                        await self.send(left=left)
                                        left = 0
                                    except MemoryError:
                                        self.root.spend()
                                        await asyncio.sleep_ms(_NAP)
                                break
                            self.root.spend()
                        await asyncio.sleep_ms(_NAP)
                    if u.pending():
                        # more is buffered (a pipelining peer): let what just
                        # started run first, so admission sees what it takes
                        await asyncio.sleep_ms(0)
        except asyncio.CancelledError:
            pass
        except MemoryError:
            pass  # no memory to attach: this client is refused
        except OSError as e:
            try:
                err.log("tcp link:", repr(e))
            except MemoryError:
                pass
        finally:
            try:
                self.detach()
            except MemoryError:
                pass
            try:
                s.close()  # Stream.close() does not close the socket
            except Exception:
                pass

    async def close(self):
        if self.task is not None:
            await self.announce(False)
            self.task.cancel()


def _opts(c):
    m = c.get("m", 1024)
    return m, c.get("idle", 1000)


async def _alloc(root, make):
    # A new link needs its buffers (2 x m bytes, whole). On a full heap it
    # waits for heap, bounded by what happens, not by the clock: no new
    # request is started meanwhile (a link comes before requests), and it
    # tries again until nothing is left that could free any: no request of
    # a peer runs and every other TCP link is idle (one still digesting a
    # burst, even a slow one on a loaded machine, frees its buffers when it
    # is done or its peer closed). Only then -> None: the client is refused.
    try:
        return make()
    except MemoryError:
        pass
    if root.spend():
        try:
            return make()  # with the spare
        except MemoryError:
            pass
    root.hold += 1
    try:
        while True:
            busy = _busy(root)
            gc.collect()
            try:
                return make()
            except MemoryError:
                pass
            if not busy:
                return None
            await asyncio.sleep_ms(_NAP)
    finally:
        root.hold -= 1


def _busy(root):
    # whether another link may still free heap: a peer's request runs (it
    # ends or is refused) or a TCP link is reading (it ends its message)
    for l in root.links:
        if l.peer or getattr(l, "busy", False):
            return True
    return False


def _refuse(s):
    # no heap for this client: it reads why, the console says it
    try:
        s.write(_NOMEM)
    except Exception:
        pass
    try:
        err.log("tcp: no memory for another link: client refused")
    except MemoryError:
        pass


async def server(root, c):
    # our own accept loop: the listening socket is closed the moment the
    # node goes down, so no client connects to a dying node
    import socket

    m, idle = _opts(c)
    h = c.get("h", "0.0.0.0")
    p = c.get("p", _PORT)
    ai = socket.getaddrinfo(h, p)[0][-1]
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(ai)
        s.listen(2)
        s.setblocking(False)
        root.closers.append(asyncio.current_task())
        err.log("tcp server on %s:%d" % (h, p))
        while True:
            cs = None
            try:
                yield core._io_queue.queue_read(s)
                try:
                    cs, _ = s.accept()
                except OSError:
                    continue
                cs.setblocking(False)
                st = asyncio.StreamReader(cs)
                sl = await _alloc(root, lambda: SockLink(root, "tcp", st, st, m, idle))
                if sl is None:  # refuse this client, keep serving
                    raise MemoryError
                asyncio.create_task(sl.serve())
                # drop our references: a link that ends frees its buffers
                # then, not when the next client is accepted (which would
                # need them)
                sl = st = None
            except MemoryError:
                st = None
                if cs is not None:
                    _refuse(cs)
                    cs.close()
                root.spend()
                await asyncio.sleep_ms(_NAP)
    finally:
        s.close()


async def client(root, c):
    m, idle = _opts(c)
    h = c.get("h", "127.0.0.1")
    p = c.get("p", _PORT)
    delay = 500
    while True:
        try:
            rd, wr = await asyncio.open_connection(h, p)
            delay = 500
            await SockLink(root, "client", rd, wr, m, idle).serve()
        except OSError as e:
            err.log("tcp client %s:%d: %r" % (h, p, e))
        except MemoryError:
            pass  # no memory for the link now: try again after the back-off
        await asyncio.sleep_ms(delay)
        delay = min(delay * 2, 30000)

