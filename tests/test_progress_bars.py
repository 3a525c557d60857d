"""The progress bars of `ota-hil sim` and `ota-hil reproduce` follow what really happens:
fed by a real simulated session, every phase ends full."""

from __future__ import annotations

import io

from rich.console import Console

from harness.cli.field import PushBars
from harness.cli.sim import SessionBars
from sims.fleetfile import FleetSpec
from sims.reproduce import Snapshot
from sims.standalone import run_standalone


def _console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=100)


def test_session_bars_fill_phase_by_phase_from_a_real_session() -> None:
    spec = FleetSpec(nodes=12, loss=0.2, seed=3)
    with SessionBars(_console(), spec.nodes) as bars:
        run = run_standalone(spec, 4096, on_action=bars.action, tap=bars)
    tasks = {t.description: t for t in bars.progress.tasks}
    blocks = tasks["broadcast (distinct blocks)"]
    assert blocks.total == run.metrics.blocks and blocks.completed == blocks.total
    for phase in ("image complete", "key exchanged", "started", "ended"):
        assert tasks[phase].completed == tasks[phase].total == run.upgraded == 12, phase


def test_session_bars_leave_a_failed_node_short_of_the_phase_it_missed() -> None:
    spec = FleetSpec.from_dict(
        {"nodes": 6, "seed": 1, "overrides": [{"nodes": "2", "faults": {"offline": True}}]}
    )
    with SessionBars(_console(), spec.nodes) as bars:
        run_standalone(spec, 2048, on_action=bars.action, tap=bars)
    tasks = {t.description: t for t in bars.progress.tasks}
    assert tasks["image complete"].completed == 5  # the offline node never got the image
    assert tasks["ended"].completed == 6  # but it ended (failed)


def test_push_bars_show_a_snapshot() -> None:
    bars = PushBars(_console())
    bars.update(Snapshot(downloaded=600, size=1000, blocks_sent=7, blocks=20, finished=3, nodes=8))
    got = {t.description: (t.completed, t.total) for t in bars.progress.tasks}
    assert got == {
        "download": (600, 1000),
        "broadcast (1st pass)": (7, 20),
        "records ended": (3, 8),
    }
