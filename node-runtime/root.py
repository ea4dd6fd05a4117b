# moat node runtime: the root of a node's command tree.
#
# Holds the built-in apps (`sys`, `cfg`), the configured apps (each in its
# own supervised task), the links, and the proxy cache.
from micropython import const
import gc
import asyncio
from app import App
from msgpack import Proxy
import proto
from proto import result
import err

_SPARE = const(512)


class Root(App):
    """The node: built-in apps `sys` and `cfg`, the configured apps, `ping` and `dir`."""
    def __init__(self, cfg, tg):
        super().__init__(cfg, "", self)
        self.tg = tg  # the node's TaskGroup
        self.links = []
        self.closers = []  # listening tasks: stopped first when going down
        self.px = {}  # proxy name -> object
        self.pxl = {}  # proxy name -> the links whose peers got it
        self.pxn = 0
        self.hook = self._gone  # one bound method, so _down() can remove it
        proto.detached.append(self.hook)
        self.sups = {}  # app name -> supervisor task
        self.bad = {}  # app name -> why it is not running
        self.wdt = None  # the Watchdog, when configured
        self.boot = 0  # set by sys.boot: 1 soft, 2 hard
        self.m = 1024  # smallest message size limit of the links
        self.hold = 0  # links waiting for heap: no new request is started meanwhile
        # _SPARE bytes of heap held back: given to the first task that finds
        # no heap (spend()), so the running ones always get to finish (tasks
        # waiting for each other's memory would wait forever); taken again
        # (keep()) before a request is admitted
        self.spare = None
        from sys_app import Sys
        from cfg import Cfg

        self.apps = {"sys": Sys({}, "sys", self), "cfg": Cfg({}, "cfg", self)}

    # --- commands
    def cmd_ping(self, m=None):
        """Echo: -> {m: m}."""
        return {"m": m}

    # --- the spare heap
    def keep(self):
        # -> whether the spare is held, taking it again if the heap has room
        if self.spare is None:
            try:
                self.spare = bytearray(_SPARE)
            except MemoryError:
                return False
        return True

    def spend(self):
        # A task found no heap: the spare is its, now (collected at once, so
        # that the task's next try gets it, not whatever runs first).
        # -> whether there was one
        if self.spare is None:
            return False
        self.spare = None
        gc.collect()
        return True

    # --- dispatch
    def resolve(self, a, stream=False):
        # path -> (callable, is_native_stream); raises NoPath
        o = self
        n = len(a)
        if not n:
            raise err.NoPath(a, "empty path")
        for j in range(n - 1):
            s = o.sub(a[j])
            if s is None:
                why = self.bad.get(a[j]) if o is self else None
                raise err.NoPath(a, why or "no such app")
            o = s
        c = a[-1]
        if isinstance(c, str):
            if stream:
                f = getattr(o, "stream_" + c, None)
                if f is not None:
                    return f, True
            f = getattr(o, "cmd_" + c, None)
            if f is not None:
                return f, False
            if not stream and hasattr(o, "stream_" + c):
                raise err.NoPath(a, "stream only: request it with r")
        raise err.NoPath(a, "no such command")

    async def dispatch(self, a, d):
        f, _ = self.resolve(a)
        return await result(f(**d))

    def proxy(self, obj):
        # cache an object that cannot be encoded; return its proxy name. The
        # link whose peer it is sent to holds it: when every link that got
        # it is gone, it is released (_gone), so a client that vanishes
        # without sys.unproxy does not keep it for the node's lifetime.
        l = self._sender()
        for k, v in self.px.items():
            if v is obj:
                o = self.pxl.get(k)
                if o is not None and l is not None and l not in o:
                    o.append(l)
                return k
        self.pxn += 1
        k = "p%d" % self.pxn
        self.px[k] = obj
        if l is not None:
            self.pxl[k] = [l]
        return k

    def _sender(self):
        # the link the running task answers on: its own task (TCP, inline)
        # or one of its peer's requests; None for unsolicited messages
        t = asyncio.current_task()
        for l in self.links:
            if getattr(l, "task", None) is t:
                return l
            for v in l.peer.values():
                if v is t:
                    return l
        return None

    def _gone(self, l):
        # proto.detached hook: release the proxies only gone links held
        for k in [k for k, o in self.pxl.items() if l in o]:
            o = self.pxl[k]
            o.remove(l)
            if not o:
                del self.pxl[k]
                self.px.pop(k, None)

    def unproxy(self, p):
        n = p.name if isinstance(p, Proxy) else p
        if n == "-" or n.startswith("_"):
            raise ValueError("well-known proxy", n)
        del self.px[n]
        self.pxl.pop(n, None)

    # --- talking out
    def peer(self, n):
        # -> the up link whose other end is node n, or None. A link's `pn`
        # names that node: the client link's from its config (`n`), a
        # server-side link's from the peer's sys.peer when it connected.
        for l in self.links:
            if l.up and getattr(l, "pn", None) == n:
                return l
        return None

    def route(self, a):
        # -> (link, path) a request to path `a` goes out on (docs/protocol.md
        # "Node-to-node links"): a peer named by the first element gets the
        # rest of the path; else the `route` table of the config names the
        # link kind for that first element; else the host's link (one
        # without a peer node), which resolves the whole path from its root.
        n = a[0] if a else None
        l = self.peer(n)
        if l is not None:
            return l, a[1:]
        rt = self.cfg.get("route")
        k = rt.get(n) if isinstance(rt, dict) else None
        if k is not None:
            for l in self.links:
                if l.up and l.name == k:
                    return l, a
            raise err.LinkDown("route to %s: no %s link is up" % (n, k))
        if n is not None and n == self.pname():
            raise err.LinkDown("link to peer %s is down" % n)
        for l in self.links:
            if l.up and getattr(l, "pn", None) is None:
                return l, a
        raise err.LinkDown("no link to the host is up")

    def pname(self):
        # the node the client link connects to (`link.client.n`), or None
        c = (self.cfg.get("link") or {}).get("client")
        return c.get("n") if isinstance(c, dict) else None

    async def call(self, a, **kw):
        l, a = self.route(a)
        return await l.call(a, kw)

    def attached(self, l):
        # a link came up. A client link says which node we are (sys.peer),
        # so the peer routes calls for us to this link, not to its host.
        self.links.append(l)
        if l.name == "client":
            l.pn = self.pname()
            a = self.cfg.get("auth")
            me = a.get("n") if isinstance(a, dict) else None
            if me:
                asyncio.create_task(self._hello(l, me))

    async def _hello(self, l, me):
        try:
            await l.call(["sys", "peer"], {"n": me})
        except Exception as e:
            err.log("link client: sys.peer:", repr(e))

    async def send(self, a, d=None):
        for l in self.links:
            try:
                await l.send(a, d)
            except Exception:
                pass

    async def announce(self, up):
        for l in self.links:
            await l.announce(up)

    # --- life cycle
    def reboot(self, m):
        # m: 1 soft reset, 2 hard reset, 3 stop; say goodbye on every link first
        self.boot = m
        # inside the TaskGroup, so the node does not end before we are done
        self.tg.start(self._down())

    async def _down(self):
        for t in self.closers:
            t.cancel()  # stop accepting (the task closes its socket)
        await asyncio.sleep_ms(0)
        for l in list(self.links):
            try:
                await l.close()
            except Exception:
                pass
        await asyncio.sleep_ms(10)
        try:
            proto.detached.remove(self.hook)
        except ValueError:
            pass
        await self.stop_apps()
        self.tg.cancel()

    # --- apps
    def start_apps(self, only=None):
        apps = self.cfg.get("apps") or {}
        if not isinstance(apps, dict):
            err.log("config: 'apps' is not a map")
            return
        for name, spec in apps.items():
            if only is None or name == only:
                self.sups[name] = self.tg.start(self._sup(name, spec))

    async def stop_apps(self, only=None):
        for name in list(self.sups):
            if only is None or name == only:
                t = self.sups.pop(name)
                t.cancel()
                await self._stop(name)
                self.bad.pop(name, None)

    async def restart_apps(self, only=None):
        await self.stop_apps(only)
        await asyncio.sleep_ms(0)
        self.start_apps(only)

    async def _stop(self, name):
        a = self.apps.pop(name, None)
        if a is None or a is self.wdt:
            return
        f = getattr(a, "stop", None)
        if f is not None:
            try:
                await result(f())
            except Exception as e:
                err.log("stopping", name, repr(e))

    def _make(self, name, spec):
        if name in ("sys", "cfg") or not isinstance(name, str):
            raise ValueError("reserved app name", name)
        if not isinstance(spec, str) or "." not in spec:
            raise ValueError("app spec must be 'module.Class'", spec)
        if self.wdt is not None and name == "wdt":
            return self.wdt
        mn, cn = spec.rsplit(".", 1)
        mod = __import__(mn)
        c = self.cfg.get(name)
        return getattr(mod, cn)(c if isinstance(c, dict) else {}, name, self)

    async def _sup(self, name, spec):
        # build and run one app; on failure report it and rebuild after a back-off
        delay = 1000
        while True:
            try:
                a = self._make(name, spec)
                self.apps[name] = a
                self.bad.pop(name, None)
                run = getattr(a, "run", None)
                if run is None or a is self.wdt:
                    return
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # reporting allocates: on a full heap the app is restarted
                # all the same, said or not (a MemoryError here would end
                # the node's TaskGroup, and the node with it)
                try:
                    self.bad[name] = "app failed: " + repr(e)
                    err.log("app", name, "failed:", repr(e))
                    await self.send(["err", name], "E:" + repr(e))
                except MemoryError:
                    pass
                try:
                    await self._stop(name)
                except MemoryError:
                    self.apps.pop(name, None)
            await asyncio.sleep_ms(delay)
            delay = min(delay * 2, 60000)
