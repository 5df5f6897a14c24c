import asyncio

import pytest

from tomolock.service.ingest import LatestQueue, QueueClosed


def drain(q: LatestQueue) -> list:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def test_plain_newest_wins_drops_oldest():
    q: LatestQueue[int] = LatestQueue(3)
    dropped = [q.put(i) for i in range(10)]
    assert dropped == [None, None, None, 0, 1, 2, 3, 4, 5, 6]
    assert q.dropped_overload == 7
    assert drain(q) == [7, 8, 9]


def test_lossless_items_kept_in_order_and_unbounded():
    # Strings are lossless, ints droppable.
    q: LatestQueue[object] = LatestQueue(2, droppable=lambda x: isinstance(x, int))
    seq = ["start-A", 1, 2, "dark", 3, 4, "end-A", "start-B", 5, 6, 7, "end-B"]
    for item in seq:
        q.put(item)
    assert q.dropped_overload == 5
    assert q.lossless_depth == 5
    assert q.droppable_depth == 2
    assert q.max_lossless_depth == 5
    # Only the two newest ints survive, and they stay after start-B.
    assert drain(q) == ["start-A", "dark", "end-A", "start-B", 6, 7, "end-B"]


def test_get_waits_then_close_drains_then_raises():
    async def scenario():
        q: LatestQueue[int] = LatestQueue(1)
        getter = asyncio.create_task(q.get())
        await asyncio.sleep(0)
        assert not getter.done()
        q.put(42)
        assert await getter == 42
        q.put(1)
        q.close()
        assert await q.get() == 1
        with pytest.raises(QueueClosed):
            await q.get()
        with pytest.raises(QueueClosed):
            q.put(2)
        with pytest.raises(asyncio.QueueEmpty):
            q.get_nowait()

    asyncio.run(scenario())


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_bad_maxsize_rejected(bad):
    with pytest.raises(ValueError, match="maxsize"):
        LatestQueue(bad)
