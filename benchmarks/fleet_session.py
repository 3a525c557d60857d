"""Benchmark: a whole distribution session (announce to verify) for big 324 fleets.

    python benchmarks/fleet_session.py [--nodes 1000,10000] [--loss 0.1] [--image-size 131072]

Each size runs in its own process so its peak memory is its own. Targets on a 2-core
machine: 1,000 nodes within 5 s wall, 10,000 within 30 s and 2 GiB; data broadcasts
within 1.1x of the ARQ bound. Control airtime (announce, polls, keys, start, verify) is
reported as a share of all airtime.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def one(nodes: int, loss: float, image_size: int, seed: int) -> dict:
    from sims.fleetfile import FleetSpec
    from sims.standalone import run_standalone

    run = run_standalone(FleetSpec(nodes=nodes, loss=loss, seed=seed), image_size)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    m = run.metrics
    return {
        "nodes": nodes,
        "upgraded": run.upgraded,
        "wall_s": round(run.wall_seconds, 2),
        "peak_mib": round(peak_kib / 1024, 1),
        "data_broadcasts": m.data_broadcasts,
        "arq_bound": round(run.arq_bound),
        "vs_arq": round(run.arq_ratio, 3),
        "ideal_bound": round(run.ideal_bound),
        "repair_rounds": m.repair_rounds,
        "control_share": round(m.control_share, 3),
        "polling_share": round(m.polling_share, 3),
        "airtime_s": round(m.total_airtime, 1),
        "simulated_s": round(m.duration, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="1000,10000")
    parser.add_argument("--loss", type=float, default=0.1)
    parser.add_argument("--image-size", type=int, default=128 * 1024)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.loss, args.image_size, args.seed)))
        return
    rows = []
    for nodes in (int(n) for n in args.nodes.split(",")):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                str(nodes),
                "--loss",
                str(args.loss),
                "--image-size",
                str(args.image_size),
                "--seed",
                str(args.seed),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout))
        print(f"  {nodes} nodes: {rows[-1]['wall_s']} s", file=sys.stderr)
    cols = [
        "nodes",
        "upgraded",
        "wall_s",
        "peak_mib",
        "data_broadcasts",
        "arq_bound",
        "vs_arq",
        "ideal_bound",
        "repair_rounds",
        "control_share",
        "polling_share",
        "airtime_s",
        "simulated_s",
    ]
    print(f"324 radio, {args.loss:.0%} loss, {args.image_size // 1024} KiB image, seed {args.seed}")
    print("  ".join(f"{c:>15}" for c in cols))
    for row in rows:
        print("  ".join(f"{row[c]:>15}" for c in cols))


if __name__ == "__main__":
    main()
