# A soil-moisture sensor: reads an ADC every `ms` (or simulates a drying
# bed with `sim = true`) and streams the level, 0 (dry) .. 100 (wet).
#   moat cmd pump bed.level          -> the last reading
#   streaming bed.level: the node sends each new reading
import asyncio
from app import App


class Sensor(App):
    def __init__(self, cfg, name, root):
        super().__init__(cfg, name, root)
        self.level = None
        self.adc = None
        if not cfg.get("sim"):
            from machine import ADC

            self.adc = ADC(cfg.get("adc", 0))

    def _read(self):
        if self.adc is None:
            # simulated: dries out by 1 per reading, watered back to 80
            v = self.level if self.level is not None else 80
            return 80 if v <= 20 else v - 1
        return self.adc.read() * 100 // 1024

    async def run(self):
        ms = self.cfg.get("ms", 1000)
        while True:
            self.level = self._read()
            await asyncio.sleep_ms(ms)

    def cmd_level(self):
        return self.level

    async def stream_level(self, send, r, **kw):
        last = None
        while True:
            if self.level != last:
                last = self.level
                send(last)
            await asyncio.sleep_ms(r or 500)
