"""Small asyncio helpers the drivers share."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("ota_hil")


async def cancel_and_wait(*tasks: asyncio.Task[object] | None, timeout: float = 5.0) -> None:
    """Cancel ``tasks`` and wait for them to end, cancelling again while they linger.

    Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives as its
    inner future completes (aiomqtt waits that way), leaving a task that was told to stop
    waiting forever; re-cancelling until it ends closes that gap. The wait itself runs to
    its end even if the caller is cancelled meanwhile (so a cleanup in a ``finally`` is not
    cut short and no task is left pending); the caller's cancellation is re-raised after.
    """
    job = asyncio.ensure_future(_cancel_until_done(tasks, timeout))
    interrupted = False
    while not job.done():
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            interrupted = True
    job.result()
    if interrupted:
        raise asyncio.CancelledError


async def _cancel_until_done(
    tasks: tuple[asyncio.Task[object] | None, ...], timeout: float
) -> None:
    pending = {t for t in tasks if t is not None and not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            names = sorted(t.get_name() for t in pending)
            log.error("tasks did not stop within %.1f s: %s", timeout, names)
            return
        _, pending = await asyncio.wait(pending, timeout=min(0.1, remaining))
    for task in tasks:
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
