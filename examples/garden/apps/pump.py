# A pump on a relay pin. It never runs longer than `max_s` seconds.
#   moat cmd pump pump.on s=10   moat cmd pump pump.off   moat cmd pump pump.state
import asyncio
from app import App


class Pump(App):
    def __init__(self, cfg, name, root):
        super().__init__(cfg, name, root)
        from machine import Pin

        self.pin = Pin(cfg.get("pin", 5), Pin.OUT, value=0)
        self.left = 0

    async def run(self):
        while True:
            await asyncio.sleep(1)
            if self.left > 0:
                self.left -= 1
                if not self.left:
                    self.pin.value(0)

    def cmd_on(self, s=10):
        self.left = max(1, min(int(s), self.cfg.get("max_s", 30)))
        self.pin.value(1)
        return self.left

    def cmd_off(self):
        self.left = 0
        self.pin.value(0)

    def cmd_state(self):
        return self.left

    def stop(self):
        self.pin.value(0)
