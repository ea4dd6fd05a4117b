# moat node runtime: the UART link: SerialPacker frames carrying the
# reliable layer (../docs/protocol.md: Framing; ../docs/reliable.md). Config `link: {uart: {...}}`:
#   n: UART number (device, default 0; the manifest's `uart = N`),
#   tx, rx: pin numbers (device, optional; the manifest's `tx`/`rx`),
#   port: a tty/pty path (unix; `dev` also accepted; an int is taken as `n`),
#   b: baud rate (device), m: max packet (default 127), s: start byte (0x85),
#   idle: ms of silence that resets the frame parser (100),
#   t: retransmit timeout ms (1000), w: window (8), r: retries (5)
import asyncio
import select
from time import ticks_ms, ticks_diff
from asyncio import core
from proto import Link
from msgpack import unpackb
from serpack import Frames
from reliable import Reliable
import err

_QMAX = 4  # messages queued before writers wait


def _open(c):
    p = c.get("port", c.get("dev"))
    if isinstance(p, str):
        f = open(p, "r+b")
        try:
            import termios

            termios.setraw(f.fileno())
        except Exception as e:
            err.log("uart: cannot set raw mode:", repr(e))
        return f
    from machine import UART

    kw = {}
    for k in ("tx", "rx"):
        if c.get(k) is not None:
            from machine import Pin  # not every port has one (qemu)

            kw[k] = Pin(c[k])
    return UART(c.get("n", p) or 0, baudrate=c.get("b", 115200), **kw)


class UartLink(Link):
    # NOW stays False: answering plain commands inline here (the reliable
    # layer taking the answer at once) left one-shot calls back to back
    # over QEMU's UART waiting a retransmission timeout now and then
    # (tests/emulated.rs back_to_back_…): commands run in tasks on uart.
    def __init__(self, root, c, au=None):
        m = c.get("m", 127)
        # room for {s, r, x, d}, and for the seal when authenticating: the
        # frame is the limit here
        super().__init__(root, "uart", m - 20 - (au.o if au is not None else 0), au, False, "peer")
        self.fr = Frames(m, c.get("s", 0x85), c.get("idle", 100))
        self.rel = Reliable(self, c.get("t", 1000), c.get("w", 8), c.get("r", 5), m)
        self.fb = bytearray(m + 5)
        self.io = _open(c)
        self.room = asyncio.Event()
        self.rb = bytearray(m + 5)  # what one read takes: a frame's worth
        self.pl = select.poll()
        self.pl.register(self.io, select.POLLIN)

    # --- events from the reliable layer
    def on_up(self):
        if self.au is not None:
            # a new reliable session: a new peer (or the same one, afresh)
            # that must authenticate first
            self.lost()
            self.au.restart()
            return
        if self not in self.root.links:
            self.attach()
        asyncio.create_task(self.announce(True))

    def on_msg(self, d):
        self.rx(d)

    def on_reset(self):
        self.detach()  # the peer restarted: its requests and ours are void
        self.room.set()

    def on_down(self, why):
        err.log("uart link down:", why)
        self.detach()
        self.room.set()

    # --- I/O
    def _flush(self):
        out = self.rel.out
        while out:
            f = out.pop(0)
            n = self.fr.frame(f, self.fb)
            self.io.write(memoryview(self.fb)[:n])

    async def _write(self, buf):
        while self.rel.busy() >= _QMAX and self.rel.up():
            self.room.clear()
            await self.room.wait()
        if not self.rel.send(bytes(buf), ticks_ms()):
            raise err.LinkDown(self.name)
        self._flush()

    def _ready(self):
        for _ in self.pl.ipoll(0):
            return True
        return False

    async def _timer(self):
        downed = None
        while True:
            now = ticks_ms()
            r = self.rel
            r.tick(now)
            if r.ph == 4:  # down: try again after a while
                if downed is None:
                    downed = now
                elif ticks_diff(now, downed) > r.ct * 2:
                    downed = None
                    r.connect(now)
            if r.busy() < _QMAX:
                self.room.set()
            self._flush()
            await asyncio.sleep_ms(min(100, r.t // 4))

    async def serve(self):
        self.rel.connect(ticks_ms())
        self._flush()
        t = asyncio.create_task(self._timer())
        fr = self.fr
        rb = self.rb
        # readinto fills the whole buffer (blocking) unless told how much:
        # a UART says what it holds (any); a tty file does not, it is read
        # a byte at a time
        av = getattr(self.io, "any", None)
        try:
            while True:
                yield core._io_queue.queue_read(self.io)
                # what is there, in one read (UART); the frames found in it
                while self._ready():
                    n = self.io.readinto(rb, min(av(), len(rb)) if av else 1)
                    if not n:
                        break
                    now = ticks_ms()
                    i = 0
                    while True:
                        i = fr.take(rb, i, n, now)
                        if i < 0:
                            break
                        self._frame(fr.payload())
                if self.rel.busy() < _QMAX:
                    self.room.set()
        finally:
            t.cancel()
            self.rel.close("node stopping")
            self._flush()
            self.detach()

    def _frame(self, p):
        try:
            f = unpackb(p)
        except ValueError:
            self.rel.bad += 1
            return
        self.rel.on_frame(f, ticks_ms())
        self._flush()


async def serve(root, c, au=None):
    await UartLink(root, c, au).serve()
