"""``ota-hil sim``: one distribution session on a simulated fleet, no MQTT, with its costs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from .common import PhaseBars

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kib|kb|k|mib|mb|m)?\s*$", re.IGNORECASE)
_UNITS = {
    None: 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
}


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    match = _SIZE.match(value)
    if not match:
        raise click.BadParameter(f"{value!r}: a size such as 131072, 128KiB or 1MiB")
    number, unit = match.groups()
    size = int(float(number) * _UNITS[unit.lower() if unit else None])
    if size <= 0:
        raise click.BadParameter("the image must have at least one byte")
    return size


@click.command("sim")
@click.option("--radio", type=click.Choice(["324", "ble"]), default="324", show_default=True)
@click.option("--nodes", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option(
    "--loss",
    type=click.FloatRange(0, 0.95),
    default=0.1,
    show_default=True,
    help="Mean frame loss per node, 0..0.95.",
)
@click.option(
    "--burst",
    type=click.FloatRange(min=1),
    default=1.0,
    show_default=True,
    help="Mean loss burst in frame times (1: independent loss).",
)
@click.option(
    "--spread",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Standard deviation of the loss across nodes.",
)
@click.option(
    "--image-size",
    callback=_size,
    default="128KiB",
    show_default=True,
    help="Image size: bytes, or with KiB/MiB.",
)
@click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="One seed, one run: the same seed repeats the session exactly.",
)
@click.option(
    "--fleet",
    "fleet_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A fleet file (YAML) instead of --radio/--nodes/--loss/--burst.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bars (none without a terminal).")
def sim_command(
    radio: str,
    nodes: int,
    loss: float,
    burst: float,
    spread: float,
    image_size: int,
    seed: int,
    fleet_file: Path | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Run one broadcast distribution on a simulated fleet and print what it cost.

    The gateway's real session logic runs against simulated nodes in virtual time:
    announce, broadcast, bitmap rounds with repair, key exchange, start and verify.
    The data broadcasts are compared with the ARQ lower bound K*E[max of N geometric]
    and the ideal-code bound K/(1-p).
    """
    from sims.fleetfile import FleetFileError, FleetSpec, load_fleet
    from sims.standalone import run_standalone

    try:
        if fleet_file is not None:
            spec = load_fleet(fleet_file)
        else:
            spec = FleetSpec(
                radio=radio, nodes=nodes, loss=loss, burst=burst, loss_spread=spread, seed=seed
            )
    except (FleetFileError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    from rich.console import Console

    console = Console(highlight=False)
    try:
        if as_json or no_progress or not console.is_terminal:
            run = run_standalone(spec, image_size)
        else:
            with SessionBars(console, spec.nodes) as bars:
                run = run_standalone(spec, image_size, on_action=bars.action, tap=bars)
    except ValueError as exc:  # e.g. an image too big for the protocol's block count
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(run.to_dict(), indent=2))
        return
    click.echo(_table(run.to_dict()))


class SessionBars(PhaseBars):
    """A bar per phase of the session: the image's blocks on their first broadcast, then
    the nodes that hold the whole image, took the key, were started, and ended."""

    def __init__(self, console: Any, nodes: int) -> None:
        from harness.gateway.distribution.session import PROGRESS

        super().__init__(console)
        #: Node progress (0..100 of the node upgrade) that marks the end of each phase.
        self.marks = (
            ("image complete", PROGRESS["complete"]),
            ("key exchanged", PROGRESS["key"]),
            ("started", PROGRESS["started"]),
        )
        self.blocks = self.phase("broadcast (distinct blocks)", unit="blocks")
        self.phases = [self.phase(name, nodes, "nodes") for name, _ in self.marks]
        self.ended = self.phase("ended", nodes, "nodes")
        self._sent: set[int] = set()
        self._reached: list[set[str]] = [set() for _ in self.marks]

    def broadcast(self, vt: float, raw: bytes, heard: Any) -> None:
        from harness.nodeproto.frames import (
            Block,
            FrameError,
            FrameKind,
            decode_frame,
            decode_payload,
        )

        try:
            frame = decode_frame(raw)
            if frame.kind is FrameKind.ANNOUNCE and frame.count == 1:
                announce = decode_payload(frame.kind, frame.session, frame.payload)
                size, block = announce.image_size, announce.block_size  # type: ignore[attr-defined]
                self.progress.update(self.blocks, total=-(-size // block))
            elif frame.kind is FrameKind.BLOCK and frame.count == 1:
                block = decode_payload(frame.kind, frame.session, frame.payload)
                if isinstance(block, Block) and block.index not in self._sent:
                    self._sent.add(block.index)
                    self.progress.update(self.blocks, completed=len(self._sent))
        except FrameError:
            return

    def unicast(self, vt: float, raw: bytes, to: str, heard: bool) -> None:
        pass

    def uplink(self, vt: float, node: str, raw: bytes, lost: bool) -> None:
        pass

    def action(self, action: Any) -> None:
        from harness.nodeproto.link import NodeProgress, NodeResult

        if isinstance(action, NodeProgress):
            for (_, mark), reached, task in zip(
                self.marks, self._reached, self.phases, strict=True
            ):
                if action.progress >= mark and action.node not in reached:
                    reached.add(action.node)
                    self.progress.update(task, completed=len(reached))
        elif isinstance(action, NodeResult):
            self.progress.advance(self.ended)


def _table(r: dict[str, Any]) -> str:
    m = r["metrics"]
    air = m["airtime"]
    total = m["total_airtime"] or 1.0
    data = air.get("BLOCK", 0.0)
    lines = [
        (
            "fleet",
            f"{r['nodes']} {r['radio']} nodes, {r['loss']:.1%} loss, burst {r['burst']:g}, "
            f"seed {r['seed']}",
        ),
        ("image", f"{r['image_size']:,} bytes in {m['blocks']:,} blocks of {r['block_size']} B"),
        ("outcome", f"{r['upgraded']} upgraded, {r['failed']} failed"),
        (
            "data",
            f"{m['data_broadcasts']:,} block broadcasts: {r['data_vs_arq_bound']:.3f}x the "
            f"ARQ bound ({r['arq_bound']:,.0f}), "
            f"{m['data_broadcasts'] / max(r['ideal_code_bound'], 1):.2f}x the ideal code "
            f"({r['ideal_code_bound']:,.0f})",
        ),
        (
            "repair",
            f"{m['repair_rounds']} rounds, {m['queries']:,} bitmap queries, "
            f"{m['bitmap_bytes']:,} bitmap bytes",
        ),
        (
            "unicast",
            f"{sum(m['unicast_frames'].values()):,} frames to nodes, "
            f"{sum(m['received_frames'].values()):,} messages back, "
            f"{m['timeouts']:,} timeouts",
        ),
        (
            "airtime",
            f"{total:,.1f} s: data {data:,.1f} s, control {total - data:,.1f} s "
            f"({m['control_share']:.1%})",
        ),
        ("per node", _per_node(m["airtime_by_node"])),
        ("duration", f"{m['duration']:,.1f} s simulated in {r['wall_seconds']:.2f} s"),
    ]
    width = max(len(k) for k, _ in lines)
    out = [f"{k:<{width}}  {v}" for k, v in lines]
    out.append("")
    out.append(f"{'airtime by kind':<17}{'seconds':>10}{'share':>8}")
    for kind, seconds in sorted(air.items(), key=lambda kv: -kv[1]):
        out.append(f"  {kind:<15}{seconds:>10.1f}{seconds / total:>8.1%}")
    if r["failures"]:
        out.append("")
        out.append("failures")
        for node, reason in list(r["failures"].items())[:20]:
            out.append(f"  {node}: {reason}")
        if len(r["failures"]) > 20:
            out.append(f"  ... and {len(r['failures']) - 20} more")
    return "\n".join(out)


def _per_node(airtime: dict[str, float]) -> str:
    if not airtime:
        return "no unicast airtime"
    busiest = max(airtime, key=airtime.__getitem__)
    mean = sum(airtime.values()) / len(airtime)
    return (
        f"unicast airtime {mean * 1000:,.0f} ms on average, most {airtime[busiest] * 1000:,.0f}"
        f" ms ({busiest})"
    )
