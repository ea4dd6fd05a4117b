# The UART link opens the UART the config names, with the keys moat writes
# from the manifest (`uart = N` → `n`, `tx`/`rx` pins, `baud` → `b`):
#   micropython node-runtime/tests/test_link_uart.py
import sys

fails = []


def check(ok, what):
    if not ok:
        fails.append(what)
        print("FAIL", what)


class FakePin:
    def __init__(self, n):
        self.n = n


class FakeUART:
    made = []

    def __init__(self, id, *a, **kw):
        FakeUART.made.append((id, a, kw))


class FakeMachine:
    UART = FakeUART
    Pin = FakePin


sys.modules["machine"] = FakeMachine
from link_uart import _open


def opened(c):
    FakeUART.made.clear()
    _open(c)
    check(len(FakeUART.made) == 1, "one UART for %r" % (c,))
    return FakeUART.made[0]


def baud(u):
    return u[2].get("baudrate", u[1][0] if u[1] else None)


# the config `moat build` writes for `link = {kind = "serial", uart = 1, baud = 9600}`
u = opened({"b": 9600, "m": 255, "t": 1000, "w": 8, "r": 5, "n": 1})
check(u[0] == 1, "uart = 1 opens UART 1, got %r" % (u[0],))
check(baud(u) == 9600, "baud 9600, got %r" % (baud(u),))

# tx/rx pins are passed on as pins
u = opened({"b": 115200, "n": 2, "tx": 4, "rx": 5})
check(u[0] == 2, "uart = 2 opens UART 2")
tx = u[2].get("tx")
rx = u[2].get("rx")
check(isinstance(tx, FakePin) and tx.n == 4, "tx pin 4")
check(isinstance(rx, FakePin) and rx.n == 5, "rx pin 5")

# no number: UART 0, default baud
u = opened({})
check(u[0] == 0 and baud(u) == 115200, "defaults: UART 0 at 115200, got %r" % (u,))

if fails:
    print("FAILED test_link_uart:", len(fails))
    sys.exit(1)
print("OK test_link_uart")
