# The protocol engine (proto.Link + root.Root) against an in-memory peer:
#   micropython node-runtime/tests/test_proto.py
import sys
import gc
import asyncio
from msgpack import Packer, Proxy, NONE, unpackb
from taskgroup import TaskGroup
from root import Root
from proto import Link, BUSY
from app import App

fails = []


def check(ok, what):
    if not ok:
        fails.append(what)
        print("FAIL", what)


class Mem(Link):
    # a link whose peer is this test: sent messages are decoded into .got
    def __init__(self, root):
        super().__init__(root, "mem", 1024)
        self.got = []

    def _put(self, buf):
        self.got.append(unpackb(bytes(buf)))
        return len(buf)

    async def _write(self, buf):
        self._put(buf)


class Slow(Mem):
    # a consumer that takes 30 ms per message
    def _put(self, buf):
        return 0

    async def _write(self, buf):
        self.got.append(unpackb(bytes(buf)))
        await asyncio.sleep_ms(100)


class Sizes(Link):
    # a link that only notes the size of what it sends (copying or decoding
    # a big message would itself need a big block of heap)
    def __init__(self, root):
        super().__init__(root, "sizes", 1024)
        self.n = []

    def _put(self, buf):
        self.n.append(len(buf))
        return len(buf)

    async def _write(self, buf):
        self._put(buf)


class Halves(Mem):
    # a peer that takes half of a message at once, and a heap that has no
    # room for the coroutine finishing it the first `short` times
    def __init__(self, root, short):
        super().__init__(root)
        self.short = short
        self.raw = bytearray()

    def _put(self, buf):
        h = len(buf) // 2
        self.raw.extend(buf[:h])
        return h

    def _write(self, buf):
        if self.short:
            self.short -= 1
            raise MemoryError
        return self._rest(buf)

    async def _rest(self, buf):
        self.raw.extend(buf)


def fill():
    # take every block of the heap: -> what holds them
    gc.collect()
    last = None
    for size in (1024, 64, 16):
        try:
            while True:
                last = [bytearray(size), last]
        except MemoryError:
            pass
    return last


def fragment():
    # fill the heap with ~0.5 KB blocks, then free every other one: a lot
    # of free memory, none of it 1 KB in one piece (a long-running node's heap)
    gc.collect()
    last = None
    try:
        while True:
            last = [bytearray(480), last]
    except MemoryError:
        pass
    j = 0
    c = last
    while c is not None:
        if j & 1:
            c[0] = None
        j += 1
        c = c[1]
    gc.collect()
    return last


class T(App):
    def cmd_add(self, a=0, b=0):
        return a + b

    async def cmd_slow(self, t=50):
        await asyncio.sleep_ms(t)
        return t

    def cmd_bad(self):
        raise KeyError("k")

    def cmd_oom(self):
        raise MemoryError

    async def stream_fast(self, send, r, n=10):
        for j in range(n):
            send(j)
            await asyncio.sleep_ms(1)

    async def stream_tick(self, send, r, n=3):
        for j in range(n):
            send(j)
            await asyncio.sleep_ms(r)


async def main():
    async with TaskGroup() as tg:
        root = Root({"apps": {}}, tg)
        root.apps["t"] = T({}, "t", root)
        l = Mem(root)
        l.attach()

        async def until(f, ms=3000):
            # wait for a condition (no timing assumptions, just a limit)
            for _ in range(ms // 5):
                if f():
                    return True
                await asyncio.sleep_ms(5)
            return False

        async def req(m, n=1):
            l.got.clear()
            l.rx(m)
            await until(lambda: len(l.got) >= n)
            await asyncio.sleep_ms(5)
            return list(l.got)

        got = await req({"a": ["t", "add"], "d": {"a": 2, "b": 3}, "i": 2})
        check(got == [{"i": 3, "d": 5}], "reply %r" % got)
        got = await req({"a": "ping", "i": 4})
        check(got == [{"i": 5, "d": {"m": None}}], "string path, no d: %r" % got)
        got = await req({"a": ["t", "bad"], "i": 6, "x": [Proxy("_KyErr")]})
        check(got == [{"i": 7, "e": Proxy("_KyErr"), "d": ["k"]}], "error %r" % got)
        got = await req({"a": ["t", "nope"], "i": 8})
        check(got == [{"i": 9, "e": Proxy("_NPErr"), "d": [["t", "nope"], "no such command"]}], "no path %r" % got)
        l.got.clear()
        l.rx({"a": ["t", "add"], "d": {}})
        await asyncio.sleep_ms(20)
        check(l.got == [], "fire and forget answers nothing: %r" % l.got)

        # duplicate number while the first is running; then cancellation
        l.got.clear()
        l.rx({"a": ["t", "slow"], "d": {"t": 50}, "i": 10})
        l.rx({"a": ["ping"], "d": {}, "i": 10})
        await until(lambda: len(l.got) >= 2)
        check(l.got == [{"i": 11, "e": Proxy("_DupErr"), "d": [10]}, {"i": 11, "d": 50}], "dup %r" % l.got)
        l.got.clear()
        l.rx({"a": ["t", "slow"], "d": {"t": 500}, "i": 12})
        await asyncio.sleep_ms(5)
        l.rx({"i": 12})
        await asyncio.sleep_ms(600)
        check(l.got == [], "cancelled request answers nothing: %r" % l.got)

        # native stream ends with r: false; generic stream every r ms
        got = await req({"a": ["t", "tick"], "d": {"n": 2}, "i": 14, "r": 5}, 3)
        check(got == [{"i": 15, "d": 0, "n": 1}, {"i": 15, "d": 1, "n": 2}, {"i": 15, "r": False}], "native stream %r" % got)
        l.got.clear()
        l.rx({"a": ["t", "add"], "d": {"a": 1}, "i": 16, "r": 10})
        await until(lambda: len(l.got) >= 3)
        l.rx({"i": 16})
        await asyncio.sleep_ms(10)
        n = len(l.got)
        await asyncio.sleep_ms(50)
        check(n >= 3 and len(l.got) == n, "generic stream stops on cancel: %r" % l.got)
        check(all(m["d"] == 1 for m in l.got), "generic stream values %r" % l.got)
        check([m["n"] for m in l.got] == list(range(1, n + 1)), "stream counter")

        # our own call: even number, answered by the peer
        l.got.clear()
        t = asyncio.create_task(l.call(["host", "x"], {"v": 1}))
        await until(lambda: l.got)
        out = l.got[-1]
        check(out["a"] == ["host", "x"] and out["i"] % 2 == 0, "own request %r" % out)
        l.rx({"i": out["i"] + 1, "d": "ok"})
        check((await t) == "ok", "own call result")

        # link loss fails our open calls with LinkDown
        l.got.clear()
        t = asyncio.create_task(l.call(["host", "y"]))
        await until(lambda: l.got)
        l.detach()
        try:
            await t
            check(False, "call survived link loss")
        except Exception as e:
            check(type(e).__name__ == "LinkDown", "link loss error %r" % e)
        l.attach()

        # more open requests than the cap: the extra ones are refused at once
        l.got.clear()
        for j in range(20):
            l.rx({"a": ["t", "slow"], "d": {"t": 30}, "i": 100 + 2 * j})
        await until(lambda: len(l.got) >= 4)
        busy = [m for m in l.got if "e" in m]
        check(len(busy) == 4 and all(m["e"].startswith("E:busy") for m in busy), "cap %r" % busy)
        await until(lambda: len(l.got) >= 20)
        check(len([m for m in l.got if m.get("d") == 30]) == 16, "capped requests answered")

        # a slow consumer gets the latest value: items coalesce, never reorder
        sl = Slow(root)
        sl.attach()
        sl.rx({"a": ["t", "fast"], "d": {"n": 10}, "i": 30, "r": 1})
        await until(lambda: sl.got and sl.got[-1].get("r") is False, 5000)
        items = [m for m in sl.got if "d" in m]
        ns = [m["n"] for m in items]
        check(sl.got[-1] == {"i": 31, "r": False}, "slow stream ends: %r" % sl.got)
        check(items[-1]["d"] == 9 and ns[-1] == 10, "latest value last: %r" % items)
        check(len(items) < 10 and ns == sorted(ns), "coalesced, in order: %r" % ns)
        check(all(m["d"] == m["n"] - 1 for m in items), "n names the value: %r" % items)
        sl.detach()

        # a reply near the link's size limit on a fragmented heap: the link
        # encodes into the buffer it got at the start, it needs no new block
        # (it used to grow its buffer then and answer with a MemoryError)
        sz = Sizes(root)
        big = {"k%d" % j: "x" * 40 for j in range(15)}
        hold = fragment()
        try:
            bytearray(1024)
            whole = True
        except MemoryError:
            whole = False
        await sz.send(NONE, big, 41)
        hold = None
        gc.collect()
        check(not whole, "test set-up: the heap still has 1 KB in one piece")
        check(sz.n and sz.n[0] > 600, "big reply on a fragmented heap: %r" % sz.n)
        check(unpackb(bytes(sz.pk.out())) == {"i": 41, "d": big}, "big reply content")

        # --- out of heap: requests wait or are refused, nothing is lost
        dead = []  # tasks that ended with an exception nobody retrieved
        asyncio.get_event_loop().set_exception_handler(lambda loop, c: dead.append(c["exception"]))

        # a command out of memory is answered with the busy error
        got = await req({"a": ["t", "oom"], "i": 60})
        check(got == [{"i": 61, "e": BUSY}], "oom command %r" % got)

        # no heap to start a request: rx says so and starts nothing; called
        # again with heap it runs; refuse() tells the peer
        l.got.clear()
        l.rx({"a": ["t", "slow"], "d": {"t": 100}, "i": 70})  # one open: the next is checked
        root.hold = 1  # (a new link waiting for heap: requests wait)
        m = {"a": ["t", "add"], "d": {"a": 1, "b": 1}, "i": 62}
        check(l.rx(m) is True, "rx without heap says so")
        await asyncio.sleep_ms(20)
        check(l.got == [] and 63 not in l.peer, "nothing started: %r %r" % (l.got, l.peer))
        root.hold = 0
        check(l.rx(m) is False, "rx with heap")
        await until(lambda: len(l.got) >= 2)
        check(l.got == [{"i": 63, "d": 2}, {"i": 71, "d": 100}], "served once heap is back: %r" % l.got)
        l.got.clear()
        check(l.refuse({"a": ["ping"], "i": 64}) == 0, "refused at once")
        check(l.refuse({"a": ["ping"]}) == 0, "fire and forget: nobody to tell")
        check(l.got == [{"i": 65, "e": BUSY}], "refused %r" % l.got)

        # half a reply is out and the heap has no room to finish it: the
        # rest follows once it has, the message is never cut
        h = Halves(root, 3)
        h.attach()
        h.rx({"a": ["ping"], "d": {"m": "x" * 40}, "i": 66})
        await until(lambda: not h.short and not h.peer)
        check(unpackb(bytes(h.raw)) == {"i": 67, "d": {"m": "x" * 40}}, "whole reply %r" % h.raw)
        check(h.lock.state == 0, "lock free again")
        h.detach()

        # a request whose reply finds the heap full: it waits for heap and
        # is answered (its reply, or busy after a few tries), exactly once
        l.got.clear()
        l.rx({"a": ["t", "slow"], "d": {"t": 10}, "i": 68})
        hold = fill()
        await asyncio.sleep_ms(150)
        hold = None
        gc.collect()
        await until(lambda: l.got)
        await asyncio.sleep_ms(50)
        check(l.got in ([{"i": 69, "d": 10}], [{"i": 69, "e": BUSY}]), "answer after a full heap %r" % l.got)
        check(dead == [], "task exceptions: %r" % dead)

        # a link that writes at once answers plain commands inline: the
        # answer is out when rx() returns, no task; async ones get a task
        class Now(Mem):
            NOW = True

        nl = Now(root)
        nl.attach()
        nl.rx({"a": ["t", "add"], "d": {"a": 2, "b": 5}, "i": 80})
        check(nl.got == [{"i": 81, "d": 7}] and not nl.peer, "inline %r %r" % (nl.got, nl.peer))
        nl.got.clear()
        nl.rx({"a": ["t", "bad"], "i": 82, "x": [Proxy("_KyErr")]})
        check(nl.got == [{"i": 83, "e": Proxy("_KyErr"), "d": ["k"]}], "inline error %r" % nl.got)
        nl.got.clear()
        nl.rx({"a": ["t", "nope"], "i": 84})
        nl.rx({"a": ["t", "slow"], "d": {"t": 10}, "i": 86})
        check(nl.got == [] and 87 in nl.peer, "async: a task %r" % nl.got)
        await until(lambda: len(nl.got) >= 2)
        check(sorted(m["i"] for m in nl.got) == [85, 87] and nl.got[-1] == {"i": 87, "d": 10}, "via tasks %r" % nl.got)
        nl.detach()

        # allocation per request (64-bit unix figures are about twice an ESP8266's)
        for _ in range(3):
            await req({"a": ["ping"], "d": {"m": 1}, "i": 20})
        gc.collect()
        gc.disable()
        a0 = gc.mem_alloc()
        for k in range(10):
            l.rx({"a": ["ping"], "d": {"m": k}, "i": 22 + 2 * k})
            await asyncio.sleep_ms(0)
            await asyncio.sleep_ms(0)
        per = (gc.mem_alloc() - a0) // 10
        gc.enable()
        print("request alloc (excl. decoding) %d B" % per)
        check(per < 2048, "per-request allocation %d B" % per)
        tg.cancel()


asyncio.run(main())
if fails:
    print("FAILED test_proto:", len(fails))
    sys.exit(1)
print("OK test_proto")
