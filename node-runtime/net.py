# moat node runtime: network bring-up from the `net` config section:
#   net: {ssid: "...", pw: "...", t: 20}   (Wi-Fi station; t: seconds to wait)
# Boards without `network` (the unix port) have nothing to do.
import asyncio
import err


async def up(c):
    try:
        import network
    except ImportError:
        return
    w = network.WLAN(network.STA_IF)
    w.active(True)
    if not w.isconnected():
        w.connect(c.get("ssid"), c.get("pw"))
        for _ in range(c.get("t", 20) * 10):
            if w.isconnected():
                break
            await asyncio.sleep_ms(100)
    if w.isconnected():
        err.log("net up:", w.ifconfig()[0])
    else:
        err.log("net: not connected to", c.get("ssid"))
