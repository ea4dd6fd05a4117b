# test_serial.py again on the pure-Python fallback (a firmware built without
# the native module _moat): the same vectors and checks.
#   micropython node-runtime/tests/test_serial_python.py [vectors-dir]
import sys
import msgpack
import serpack

msgpack._N = None
serpack._N = None
f = __file__
d = f[: f.rfind("/")] if "/" in f else "."
if len(sys.argv) < 2:
    sys.argv.append(d + "/../../tests/vectors")
with open(d + "/test_serial.py") as src:
    exec(src.read())
