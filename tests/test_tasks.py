"""Bounded waits for tasks that talk to hardware (tomolock.service.tasks)."""

from __future__ import annotations

import asyncio
import logging

from tomolock.service.tasks import wind_down


async def test_wind_down_returns_the_stuck_and_reads_the_finished(caplog):
    release = asyncio.Event()

    async def fails() -> None:
        raise RuntimeError("IOC gone")

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    failing, stuck_task = asyncio.ensure_future(fails()), asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    stuck_task.cancel()
    with caplog.at_level(logging.DEBUG, logger="tomolock.service.tasks"):
        stuck = await wind_down([failing, stuck_task], 0.05, "feed task")
    assert stuck == {stuck_task}
    assert "feed task still pending" in caplog.text and "IOC gone" in caplog.text
    release.set()
    await asyncio.sleep(0.01)
    assert stuck_task.done()
    assert await wind_down([], 1.0, "nothing") == set()
