# moat node runtime: TCP links (docs/protocol.md: Framing): a server for any number of
# clients, and a client that connects out with back-off. MsgPack objects
# back to back, no framing.
from micropython import const
import gc
import asyncio
from asyncio import core
from msgpack import Unpacker, NONE, BIG
from proto import Link
import err

_PORT = 27587
_NAP = const(20)  # ms to wait for heap before trying again (as proto's)
_TRIES = const(10)  # naps a request waits for heap before it is refused
_PLENTY = const(4096)  # free heap in which a value that finds none is junk
# What a client refused for lack of heap reads before the socket closes:
# {e: "E:busy: ..."}, encoded here because there is no heap to encode it then.
_NOMEM = b"\x81\xa1e\xd9/E:busy: no memory for another link, retry later"
# What a peer that sent malformed MsgPack reads before its link is closed.
_JUNK = b"\x81\xa1e\xd93E:bad: malformed MsgPack on this link, it is closed"
_HS = const(5000)  # ms an authenticating link has for its handshake


class SockLink(Link):
    NOW = True  # _put() writes at once: plain commands are answered inline
    SHUT = True  # a failed handshake closes the connection
    def __init__(self, root, name, rd, wr, m, idle, au=None, ini=False, peer=""):
        super().__init__(root, name, m, au, ini, peer)
        self.rd = rd
        self.wr = wr
        self.s = wr.s
        self.idle = idle
        self.task = None
        self.busy = False  # reading or digesting input: may free heap soon
        self.gone = False  # shut() from within serve(): it ends its loop

    def shut(self):
        t = self.task
        if t is None or t is asyncio.current_task():
            self.gone = True  # a task cannot cancel itself
        else:
            t.cancel()

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
                u = await _alloc(self.root, lambda: Unpacker(self.rm, False))
            except MemoryError:
                u = None
            if u is None:
                _say(s, _NOMEM, "tcp: no memory for another link: client refused")
                return
            au = self.au
            if au is None:
                self.attach()
                await self.announce(True)
            elif au.ini:
                await self._write(au.hello())  # nothing else is sent before it
            t0 = asyncio.ticks()
            rd = self.rd
            while not self.gone:
                try:
                    sp = u.space()
                    w = -1
                    if au is not None and not au.ok():
                        # the handshake has _HS ms; a peer that stays
                        # silent does not hold a link's buffers longer
                        w = max(0, _HS - asyncio.ticks_diff(asyncio.ticks(), t0))
                        if u.pending() and self.idle < w:
                            w = self.idle
                    elif u.pending():
                        w = self.idle
                    if w >= 0:
                        try:
                            n = await asyncio.wait_for_ms(rd.readinto(sp), w)
                        except asyncio.TimeoutError:
                            if au is not None and not au.ok() and asyncio.ticks_diff(asyncio.ticks(), t0) >= _HS:
                                au.late()
                                break
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
                                # junk (a length field)
                                u.bad += 1
                        if not u.bad:
                            await asyncio.sleep_ms(_NAP)
                            continue
                    if u.bad:
                        # Malformed input on a lossless link is a broken or
                        # hostile peer, not noise: no resync (a message
                        # could hide inside the junk), and the buffers are
                        # freed now, not after the last junk byte is read.
                        _say(s, _JUNK, "tcp: malformed MsgPack from a client: link closed")
                        return
                    if v is NONE:
                        break
                    if v is BIG:  # skipped: its request learns why
                        await self._finish(self.too_long(u.big))
                        continue
                    j = 0
                    while self.rx(v):  # no heap to start it (nothing of it was)
                        # read nothing more meanwhile: that holds the peer back
                        j += 1
                        if j >= _TRIES:
                            left = self.refuse(v)
                            if left >= 0:
                                await self._finish(left)
                                break
                            self.root.spend()
                        await asyncio.sleep_ms(_NAP)
                    if self.gone:
                        break
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

    async def _finish(self, left):
        # the last `left` bytes of a message _now() began are still to go
        while left > 0:
            try:
                await self.send(left=left)
                left = 0
            except MemoryError:
                self.root.spend()
                await asyncio.sleep_ms(_NAP)

    async def close(self):
        if self.task is not None:
            await self.announce(False)
            self.task.cancel()


def _addr(a):
    # a peer's address for the console: (host, port) on lwIP ports, a raw
    # sockaddr_in on unix
    try:
        if isinstance(a, tuple):
            return "%s:%d" % (a[0], a[1])
        if len(a) >= 8 and a[0] | a[1] == 2:  # AF_INET, either byte order
            return "%d.%d.%d.%d:%d" % (a[4], a[5], a[6], a[7], a[2] << 8 | a[3])
    except Exception:
        pass
    return "?"


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


def _say(s, msg, log):
    # before a close: the peer reads why (bytes made ahead: no heap needed),
    # the console says it
    try:
        s.write(msg)
    except Exception:
        pass
    try:
        err.log(log)
    except MemoryError:
        pass


def _nodelay(s):
    # TCP_NODELAY (IPPROTO_TCP 6, option 1 on Linux and lwIP): a message
    # written right after another (the link's announcement, then a reply)
    # would otherwise wait for the peer's delayed ACK, 40 ms
    try:
        s.setsockopt(6, 1, 1)
    except Exception:
        pass  # a port without the option: slower, not wrong


async def server(root, c, au=None):
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
                    cs, ca = s.accept()
                except OSError:
                    continue
                cs.setblocking(False)
                _nodelay(cs)
                st = asyncio.StreamReader(cs)
                pa = "peer " + _addr(ca) if au is not None else ""
                sl = await _alloc(root, lambda: SockLink(root, "tcp", st, st, m, idle, au, False, pa))
                if sl is None:  # refuse this client, keep serving
                    raise MemoryError
                asyncio.create_task(sl.serve())
                # drop our references: a link that ends frees its buffers
                # then, not when the next client is accepted (which would
                # need them)
                sl = st = ca = pa = None
            except MemoryError:
                st = None
                if cs is not None:
                    _say(cs, _NOMEM, "tcp: no memory for another link: client refused")
                    cs.close()
                root.spend()
                await asyncio.sleep_ms(_NAP)
    finally:
        s.close()


async def client(root, c, au=None):
    m, idle = _opts(c)
    h = c.get("h", "127.0.0.1")
    p = c.get("p", _PORT)
    pa = "%s:%d" % (h, p)
    delay = 500
    while True:
        try:
            rd, wr = await asyncio.open_connection(h, p)
            _nodelay(getattr(wr, "s", None))
            sl = SockLink(root, "client", rd, wr, m, idle, au, True, pa)
            await sl.serve()
            if sl.au is None or sl.au.ok():
                delay = 500  # it worked: a failed handshake keeps backing off
            sl = None
        except OSError as e:
            err.log("tcp client %s:%d: %r" % (h, p, e))
        except MemoryError:
            pass  # no memory for the link now: try again after the back-off
        await asyncio.sleep_ms(delay)
        delay = min(delay * 2, 30000)

