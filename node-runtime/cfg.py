# moat node runtime: the `cfg` app: read, change, save the running config.
import os
from app import App
from msgpack import Proxy, NoData, packb, size

FILE = "moat.cfg"


def _walk(c, p, make=False):
    for k in p:
        if isinstance(c, dict):
            n = c.get(k)
            if n is None and make:
                n = c[k] = {}
        elif isinstance(c, list) and isinstance(k, int) and -len(c) <= k < len(c):
            n = c[k]
        else:
            n = None
        if n is None:
            raise KeyError(k)
        c = n
    return c


def _put(c, p, j, d):
    # a shallow copy of c with p[j:] set to d (NoData: deleted)
    k = p[j]
    if c is None:
        c = {}
    if isinstance(c, dict):
        n = dict(c)
        old = n.get(k)
    elif isinstance(c, list) and isinstance(k, int) and -len(c) <= k < len(c):
        n = list(c)
        old = n[k]
    else:
        raise TypeError("cannot write below a %s" % type(c).__name__, p[:j])
    if j < len(p) - 1:
        n[k] = _put(old, p, j + 1, d)
    elif isinstance(d, Proxy) and d == NoData:
        if isinstance(n, dict):
            n.pop(k, None)
        else:
            raise TypeError("cannot delete from a list")
    else:
        n[k] = d
    return n


def save(cfg, fn=FILE):
    # atomic: write a temp file, then rename over the old one
    t = fn + ".tmp"
    with open(t, "wb") as f:
        f.write(packb(cfg))
    try:
        os.rename(t, fn)
    except OSError:  # filesystems whose rename does not replace
        os.remove(fn)
        os.rename(t, fn)


class Cfg(App):
    def cmd_r(self, p=()):
        v = _walk(self.root.cfg, p)
        lim = self.root.m - 32  # room for the reply's envelope
        if size(v) <= lim:
            return v
        # too big for one message: the simple members that fit, and the keys
        # to fetch with p + key (containers, and what did not fit)
        s = {}
        ks = []
        used = 8
        it = v.items() if isinstance(v, dict) else enumerate(v)
        for k, x in it:
            if not isinstance(x, (dict, list)):
                n = size(k) + size(x)
                if used + n + len(ks) * 4 < lim // 2:
                    s[k] = x
                    used += n
                    continue
            ks.append(k)
        return [s, ks]

    def cmd_w(self, p, d=NoData):
        # copy-on-write along the path: running apps keep the config they
        # were started with until `x` restarts them
        if not p:
            if not isinstance(d, dict):
                raise ValueError("the config root must be a map")
            self.root.cfg = d
            return
        self.root.cfg = _put(self.root.cfg, p, 0, d)

    def cmd_s(self):
        save(self.root.cfg)

    async def cmd_x(self, p=()):
        await self.root.restart_apps(p[0] if p else None)
