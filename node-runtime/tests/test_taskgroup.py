# TaskGroup: structured cancellation and error propagation, on MicroPython:
#   micropython node-runtime/tests/test_taskgroup.py
import sys
import asyncio
from taskgroup import TaskGroup

fails = []


def check(ok, what):
    if not ok:
        fails.append(what)
        print("FAIL", what)


async def sleeper(log, name, ms):
    try:
        await asyncio.sleep_ms(ms)
        log.append(name + " done")
    except asyncio.CancelledError:
        log.append(name + " cancelled")
        raise


async def boom(ms):
    await asyncio.sleep_ms(ms)
    raise ValueError("boom")


async def main():
    # the block waits for every task
    log = []
    async with TaskGroup() as tg:
        tg.start(sleeper(log, "a", 10))
        tg.start(sleeper(log, "b", 20))
    check(log == ["a done", "b done"], "waits for all: %r" % log)

    # the first error cancels the siblings and is raised from the block
    log = []
    try:
        async with TaskGroup() as tg:
            tg.start(sleeper(log, "a", 1000))
            tg.start(boom(10))
        check(False, "error not raised")
    except ValueError as e:
        check(e.args == ("boom",), "the task's error: %r" % e)
    check(log == ["a cancelled"], "sibling cancelled: %r" % log)

    # cancel() ends the group without an error; a cancelled task is no error
    log = []
    async with TaskGroup() as tg:
        tg.start(sleeper(log, "a", 1000))
        t = tg.start(sleeper(log, "b", 1000))
        await asyncio.sleep_ms(5)
        t.cancel()
        await asyncio.sleep_ms(5)
        check(log == ["b cancelled"] and len(tg.tasks) == 1, "one task cancelled: %r" % log)
        tg.cancel()
    check(log == ["b cancelled", "a cancelled"], "group cancelled: %r" % log)

    # nested: an inner failure propagates through the outer group
    log = []

    async def inner():
        async with TaskGroup() as g:
            g.start(sleeper(log, "i", 1000))
            g.start(boom(5))

    try:
        async with TaskGroup() as tg:
            tg.start(inner())
            tg.start(sleeper(log, "o", 1000))
        check(False, "nested error not raised")
    except ValueError:
        pass
    check(sorted(log) == ["i cancelled", "o cancelled"], "nested cancel: %r" % log)

    # cancelling the task that runs the block cancels the group's tasks
    log = []

    async def owner():
        async with TaskGroup() as g:
            g.start(sleeper(log, "x", 1000))

    t = asyncio.create_task(owner())
    await asyncio.sleep_ms(5)
    t.cancel()
    await asyncio.sleep_ms(5)
    check(log == ["x cancelled"], "owner cancelled: %r" % log)


asyncio.run(main())
if fails:
    print("FAILED test_taskgroup:", len(fails))
    sys.exit(1)
print("OK test_taskgroup")
