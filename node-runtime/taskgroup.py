# moat node runtime: structured concurrency (stock MicroPython has no TaskGroup).
#
#   async with TaskGroup() as tg:
#       t = tg.start(coro())
# Leaving the block waits for every task. The first task that raises cancels
# the others and its exception is raised from the block; a cancelled task is
# not an error. tg.cancel() stops everything (the block then ends normally).
import asyncio


class TaskGroup:
    def __init__(self):
        self.tasks = []
        self.err = None
        self.ev = asyncio.Event()
        self.ev.set()

    def start(self, coro):
        ts = self.tasks
        ts.append(None)  # the list grows first: a MemoryError below leaves nothing
        try:
            t = asyncio.create_task(self._run(coro))
        except MemoryError:
            ts.pop()
            raise
        ts[-1] = t
        self.ev.clear()
        return t

    async def _run(self, coro):
        try:
            await coro
        except asyncio.CancelledError:
            pass
        except Exception as e:
            if self.err is None:
                self.err = e
            self.cancel()
        finally:
            t = asyncio.current_task()
            if t in self.tasks:
                self.tasks.remove(t)
            if not self.tasks:
                self.ev.set()

    def cancel(self):
        me = asyncio.current_task()
        for t in self.tasks:
            if t is not me:
                t.cancel()

    async def wait(self):
        while self.tasks:
            await self.ev.wait()
        if self.err is not None:
            e = self.err
            self.err = None
            raise e

    async def __aenter__(self):
        return self

    async def __aexit__(self, et, ev, tb):
        if ev is not None:
            self.cancel()
        try:
            await self.wait()
        except asyncio.CancelledError:
            self.cancel()
            while self.tasks:
                await self.ev.wait()
            raise
        return False
