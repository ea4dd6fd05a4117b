# moat node runtime: what this node imports, for `moat diff-update`
# (../docs/update.md). Reached as `sys.up.*` (see sys_app.Sys.sub).
#
# A module is imported from the first `sys.path` entry that has it: a
# folder on the node's filesystem (NAME.py before NAME.mpy) or ".frozen"
# (the firmware, whose `_hash.hashes` holds sha256(source)[:8] per module).
# Override folders are the `sys.path` entries on the node's filesystem:
# the root ("" — first on sys.path, so a file there beats the frozen copy)
# and "lib" where the port lists "/lib" (after ".frozen": it only serves
# modules the firmware lacks).
import os
import sys
from app import App

LEDGER = "moat.upd"  # modules diff-update put here that the firmware lacks
_EXT = (".py", ".mpy", ".moat-tmp")  # module files, and interrupted uploads


def _sha(h, fn):
    b = bytearray(128)
    with open(fn, "rb") as f:
        while True:
            k = f.readinto(b)
            if not k:
                break
            h.update(memoryview(b)[:k])


def fhash(fn):
    # sha256(content)[:8], like the `_hash` table
    import hashlib

    h = hashlib.sha256()
    _sha(h, fn)
    return h.digest()[:8]


def digest(t):
    # one hash for a whole `_hash` table: sha256 over sorted name \0 hash
    import hashlib

    h = hashlib.sha256()
    for k in sorted(t):
        h.update(k.encode())
        h.update(b"\0")
        h.update(t[k])
    return h.digest()[:8]


def dirs():
    # the sys.path entries that matter, as paths on the node's filesystem
    r = []
    for p in sys.path:
        if p == ".frozen":
            r.append(p)
        elif p in ("", "."):
            r.append("")
        elif p in ("/lib", "lib"):
            r.append("lib")
    return r


def _ledger():
    try:
        with open(LEDGER) as f:
            return [x for x in f.read().split("\n") if x]
    except OSError:
        return []


class Update(App):
    """What this node imports, for `moat diff-update` (docs/update.md)."""
    def cmd_mods(self, t=None, o=0):
        # {t: digest of the frozen table, p: search order, f: frozen table
        # (absent when `t` already names it), o: [[file, hash]] override
        # files, l: ledger, v: the .mpy version this node loads
        # (sys.implementation._mpy), n: offset of the next part (absent:
        # complete)}
        try:
            from _hash import hashes
        except ImportError:
            hashes = {}
        g = digest(hashes)
        ps = dirs()
        es = []
        if t != g:
            for k in hashes:
                es.append((k, hashes[k], 0))
        for d in ps:
            if d == ".frozen":
                continue
            try:
                it = os.ilistdir(d or ".")
            except OSError:
                continue
            for e in it:
                n = e[0]
                if e[1] & 0x4000 or not n.endswith(_EXT):
                    continue
                p = d + "/" + n if d else n
                try:
                    es.append((p, fhash(p), 1))
                except OSError:
                    pass
        r = {"t": g, "p": ps}
        if o == 0:
            r["l"] = _ledger()
            r["v"] = getattr(sys.implementation, "_mpy", None)
        # as many entries as fit in one message; `n` says where to go on
        room = self.root.m - 96 - sum(len(x) + 2 for x in r.get("l", ()))
        f = {}
        v = []
        j = o
        while j < len(es):
            k, h, w = es[j]
            room -= len(k) + 13
            if room < 0 and j > o:
                r["n"] = j
                break
            if w:
                v.append([k, h])
            else:
                f[k] = h
            j += 1
        if t != g and o == 0 or f:
            r["f"] = f
        r["o"] = v
        return r

    def cmd_drop(self, m=()):
        # forget modules, so the next import reads them again
        for n in m:
            try:
                del sys.modules[n]
            except KeyError:
                pass

    def cmd_load(self, m=()):
        # import each module: {name: why} for those that fail. One at a
        # time, and a module nothing had loaded is forgotten again, so the
        # check costs no RAM; the answer stays small (first few failures).
        import gc

        r = {}
        for n in m:
            was = n in sys.modules
            try:
                __import__(n)
            except Exception as e:
                r[n] = repr(e)[:80]
                if len(r) >= 8:
                    break
            if not was:
                sys.modules.pop(n, None)
            gc.collect()
        return r
