# Blink an LED. Without one (the unix port has no machine.Pin) the state is
# only kept, so the app can be tried on the host.
#   moat cmd sim led.state       -> True / False
#   moat cmd sim led.rate ms=100 -> blink faster
import asyncio
from app import App


class Blink(App):
    def __init__(self, cfg, name, root):
        super().__init__(cfg, name, root)
        self.on = False
        self.ms = cfg.get("ms", 500)
        try:
            from machine import Pin

            self.pin = Pin(cfg.get("pin", "LED"), Pin.OUT)
        except (ImportError, ValueError, TypeError):
            self.pin = None

    async def run(self):
        while True:
            self.on = not self.on
            if self.pin is not None:
                self.pin.value(self.on)
            await asyncio.sleep_ms(self.ms)

    def cmd_state(self):
        return self.on

    def cmd_rate(self, ms=None):
        if ms is not None:
            self.ms = max(10, int(ms))
        return self.ms
