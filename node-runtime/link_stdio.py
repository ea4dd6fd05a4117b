# moat node runtime: the stdio link: a lossless byte stream on stdin/stdout
# (USB CDC, or a process's pipes) carrying MsgPack messages interleaved with
# console text (top-level 0x00-0x7F bytes are console; a top-level Ctrl-C
# stops the runtime, so REPL tools work on a node that talks on its console).
import sys
import asyncio
import micropython
import select
from asyncio import core
from msgpack import Unpacker, NONE
from proto import Link

READY = "moat: stdio ready"


class StdioLink(Link):
    CON = True  # console bytes between messages: never junk
    NOW = True  # _put() writes the whole message at once: plain commands are answered inline
    def __init__(self, root, c, au=None):
        super().__init__(root, "stdio", c.get("m", 1024), au, False, "peer")
        self.i = sys.stdin.buffer
        self.o = sys.stdout.buffer
        self.idle = c.get("idle", 1000)
        self.one = bytearray(1)
        self.pl = select.poll()
        self.pl.register(self.i, select.POLLIN)

    def _put(self, buf):
        self.o.write(buf)
        return len(buf)

    async def _write(self, buf):
        self.o.write(buf)  # blocking: a message is never cut by console text

    def _ready(self):
        for _ in self.pl.ipoll(0):
            return True
        return False

    async def serve(self):
        micropython.kbd_intr(-1)  # 0x03 is data now, not Ctrl-C
        print(READY)
        u = Unpacker(self.rm)
        one = self.one
        if self.au is None:
            self.attach()
        try:
            if self.au is None:
                await self.announce(True)
            while True:
                if u.pending():
                    try:
                        await asyncio.wait_for_ms(self._wait(), self.idle)
                    except asyncio.TimeoutError:
                        u.clear()
                        continue
                else:
                    await self._wait()
                # stdin reads block until the buffer is full: take what is there
                eof = True
                while self._ready():
                    sp = u.space()
                    if not self.i.readinto(one):
                        break
                    eof = False
                    if one[0] == 3 and not u.pending():
                        # Ctrl-C between messages is the console's: leave
                        # to the REPL (mpremote, `moat cfg upload --repl`)
                        raise KeyboardInterrupt
                    sp[0] = one[0]
                    u.got(1)
                    if len(sp) == 1:
                        break
                if eof:
                    break
                while True:
                    v = u.next()
                    if v is NONE:
                        break
                    self.rx(v)
        finally:
            micropython.kbd_intr(3)
            self.detach()
        # the host closed our stdin: nobody is left to talk to
        self.root.reboot(3)

    async def _wait(self):
        yield core._io_queue.queue_read(self.i)
