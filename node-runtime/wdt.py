# moat node runtime: the watchdog (docs/protocol.md: Watchdog), config section `wdt`:
#   t: timeout in s (default 10): a `sys.wdt` must arrive at least every t s
#   s: start: 0 at the first sys.wdt, 1 immediately, 2 after network,
#      3 before apps, 4 before the main loop (default 0)
#   n: after an automatic start the node feeds itself for the first n
#      periods (default 3, at least 60 s; -1 none); the first sys.wdt ends it
# On a device the hardware watchdog is fed while keepalives arrive; when
# they stop the board resets. On the unix port the process exits with
# status 3 (a crash: the next start uses the fallback config).
import sys
import asyncio
from time import ticks_ms, ticks_diff
from app import App
import err


class Watchdog(App):
    def __init__(self, cfg, name, root):
        super().__init__(cfg, name, root)
        self.t = max(1, cfg.get("t", 10)) * 1000
        n = cfg.get("n", 3)
        self.grace = -1 if n < 0 else max(n * self.t, 60000)
        self.on = False
        self.hw = None
        self.last = 0
        self.ev = asyncio.Event()
        if root.wdt is None:  # listed as an app without a `wdt` section
            root.wdt = self

    def start(self):
        if self.on:
            return
        self.on = True
        self.last = ticks_ms()
        self.g0 = self.last
        if sys.platform != "linux":
            try:
                from machine import WDT

                self.hw = WDT(timeout=min(self.t, 8000))
            except Exception:
                try:
                    from machine import WDT

                    self.hw = WDT()
                except Exception:
                    self.hw = None
        self.ev.set()

    def feed(self):
        # a keepalive from the host (`sys.wdt`): starts (s=0) and ends the grace period
        self.start()
        self.grace = -1
        self.last = ticks_ms()
        if self.hw is not None:
            self.hw.feed()

    def cmd_state(self):
        left = self.t - ticks_diff(ticks_ms(), self.last) if self.on else None
        return {"t": self.t // 1000, "on": self.on, "g": self.grace >= 0, "left": left}

    async def run(self):
        await self.ev.wait()
        while True:
            now = ticks_ms()
            if self.grace >= 0:
                if ticks_diff(now, self.g0) < self.grace:
                    self.last = now
                else:
                    self.grace = -1
            if ticks_diff(now, self.last) > self.t:
                err.log("watchdog: no keepalive for %d ms" % self.t)
                if self.hw is None:
                    sys.exit(3)
                try:
                    import machine

                    machine.reset()
                except Exception:
                    sys.exit(3)
            elif self.hw is not None:
                self.hw.feed()
            await asyncio.sleep_ms(min(500, self.t // 4))
