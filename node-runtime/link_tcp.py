# moat node runtime: TCP links (protocol.md §4): a server for any number of
# clients, and a client that connects out with back-off. MsgPack objects
# back to back, no framing.
import asyncio
from asyncio import core
from msgpack import Unpacker, NONE
from proto import Link
import err

_PORT = 27587


class SockLink(Link):
    def __init__(self, root, name, rd, wr, m, idle):
        super().__init__(root, name, m)
        self.rd = rd
        self.wr = wr
        self.s = wr.s
        self.idle = idle
        self.task = None

    def _put(self, buf):
        try:
            return self.s.write(buf) or 0
        except OSError:
            return 0

    async def _write(self, buf):
        # non-blocking socket writes; a cancellation waits for the message end
        s = self.s
        off = 0
        n = len(buf)
        ce = None
        while off < n:
            w = s.write(buf[off:] if off else buf)
            if w:
                off += w
                continue
            if w is not None and not self.up:
                raise err.LinkDown(self.name)
            try:
                yield core._io_queue.queue_write(s)
            except asyncio.CancelledError as e:
                ce = e
        if ce is not None:
            raise ce

    async def serve(self):
        self.task = asyncio.current_task()
        u = await _alloc(lambda: Unpacker(self.m))
        if u is None:
            err.log("tcp: no memory for another link")
            self.s.close()
            return
        rd = self.rd
        s = self.s
        self.attach()
        try:
            await self.announce(True)
            while True:
                sp = u.space()
                if u.pending():
                    try:
                        n = await asyncio.wait_for_ms(rd.readinto(sp), self.idle)
                    except asyncio.TimeoutError:
                        u.clear()  # half a message and silence: resync
                        continue
                else:
                    yield core._io_queue.queue_read(s)  # like Stream.readinto, minus a generator
                    n = s.readinto(sp)
                if n is None:  # spurious wake-up
                    continue
                if not n:
                    break
                u.got(n)
                while True:
                    v = u.next()
                    if v is NONE:
                        break
                    self.rx(v)
        except asyncio.CancelledError:
            pass
        except OSError as e:
            err.log("tcp link:", repr(e))
        finally:
            self.detach()
            try:
                self.s.close()  # Stream.close() does not close the socket
            except Exception:
                pass

    async def close(self):
        if self.task is not None:
            await self.announce(False)
            self.task.cancel()


def _opts(c):
    m = c.get("m", 1024)
    return m, c.get("idle", 1000)


async def _alloc(make):
    # A link that is closing right now still holds its buffers until its
    # task ends: on a small heap give it a moment before refusing a client.
    for _ in range(10):
        try:
            return make()
        except MemoryError:
            await asyncio.sleep_ms(20)
    return None


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
            yield core._io_queue.queue_read(s)
            try:
                cs, _ = s.accept()
            except OSError:
                continue
            cs.setblocking(False)
            st = asyncio.StreamReader(cs)
            sl = await _alloc(lambda: SockLink(root, "tcp", st, st, m, idle))
            if sl is None:  # refuse this client, keep serving
                err.log("tcp: no memory for another link")
                cs.close()
                continue
            asyncio.create_task(sl.serve())
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
        await asyncio.sleep_ms(delay)
        delay = min(delay * 2, 30000)
