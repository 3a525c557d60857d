"""What every ``ota-hil`` command shares: logging, running until a signal, common options."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click

LOG_LEVELS = ("debug", "info", "warning", "error")

#: Libraries that narrate at INFO what nobody running the harness needs to read.
_CHATTY = ("transitions", "amqtt", "aiohttp.access")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.root.level))


def log_level_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="info",
        show_default=True,
        help="Threshold for log lines on stderr.",
    )(func)


def say(text: str) -> None:
    """A line for the person at the terminal (stdout, flushed: scripts read it)."""
    click.echo(text)
    sys.stdout.flush()


def serve(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` until it returns; SIGINT and SIGTERM set ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    asyncio.run(runner())


class PhaseBars:
    """One progress bar per phase of a long command (rich), shown within a ``with``."""

    def __init__(self, console: Any, width: int = 26) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(
            TextColumn(f"{{task.description:<{width}}}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            console=console,
        )

    def phase(self, name: str, total: int | None = None, unit: str = "") -> Any:
        """A bar; its id for ``self.progress.update``."""
        return self.progress.add_task(name, total=total, unit=unit)

    def __enter__(self) -> Any:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
