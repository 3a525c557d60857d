"""Benchmark: what evidence costs. A 1,000-node session (324, 10 % loss, 128 KiB) with and
without a trace recorder on the radio, the trace's size, reading and normalising it, and
rendering each Allure attachment from it; then the shipped example field reproduced.

    python benchmarks/traces.py [--nodes 1000] [--loss 0.1] [--image-size 131072]

Sessions are timed best of three. Targets on a 2-core machine: recording adds under 40 %
to a simulated session's wall time; every attachment of a 1,000-node trace renders in
under a second.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--loss", type=float, default=0.1)
    parser.add_argument("--image-size", type=int, default=128 * 1024)
    args = parser.parse_args()

    from harness.evidence import frame_excerpt, mqtt_transcript, progress_chart_svg, reception_png
    from harness.trace import TraceRecorder, normalise, read_trace
    from sims.fieldfile import load_field
    from sims.fleetfile import FleetSpec
    from sims.reproduce import reproduce
    from sims.standalone import run_standalone

    spec = FleetSpec(nodes=args.nodes, loss=args.loss, seed=1)
    rows: list[tuple[str, str]] = []
    bare = traced = float("inf")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "session.jsonl"
        for _ in range(3):  # best of three each, alternating
            bare = min(bare, timed(run_standalone, spec, args.image_size)[1])
            with TraceRecorder(path, source={"kind": "benchmark"}, seed=1, config=spec) as trace:
                trace.fleet("node-324", spec.radio, spec.node_ids(), spec)
                traced = min(traced, timed(run_standalone, spec, args.image_size, tap=trace)[1])
        size = path.stat().st_size
        rows += [
            ("session, no trace", f"{bare:.2f} s"),
            ("session, traced", f"{traced:.2f} s ({traced / bare - 1:+.0%})"),
            ("trace", f"{trace.events:,} events, {size / 2**20:.1f} MiB"),
        ]
        loaded, seconds = timed(read_trace, path)
        rows.append(("read_trace", f"{seconds:.2f} s"))
        _, seconds = timed(normalise, loaded.all)
        rows.append(("normalise", f"{seconds:.2f} s"))
        for name, render in (
            ("MQTT transcript", mqtt_transcript),
            ("frame excerpt", frame_excerpt),
            ("progress chart (SVG)", progress_chart_svg),
            ("reception picture (PNG)", reception_png),
        ):
            out, seconds = timed(render, loaded.all)
            rows.append((name, f"{seconds:.3f} s, {len(out or b''):,} bytes"))

        field = load_field(ROOT / "sims" / "fields" / "example-site7.yaml")
        with TraceRecorder(
            Path(folder) / "field.jsonl", source={"kind": "benchmark"}, seed=field.seed, config={}
        ) as trace:
            result, seconds = timed(asyncio.run, reproduce(field, trace=trace))
        rows.append(
            (
                "reproduce example-site7",
                f"{seconds:.2f} s wall for {result.radio_seconds:.0f} s of radio time "
                f"({len(result.outcomes)} nodes, {len(result.failed)} failed, 1 s of it a "
                "scheduled download stall)",
            )
        )
    print(f"{args.nodes} nodes, {args.loss:.0%} loss, {args.image_size:,}-byte image")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
