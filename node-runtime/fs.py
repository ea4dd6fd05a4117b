# moat node runtime: the `fs` app (docs/protocol.md: What every node answers): files under a root
# folder (config `root`, default the node's own root), always binary.
# An open file belongs to the link whose peer opened it and is closed when
# that link detaches: a client that vanishes cannot use up the handles.
import os
import asyncio
from micropython import const
from app import App
from err import FileNotFound, FileExists
import errno
import proto

_DIR = 0x4000
_EMFILE = const(24)  # POSIX "too many open files"; MicroPython's errno lacks the name


class Files(App):
    """Files under the app's root folder (config `root`); always binary."""
    def __init__(self, cfg, name, root):
        super().__init__(cfg, name, root)
        r = cfg.get("root", "")
        self.base = r.rstrip("/") + "/" if r else ""
        self.fds = {}  # fd -> [file, link that opened it (None: unknown), path if written]
        self.fdn = 0
        self.max = cfg.get("f", 4)  # open files at most
        self.hook = self._gone  # one bound method, so stop() can remove it
        proto.detached.append(self.hook)

    def _p(self, p):
        # a path under the root; ".." that would leave it is refused
        if isinstance(p, (bytes, bytearray)):
            p = p.decode()
        if not isinstance(p, str):
            raise TypeError("path must be a string")
        out = []
        for s in p.split("/"):
            if s == "" or s == ".":
                continue
            if s == "..":
                if not out:
                    raise ValueError("path leaves the root", p)
                out.pop()
            else:
                out.append(s)
        q = "/".join(out)
        if not q:
            return self.base.rstrip("/") or "."
        return self.base + q

    def _err(self, e, p):
        n = e.args[0] if e.args else 0
        if n == errno.ENOENT:
            return FileNotFound(p)
        if n == errno.EEXIST:
            return FileExists(p)
        return e

    def _f(self, f):
        try:
            return self.fds[f][0]
        except (KeyError, TypeError):
            raise KeyError("no open file", f)

    def _caller(self):
        # the link whose peer sent the request this task serves
        t = asyncio.current_task()
        for l in self.root.links:
            for v in l.peer.values():
                if v is t:
                    return l
        return None

    def _gone(self, link):
        # a link detached: close the files its peer left open; an upload's
        # temporary file (`*.part`, moat fs put) it left open is removed:
        # the put was killed, nobody will finish or rename it
        for f in [f for f, e in self.fds.items() if e[1] is link]:
            q = self._close(f)
            if q is not None and q.endswith(".part"):
                try:
                    os.remove(q)
                except OSError:
                    pass

    def _close(self, f):
        # -> the path of a file that was open for writing, else None
        e = self.fds.pop(f)
        try:
            e[0].close()
        except OSError:
            pass
        return e[2] if len(e) > 2 else None

    def cmd_open(self, p, m="r"):
        """Open file `p` with mode `m` (r, w, a) -> file descriptor."""
        if m not in ("r", "w", "a"):
            raise ValueError("mode must be r, w or a", m)
        if len(self.fds) >= self.max:
            raise OSError(_EMFILE, "too many open files")
        q = self._p(p)
        try:
            fh = open(q, m + "b")
        except OSError as e:
            raise self._err(e, p)
        self.fdn += 1
        self.fds[self.fdn] = [fh, self._caller(), q if m == "w" else None]
        return self.fdn

    def cmd_rd(self, f, o=0, n=512):
        """Read up to `n` bytes of file `f` at offset `o`."""
        fh = self._f(f)
        fh.seek(o)
        return fh.read(min(n, self.root.m - 32))

    def cmd_wr(self, f, d, o=None):
        """Write bytes `d` to file `f` (at offset `o` when given) -> bytes written."""
        fh = self._f(f)
        if o is not None:
            fh.seek(o)
        return fh.write(d)

    def cmd_cl(self, f):
        """Close file `f`."""
        self._f(f)
        self._close(f)

    def stop(self):
        try:
            proto.detached.remove(self.hook)
        except ValueError:
            pass
        for f in list(self.fds):
            self._close(f)

    def cmd_ls(self, p="", x=False):
        """List folder `p`: names, or with x=True [{n: name, m: d|f, s: size}]."""
        q = self._p(p)
        try:
            it = os.ilistdir(q)
            r = []
            for e in it:
                if x:
                    t = e[1] & _DIR
                    r.append({"n": e[0], "m": "d" if t else "f", "s": 0 if t else self._size(q, e[0])})
                else:
                    r.append(e[0])
        except OSError as e:
            raise self._err(e, p)
        return r

    def _size(self, q, n):
        try:
            return os.stat(q + "/" + n)[6]
        except OSError:
            return 0

    def cmd_stat(self, p):
        """-> {m: d|f, s: size, t: mtime} of `p`."""
        try:
            s = os.stat(self._p(p))
        except OSError as e:
            raise self._err(e, p)
        return {"m": "d" if s[0] & _DIR else "f", "s": s[6], "t": s[8]}

    def cmd_hash(self, p, l=32):
        """The first `l` bytes of SHA-256 of file `p`."""
        import hashlib

        h = hashlib.sha256()
        b = bytearray(128)
        try:
            with open(self._p(p), "rb") as f:
                while True:
                    k = f.readinto(b)
                    if not k:
                        break
                    h.update(memoryview(b)[:k])
        except OSError as e:
            raise self._err(e, p)
        return h.digest()[:l]

    def cmd_mkdir(self, p):
        """Make folder `p`."""
        try:
            os.mkdir(self._p(p))
        except OSError as e:
            raise self._err(e, p)

    def cmd_rm(self, p):
        """Remove file `p`."""
        try:
            os.remove(self._p(p))
        except OSError as e:
            raise self._err(e, p)

    def cmd_rmdir(self, p):
        """Remove the empty folder `p`."""
        try:
            os.rmdir(self._p(p))
        except OSError as e:
            raise self._err(e, p)

    def cmd_mv(self, s, d):
        """Rename `s` to `d` (atomic; replaces `d`)."""
        a = self._p(s)
        b = self._p(d)
        try:
            os.rename(a, b)
        except OSError as e:
            if e.args and e.args[0] == errno.EEXIST:  # rename that does not replace
                os.remove(b)
                os.rename(a, b)
            else:
                raise self._err(e, s)
