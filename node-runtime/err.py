# moat node runtime: protocol errors and their well-known proxy names.
import errno
from msgpack import Proxy


class NoPath(Exception):  # args: (path, reason)
    pass


class Stopped(Exception):
    pass


class LinkDown(Exception):
    pass


class DupSeq(Exception):
    pass


class FileNotFound(OSError):  # args: (path,)
    pass


class FileExists(OSError):  # args: (path,)
    pass


class RemoteError(Exception):  # a peer's "E:..." error
    pass


try:
    from asyncio import CancelledError
except ImportError:  # pragma: no cover
    CancelledError = Stopped

# most specific first: the first isinstance() match names the proxy
_MAP = (
    (FileNotFound, "_FnErr"),
    (FileExists, "_FxErr"),
    (NoPath, "_NPErr"),
    (Stopped, "_StpErr"),
    (CancelledError, "_StpErr"),
    (LinkDown, "_LnkErr"),
    (DupSeq, "_DupErr"),
    (KeyError, "_KyErr"),
    (AttributeError, "_AtErr"),
    (NotImplementedError, "_NiErr"),
    (ValueError, "_VaErr"),
    (TypeError, "_TyErr"),
    (OSError, "_OsErr"),
)


def encode(exc):
    # -> (e, d): a proxy and the args, or ("E:"+repr, None)
    for cls, name in _MAP:
        if isinstance(exc, cls):
            a = list(exc.args)
            if cls is OSError and a and isinstance(a[0], int):
                a = [a[0], errno.errorcode.get(a[0], "")]
            return Proxy(name), a
    return "E:" + repr(exc), None


def decode(e, d):
    # a peer's error reply -> an exception to raise
    if isinstance(e, Proxy):
        for cls, name in _MAP:
            if name == e.name:
                if cls is CancelledError:
                    cls = Stopped
                return cls(*(d if isinstance(d, list) else ()))
        return RemoteError(e.name, d)
    return RemoteError(e)


def log(*a):
    # console output: ASCII only, so a lossless stream link stays parseable
    s = " ".join(x if isinstance(x, str) else repr(x) for x in a)
    try:
        s.encode().decode("ascii")
    except Exception:
        s = "".join(c if ord(c) < 127 else "?" for c in s)
    print("moat:", s)
