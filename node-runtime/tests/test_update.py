# update.py (`sys.up`, for moat diff-update), on MicroPython:
#   micropython node-runtime/tests/test_update.py
import os
import sys
import random
from update import Update, fhash, digest
from msgpack import packb

fails = []


def check(ok, what):
    if not ok:
        fails.append(what)
        print("FAIL", what)


class Root:
    m = 1024


def write(p, b):
    with open(p, "wb") as f:
        f.write(b)


base = os.getcwd()
d = "/tmp/moat-test-update-%d" % random.getrandbits(30)
os.mkdir(d)
os.chdir(d)
os.mkdir("lib")
write("a.py", b"A = 1\n")
write("b.mpy", b"M\x06\x00\x1f")
write("c.py.moat-tmp", b"half")
write("notes.txt", b"not a module")
write("lib/x.py", b"X = 2\n")
write("moat.upd", b"a\n")
saved = sys.path[:]
sys.path[:] = ["", ".frozen", "/lib", "/usr/lib/micropython"]
try:
    root = Root()
    u = Update({}, "up", root)
    r = u.cmd_mods()
    check(r["p"] == ["", ".frozen", "lib"], "search order: %r" % (r["p"],))
    files = sorted(r["o"])
    check(
        [p for p, _ in files] == ["a.py", "b.mpy", "c.py.moat-tmp", "lib/x.py"],
        "module files: %r" % (files,),
    )
    check(all(h == fhash(p) and len(h) == 8 for p, h in files), "file hashes")
    check(r["l"] == ["a"], "ledger: %r" % (r.get("l"),))
    check("n" not in r, "one part")
    f = r["f"]
    check(digest(f) == r["t"], "digest of the frozen table")
    check(r.get("v") == getattr(sys.implementation, "_mpy", None), "mpy version")

    # a host that knows the table does not get it again
    r2 = u.cmd_mods(t=r["t"])
    check("f" not in r2 and sorted(r2["o"]) == files, "known table left out")

    # small messages: parts that fit, and together the whole answer
    root.m = 160
    o = 0
    pf = {}
    po = []
    parts = 0
    while True:
        p = u.cmd_mods(o=o)
        parts += 1
        check(len(packb(p)) <= root.m, "part %d fits: %d bytes" % (parts, len(packb(p))))
        pf.update(p.get("f", {}))
        po.extend(p["o"])
        if "n" not in p:
            break
        check(p["n"] > o, "parts move forward")
        o = p["n"]
        if parts > 200:
            break
    check(parts > 1 or len(f) < 3, "split into parts: %d" % parts)
    check(pf == f and sorted(po) == files, "parts add up to the whole")

    # load: failures reported, modules nothing had loaded forgotten again
    sys.path.insert(0, d)
    e = u.cmd_load(["a", "no_such_module"])
    check(list(e) == ["no_such_module"], "load failures: %r" % (e,))
    check("a" not in sys.modules, "checked module forgotten again")
    import a

    check(a.A == 1, "import a")
    u.cmd_load(["a"])
    check("a" in sys.modules, "a module loaded before stays")
    u.cmd_drop(["a", "never_loaded"])
    check("a" not in sys.modules, "dropped")
finally:
    sys.path[:] = saved
    os.chdir(base)
    for p in ("a.py", "b.mpy", "c.py.moat-tmp", "notes.txt", "lib/x.py", "moat.upd"):
        try:
            os.remove(d + "/" + p)
        except OSError:
            pass
    os.rmdir(d + "/lib")
    os.rmdir(d)

if fails:
    print("FAILED test_update:", len(fails))
    sys.exit(1)
print("OK test_update")
