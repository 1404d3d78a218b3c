"""The lean per-connection objects of a held WebSocket behave as the asyncio ones uvicorn would use."""

from __future__ import annotations

import asyncio

import pytest

from omega.constellation.lean_ws import Flag, Inbox


async def test_inbox_hands_items_in_order_and_waits_when_empty() -> None:
    inbox = Inbox()
    assert inbox.empty()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert (await inbox.get(), inbox.qsize(), await inbox.get()) == (1, 1, 2)
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not getter.done()
    inbox.put_nowait("late")
    assert await asyncio.wait_for(getter, 1) == "late"
    assert inbox.empty()


async def test_a_cancelled_get_loses_nothing() -> None:
    inbox = Inbox()
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    inbox.put_nowait("kept")
    assert await asyncio.wait_for(inbox.get(), 1) == "kept"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(inbox.get(), 0.01)


async def test_flag_wakes_every_waiter_on_set_and_blocks_after_clear() -> None:
    flag = Flag(True)
    assert flag.is_set() and await flag.wait()
    flag.clear()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True, True]
    flag.clear()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(flag.wait(), 0.01)
    flag.set()  # the timed-out waiter left nothing behind
    assert await flag.wait()
