"""``ota-hil push``: upload a firmware, create a task, deploy it and watch the records."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import click

from ..client import PlatformApiError, PlatformClient
from ..platform import RecordState
from .common import say

_FINAL = {s.value for s in RecordState if s.final}


def _params(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE")
        out[key] = val
    return out


@click.command("push")
@click.argument("firmware", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--platform", "platform_url", required=True, help="The platform's http://host:port.")
@click.option("--product-id", required=True, help="Product the firmware is for.")
@click.option("--version", required=True, help="Version of this firmware.")
@click.option(
    "--device",
    "devices",
    multiple=True,
    help="Device to upgrade; repeatable. Without it: every device of the product.",
)
@click.option(
    "--sign-method",
    type=click.Choice(["md5", "sha256"], case_sensitive=False),
    default="md5",
    show_default=True,
)
@click.option("--sign", default=None, help="Sign to announce instead of the computed one.")
@click.option(
    "--param",
    "parameters",
    multiple=True,
    callback=_params,
    metavar="KEY=VALUE",
    help="Firmware parameter (e.g. target=gateway); repeatable.",
)
@click.option("--mode", type=click.Choice(["push", "pull"]), default="push", show_default=True)
@click.option(
    "--timeout",
    type=click.IntRange(min=0),
    default=600,
    show_default=True,
    help="timeoutSeconds: the whole upgrade.",
)
@click.option(
    "--response-timeout",
    type=click.IntRange(min=0),
    default=30,
    show_default=True,
    help="responseTimeoutSeconds: the device's reply to the push.",
)
@click.option(
    "--now/--on-timer",
    default=True,
    show_default=True,
    help="Send at once, or wait for the platform's next timer tick.",
)
@click.option(
    "--follow/--no-follow",
    default=True,
    show_default=True,
    help="Print record changes until every record has ended.",
)
@click.option(
    "--wait",
    type=float,
    default=900.0,
    show_default=True,
    help="Give up following after this many seconds.",
)
def push_command(
    firmware: Path,
    platform_url: str,
    product_id: str,
    version: str,
    devices: tuple[str, ...],
    sign_method: str,
    sign: str | None,
    parameters: dict[str, str],
    mode: str,
    timeout: int,
    response_timeout: int,
    now: bool,
    follow: bool,
    wait: float,
) -> None:
    """Push FIRMWARE to devices through the platform's REST API and follow the records.

    Exit status: 0 when every record succeeded, 1 when one failed or was canceled,
    2 when following timed out, 3 when the platform refused a request or could not be
    reached.
    """
    try:
        code = asyncio.run(
            _push(
                firmware,
                platform_url,
                product_id,
                version,
                list(devices),
                sign_method,
                sign,
                parameters,
                mode,
                timeout,
                response_timeout,
                now,
                follow,
                wait,
            )
        )
    except PlatformApiError as exc:
        raise HarnessError(f"platform refused: {exc}") from None
    except OSError as exc:
        raise HarnessError(f"cannot reach the platform at {platform_url}: {exc}") from None
    raise SystemExit(code)


class HarnessError(click.ClickException):
    """The platform refused or could not be reached: not a verdict on any device."""

    exit_code = 3


async def _push(
    firmware: Path,
    url: str,
    product_id: str,
    version: str,
    devices: list[str],
    sign_method: str,
    sign: str | None,
    parameters: dict[str, str],
    mode: str,
    timeout: int,
    response_timeout: int,
    now: bool,
    follow: bool,
    wait: float,
) -> int:
    async with PlatformClient(url) as client:
        fw = await client.upload_firmware(
            firmware.read_bytes(),
            product_id,
            version,
            name=firmware.name,
            sign_method=sign_method,
            sign=sign,
            parameters=parameters,
        )
        say(
            f"firmware   {fw['id']} version {fw['version']} ({fw['size']} bytes, "
            f"{fw['signMethod']} {fw['sign']})"
        )
        task = await client.create_task(
            fw["id"],
            name=f"{mode} {version}",
            mode=mode,
            timeoutSeconds=timeout,
            responseTimeoutSeconds=response_timeout,
        )
        deployed = await client.deploy(task["id"], devices or None)
        say(f"task       {task['id']} ({mode}), {deployed['total']} record(s)")
        watcher = RecordWatcher(client, task["id"])
        await watcher.poll()
        if now and mode == "push":
            await client.check_now()
        if not follow:
            return 0
        return await watcher.follow(wait)


class RecordWatcher:
    """Prints a line whenever a record's state or progress changes, and the path each took."""

    def __init__(self, client: PlatformClient, task_id: str) -> None:
        self.client = client
        self.task_id = task_id
        self.seen: dict[str, tuple[str, int]] = {}

    async def poll(self) -> list[dict[str, Any]]:
        records = await self.client.records(taskId=self.task_id)
        for r in records:
            now = (r["state"], r["progress"])
            if self.seen.get(r["deviceId"]) != now:
                self.seen[r["deviceId"]] = now
                reason = f"  {r['errorReason']}" if r["errorReason"] else ""
                say(f"{r['deviceId']:<20} {r['state']:<10} {r['progress']:>3}%{reason}")
        return records

    async def follow(self, wait: float) -> int:
        deadline = time.monotonic() + wait
        while True:
            records = await self.poll()
            if records and all(r["state"] in _FINAL for r in records):
                for r in records:
                    path = " -> ".join(h["state"] for h in r["history"])
                    say(f"{r['deviceId']:<20} {path}")
                return 0 if all(r["state"] == "success" for r in records) else 1
            if time.monotonic() > deadline:
                say(f"still running after {wait:g} s")
                return 2
            await asyncio.sleep(0.2)
