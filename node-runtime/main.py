# moat node runtime: boot. Started as `micropython -m main` in the node's
# filesystem root (unix), or as the frozen main script (devices).
#
# Config: `moat.cfg`; after a crash in normal mode `moat_fb.cfg`. A crash is
# detected by the marker file `moat.run`, written at start and removed on a
# clean exit; it holds the mode of the run ("n" normal, "f" fallback).
import sys
import gc
import asyncio
from msgpack import unpackb
import err

CFG = "moat.cfg"
FALLBACK = "moat_fb.cfg"
MARK = "moat.run"
DEFAULT = {"link": {"stdio": {}}}  # no usable config at all: talk on the console


def _read(fn):
    try:
        with open(fn, "rb") as f:
            c = unpackb(f.read())
    except OSError:
        return None, "missing"
    except Exception as e:
        return None, "corrupt (%r)" % (e,)
    if not isinstance(c, dict):
        return None, "corrupt (not a map)"
    return c, None


def _mark(m):
    try:
        if m is None:
            import os

            os.remove(MARK)
        else:
            with open(MARK, "w") as f:
                f.write(m)
    except OSError:
        pass


def load(clean):
    # -> (config, mode); mode "n" normal or "f" fallback
    crashed = None
    if not clean:
        try:
            with open(MARK) as f:
                crashed = f.read()
        except OSError:
            pass
    if crashed:
        err.log("previous run (%s) crashed: using %s" % (crashed, FALLBACK))
    else:
        c, why = _read(CFG)
        if c is not None:
            return c, "n"
        err.log("%s %s: using %s" % (CFG, why, FALLBACK))
    c, why = _read(FALLBACK)
    if c is not None:
        return c, "f"
    err.log("%s %s: using the built-in default (stdio link)" % (FALLBACK, why))
    return dict(DEFAULT), "f"


async def _link(root, kind, c):
    # a link that fails (port taken, device missing) is retried, not fatal
    delay = 1000
    while True:
        try:
            await _serve(root, kind, c)
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            err.log("link", kind, "failed:", repr(e))
        await asyncio.sleep_ms(delay)
        delay = min(delay * 2, 30000)


def _loopback(h):
    return h == "localhost" or h == "::1" or h.startswith("127.")


async def _serve(root, kind, c):
    # `a` (docs/auth.md): on by default on TCP (server and client), off on
    # stdio and uart. auth is imported only when a link authenticates.
    # `e` (encryption): on by default on a TCP server beyond loopback.
    au = None
    h = c.get("h", "0.0.0.0")
    wide = kind == "tcp" and not (isinstance(h, str) and _loopback(h))
    if c.get("a", kind == "tcp" or kind == "client"):
        import auth

        au = auth.conf(root.cfg, kind, c.get("e", wide))
        if au is None:
            return  # it said why: the link does not start
    elif c.get("e"):
        err.log("link %s: e (encrypt) needs a (auth): turn auth on for it in moat.toml, then moat cfg upload" % kind)
        return
    elif kind == "tcp":
        if wide:
            err.log(
                "link tcp: auth off (a: false) but listening on %s, beyond loopback: "
                "listen on 127.0.0.1, or turn auth on (auth = true on the link in moat.toml, then moat cfg upload)" % (h,)
            )
            return
    if kind == "tcp":
        from link_tcp import server

        await server(root, c, au)
    elif kind == "client":
        from link_tcp import client

        await client(root, c, au)
    elif kind == "stdio":
        from link_stdio import StdioLink

        await StdioLink(root, c, au).serve()
    elif kind == "uart":
        from link_uart import serve

        await serve(root, c, au)
    else:
        err.log("unknown link kind", kind)


async def node(cfg):
    from taskgroup import TaskGroup
    from root import Root

    async with TaskGroup() as tg:
        root = Root(cfg, tg)
        w = cfg.get("wdt")
        s = -1
        if isinstance(w, dict):
            from wdt import Watchdog

            root.wdt = Watchdog(w, "wdt", root)
            s = w.get("s", 0)
            tg.start(root.wdt.run())
        if s == 1:
            root.wdt.start()
        net = cfg.get("net")
        if net:
            try:
                import net as netmod

                await netmod.up(net)
            except Exception as e:
                err.log("net:", repr(e))
        if s == 2:
            root.wdt.start()
        if s == 3:
            root.wdt.start()
        root.start_apps()
        if s == 4:
            root.wdt.start()
        links = cfg.get("link") or {}
        for kind, c in links.items():
            if isinstance(c, dict) and c.get("m", 1024) < root.m:
                root.m = c.get("m", 1024)
            tg.start(_link(root, kind, c if isinstance(c, dict) else {}))
        gc.collect()
    return root.boot


def main():
    # The unix port run as `-m main` installs no SIGINT handler: without
    # this, Ctrl-C (or `moat run` stopping the node) kills the process and
    # the next boot takes that for a crash.
    try:
        import micropython

        micropython.kbd_intr(3)
    except (ImportError, AttributeError):
        pass
    clean = False
    while True:
        cfg, mode = load(clean)
        _mark(mode)
        try:
            b = asyncio.run(node(cfg))
        except KeyboardInterrupt:
            b = 3
        asyncio.new_event_loop()
        clean = True
        if b == 1:  # soft reset: forget app modules, boot again
            for k in list(sys.modules):
                if k not in _KEEP:
                    del sys.modules[k]
            gc.collect()
            continue
        break
    _mark(None)
    if b == 2:
        try:
            import machine

            machine.reset()
        except (ImportError, AttributeError):
            pass  # unix: a hard reset ends the process; the runner restarts it
    if b == 3:
        # stopped (Ctrl-C, the host went away): on a device the REPL takes
        # over (sys.exit would soft-reset into main.py again); unix exits
        return
    sys.exit(0)


_KEEP = set(sys.modules)
main()
