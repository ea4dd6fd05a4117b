# moat node runtime: the `cfg` app: read, change, save the running config.
import os
from app import App
from msgpack import Proxy, NoData, packb, size

FILE = "moat.cfg"
# What cfg.r answers for a secret (the node key auth.k and every path listed
# in `sec`), and what cfg.w takes as "keep the value there".
SEC = Proxy("_sec")
_KEY = ("auth", "k")


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


def _same(a, b, n):
    for j in range(n):
        if a[j] != b[j]:
            return False
    return True


def _mask(cfg, p, v):
    # v, the subtree at p, with every secret in it replaced by SEC: copies
    # along the secrets' paths, the running config stays as it is
    sec = cfg.get("sec")
    j = -1
    n = len(p)
    while True:
        s = _KEY if j < 0 else sec[j]
        j += 1
        if isinstance(s, (list, tuple)):
            if len(s) <= n:
                if _same(p, s, len(s)):
                    return SEC  # p is a secret, or inside one
            elif _same(p, s, n):
                try:
                    _walk(v, s[n:])
                except KeyError:
                    pass  # not set: nothing to hide
                else:
                    v = _put(v, s[n:], 0, SEC)
        if not isinstance(sec, list) or j >= len(sec):
            return v


def _keep(old, d):
    # d with each SEC in it replaced by the value at the same place in old
    # (what cfg.w of a config read back with cfg.r needs)
    if isinstance(d, Proxy):
        if d != SEC:
            return d
        if old is None:
            raise ValueError("_sec: no value there to keep")
        return old
    r = None
    if isinstance(d, dict):
        for k in d:
            x = d[k]
            if isinstance(x, (dict, list, Proxy)):
                y = _keep(old.get(k) if isinstance(old, dict) else None, x)
                if y is not x:
                    if r is None:
                        r = dict(d)
                    r[k] = y
    elif isinstance(d, list):
        for k in range(len(d)):
            x = d[k]
            if isinstance(x, (dict, list, Proxy)):
                y = _keep(old[k] if isinstance(old, list) and k < len(old) else None, x)
                if y is not x:
                    if r is None:
                        r = list(d)
                    r[k] = y
    return d if r is None else r


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
    """Read, change and save the running config."""
    def cmd_r(self, p=()):
        """Read the config subtree at path `p` (whole when it fits a message, else
        [simple members, [keys to fetch with p + key]]); secrets read as `_sec`."""
        c = self.root.cfg
        v = _mask(c, p, _walk(c, p))
        if v is SEC:
            return v
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
        """Write `d` at path `p` (`-` or absent deletes; missing maps are made;
        `_sec` over a value keeps it). Running apps see it after `x`."""
        # copy-on-write along the path: running apps keep the config they
        # were started with until `x` restarts them
        try:
            old = _walk(self.root.cfg, p)
        except KeyError:
            old = None
        d = _keep(old, d)
        if not p:
            if not isinstance(d, dict):
                raise ValueError("the config root must be a map")
            self.root.cfg = d
            return
        self.root.cfg = _put(self.root.cfg, p, 0, d)

    def cmd_s(self):
        """Save the running config to moat.cfg, atomically."""
        save(self.root.cfg)

    async def cmd_x(self, p=()):
        """Restart the apps under path `p` (all when empty) with the running config."""
        await self.root.restart_apps(p[0] if p else None)
