# moat node runtime: the App base class (the API every satellite app uses).
"""Apps are what a node runs. The config names them:

    apps: {t: "thermo.Reader", fs: "fs.Files"}
    t: {pin: 4}                       # settings of app "t"

At boot the runtime imports `thermo`, calls `Reader(cfg, "t", root)` with
`cfg` = the section under the app's name (a dict; {} when absent) and
addresses it by the path ["t", ...].

    from app import App

    class Reader(App):
        def __init__(self, cfg, name, root):
            super().__init__(cfg, name, root)
            self.v = None

        async def run(self):            # optional: long-running task
            while True:
                self.v = read_sensor(self.cfg.get("pin", 4))
                await asyncio.sleep_ms(1000)

        def cmd_temp(self):             # ["t","temp"] -> reply value
            return self.v

        async def cmd_set(self, v=0):   # async is fine; kwargs from `d`
            ...

Rules:
- `cmd_NAME(self, **kw)`: a command; plain `def` or `async def`. Arguments
  are the request's `d` map as keywords. The return value is the reply; an
  object MsgPack cannot carry travels as a proxy. Raise to reply with an
  error (ValueError, KeyError, ... map to the protocol's well-known errors).
  Every request runs in its own task: a slow command never blocks the link.
- Streams: any command can be streamed by the caller (request with `r` ms:
  the runtime calls it every `r` ms). For a native stream define
  `async def stream_NAME(self, send, r, **kw)` and call `send(value)` for
  each new value (a slow link gets the latest; nothing is queued); return to
  end the stream. A stream_NAME without a cmd_NAME is still a command.
- `run()` (optional, async): started once the app is constructed, inside the
  node's TaskGroup. If it raises, the error is printed and sent as an
  unsolicited `{a: ["err", name], d: "E:..."}` message, and the app is
  rebuilt and restarted after a back-off (1 s, doubling, max 60 s). It is
  cancelled when the app is stopped (`cfg.x`, reboot).
- `stop()` (optional, plain or async): release resources on stop/restart.
- Sub-apps: put them in `self.apps` (a dict name -> App, or a list indexed
  by int); paths resolve through them: ["t", "probe", 2, "temp"]. For
  dynamic trees override `sub(self, key)` (return an App/None).
- `dir` is built in: `{c: [commands], d: {sub-app: class}, s: [native streams]}`.
- Docs: a command's docstring (else the comments opening it) is its doc
  for `moat doc`; `moat build` keeps it on the host, MicroPython drops it.
- `self.root` is the node: `await self.root.call(["other","cmd"], x=1)`
  sends a request out and returns the reply (raises on error or when its
  link is down). The link is picked by destination: a first element that
  names a peer node goes over the link to it (the rest of the path), else
  the config's `route` table, else up to the host (docs/protocol.md
  "Node-to-node links"); `self.root.send(path, d)`
  sends an unsolicited message on every link; `self.root.cfg` is the whole
  running config.

Keep apps small: this runs on an ESP8266 (tens of KB of heap).
"""


class App:
    """The base of every app: its `dir`, sub-apps through `apps`/`sub()`."""
    apps = None  # sub-apps: dict name -> App, or list

    def __init__(self, cfg, name, root):
        self.cfg = cfg
        self.name = name
        self.root = root

    def sub(self, key):
        # Return the sub-app addressed by `key` (str or int), or None.
        a = self.apps
        if a is None:
            return None
        try:
            return a[key]
        except (KeyError, IndexError, TypeError):
            return None

    def cmd_dir(self):
        """This app's commands: {c: [commands], d: {sub-app: class}, s: [native streams]}."""
        c = []
        s = []
        for k in dir(self):
            if k.startswith("cmd_"):
                c.append(k[4:])
            elif k.startswith("stream_"):
                s.append(k[7:])
                if not hasattr(self, "cmd_" + k[7:]):
                    c.append(k[7:])
        r = {"c": c}
        a = self.apps
        if a:
            if isinstance(a, dict):
                r["d"] = {k: type(v).__name__ for k, v in a.items()}
            else:
                r["d"] = {i: type(v).__name__ for i, v in enumerate(a)}
        if s:
            r["s"] = s
        return r
