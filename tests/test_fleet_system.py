"""A fleet behind the gateway, through the real broker, platform and HTTP download: what
the scenarios do not show one by one."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from harness.cli import main
from harness.platform import PlatformConfig
from harness.system import OtaSystem, SystemConfig
from sims.attach import attach_fleet
from sims.fleetfile import FleetSpec

EXAMPLE_FLEET = Path(__file__).resolve().parents[1] / "sims" / "fleets" / "example-324.yaml"


async def _until_final(client: Any, task_id: str, timeout: float = 60.0) -> list[dict]:
    async with asyncio.timeout(timeout):
        while True:
            records = await client.records(taskId=task_id)
            if records and all(r["state"] in ("success", "failed") for r in records):
                return records
            await asyncio.sleep(0.1)


async def test_a_batch_downloads_once_and_runs_one_session() -> None:
    config = SystemConfig(platform=PlatformConfig(check_interval=0.1))
    async with OtaSystem(config) as system:
        attached = await attach_fleet(system, FleetSpec(nodes=30, loss=0.05, seed=9))
        client = system.client
        assert client is not None and system.gateway is not None
        fw = await client.upload_firmware(os.urandom(6000), attached.product_id, "2.0.0")
        task = await client.create_task(fw["id"], mode="push")
        await client.deploy(task["id"])
        records = await _until_final(client, task["id"])

        assert {r["state"] for r in records} == {"success"}
        downloads = [s for s in await client.file_log() if s["status"] == 200]
        assert len(downloads) == 1, downloads  # one package for thirty child jobs
        assert len(attached.upgrader.sessions) == 1
        state = json.loads((system.state_dir / "state.json").read_text())["versions"]
        assert all(state[node] == "2.0.0" for node in attached.fleet.ids)
        assert not list((system.state_dir / "downloads").iterdir())

        # Pushed again: every node already runs it, so no transfer and no new session.
        again = await client.create_task(fw["id"], mode="push", name="again")
        await client.deploy(again["id"])
        assert {r["state"] for r in await _until_final(client, again["id"])} == {"success"}
        assert len(attached.upgrader.sessions) == 1
        assert len([s for s in await client.file_log() if s["status"] == 200]) == 1


async def test_node_children_report_their_versions_when_attached() -> None:
    async with OtaSystem(SystemConfig(platform=PlatformConfig(check_interval=0.1))) as system:
        attached = await attach_fleet(system, FleetSpec(nodes=5, version="1.4.0", seed=2))
        assert system.client is not None
        async with asyncio.timeout(10):
            while True:
                devices = [await system.client.device(n) for n in attached.fleet.ids]
                if all(d["firmwareVersion"] == "1.4.0" for d in devices):
                    break
                await asyncio.sleep(0.05)
        assert {d["parentId"] for d in devices} == {system.config.gateway_id}
        assert await system.client.read_version(attached.fleet.ids[0]) == "1.4.0"


def test_sim_prints_the_costs_against_the_bounds() -> None:
    result = CliRunner().invoke(
        main, ["sim", "--nodes", "40", "--loss", "0.1", "--image-size", "4KiB", "--seed", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "40 upgraded, 0 failed" in result.output
    assert "ARQ bound" in result.output and "ideal code" in result.output
    assert "BLOCK" in result.output


def test_sim_json_is_deterministic_and_the_seed_matters() -> None:
    def run(seed: int) -> dict:
        args = [
            "sim",
            "--nodes",
            "30",
            "--loss",
            "0.2",
            "--burst",
            "3",
            "--image-size",
            "3000",
            "--seed",
            str(seed),
            "--json",
        ]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        data.pop("wall_seconds")
        return data

    first, again, other = run(4), run(4), run(5)
    assert first == again
    assert first["metrics"] != other["metrics"]
    assert first["upgraded"] == 30
    assert first["metrics"]["data_broadcasts"] >= first["metrics"]["blocks"]
    assert 0 < first["metrics"]["control_share"] < 1


def test_sim_refuses_a_bad_size_and_a_bad_fleet_file(tmp_path: Any) -> None:
    bad = CliRunner().invoke(main, ["sim", "--image-size", "lots"])
    assert bad.exit_code == 2 and "128KiB" in bad.output
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("nodes: 0\n")
    refused = CliRunner().invoke(main, ["sim", "--fleet", str(fleet)])
    assert refused.exit_code == 1
    assert "fleet.yaml" in refused.output and "nodes" in refused.output


def test_sim_runs_the_example_fleet_file() -> None:
    result = CliRunner().invoke(
        main, ["sim", "--fleet", str(EXAMPLE_FLEET), "--image-size", "8KiB"]
    )
    assert result.exit_code == 0, result.output
    assert "failures" in result.output  # the example has an offline node and a forged one


async def test_session_ids_never_repeat_across_gateway_restarts() -> None:
    """Nodes resume by session id: a restarted gateway must not reuse one."""
    config = SystemConfig(platform=PlatformConfig(check_interval=0.1))
    async with OtaSystem(config) as system:
        ids = []
        for version in ("2.0.0", "3.0.0"):
            attached = await attach_fleet(system, FleetSpec(nodes=3, seed=4))
            assert system.client is not None
            fw = await system.client.upload_firmware(os.urandom(800), attached.product_id, version)
            task = await system.client.create_task(fw["id"], mode="push", name=version)
            await system.client.deploy(task["id"])
            await _until_final(system.client, task["id"])
            ids.append(attached.upgrader.sessions[-1].plan.session_id)
            await system.start_gateway()  # a restart: a new agent and upgrader, same state
        assert ids[1] > ids[0] >= 1


async def test_a_second_fleet_of_the_same_kind_is_refused() -> None:
    async with OtaSystem(SystemConfig()) as system:
        await attach_fleet(system, FleetSpec(nodes=2, seed=1))
        try:
            await attach_fleet(system, FleetSpec(nodes=2, seed=2, id_prefix="other-"))
        except ValueError as exc:
            assert "node-324" in str(exc)
        else:
            raise AssertionError("a second 324 fleet was attached")


async def test_stopping_the_gateway_mid_session_aborts_it_and_fails_the_records() -> None:
    config = SystemConfig(platform=PlatformConfig(check_interval=0.1))
    async with OtaSystem(config) as system:
        attached = await attach_fleet(system, FleetSpec(nodes=300, loss=0.1, seed=5))
        client = system.client
        assert client is not None
        fw = await client.upload_firmware(os.urandom(64 * 1024), attached.product_id, "2.0.0")
        task = await client.create_task(fw["id"], mode="push")
        await client.deploy(task["id"])
        async with asyncio.timeout(20):
            while not attached.upgrader.sessions:
                await asyncio.sleep(0.01)
        await system.stop_gateway()  # the session is still on the radio
        session = attached.upgrader.sessions[0]
        assert session.done
        reasons = {r.reason for r in session.results.values() if not r.ok}
        assert any((why or "").startswith("session canceled") for why in reasons), reasons
        # Nodes that were not started were told to drop the session.
        not_started = [
            n for n, r in session.results.items() if "after the start" not in (r.reason or "")
        ]
        rows = [attached.fleet.index[n] for n in not_started]
        assert rows and (attached.fleet.arrays.session[rows] == -1).mean() > 0.5
        records = await _until_final(client, task["id"])
        assert {r["state"] for r in records} == {"failed"}
        assert all("shutting down" in r["errorReason"] for r in records)
