"""The mock platform's REST API over real HTTP: JetLinks' envelope, products and devices,
files and firmware, tasks and records, and the mock-only endpoints."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from harness.broker import EmbeddedBroker
from harness.client import PlatformApiError, PlatformClient
from harness.platform import PlatformConfig, PlatformServer
from harness.protocol import now_ms as _now

IMAGE = b"gateway image 2.0.0 " * 100
NODE_IMAGE = b"node image" * 10


class Api:
    """Raw HTTP against the platform: (status, parsed JSON body)."""

    def __init__(self, base: str, http: aiohttp.ClientSession) -> None:
        self.base = base
        self.http = http

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, **kw) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        status, body = await self.call(method, path, **kw)
        assert status == 200, body
        assert body["status"] == 200 and body["message"] == "success", body
        return body["result"]

    async def bad(self, method: str, path: str, status: int = 400, **kw: Any) -> str:
        """Expect an error with JetLinks' error body; return its message."""
        got, body = await self.call(method, path, **kw)
        assert got == status, body
        assert isinstance(body, dict), body
        assert body["status"] == status
        assert body["code"] == {400: "illegal_argument", 404: "not_found", 504: "timeout"}[status]
        assert isinstance(body["message"], str) and body["message"]
        return body["message"]

    async def upload(self, data: bytes, name: str = "fw.bin") -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
        return await self.ok("POST", "/file/upload", data=form)

    async def firmware(self, data: bytes = IMAGE, **body: Any) -> dict[str, Any]:
        stored = await self.upload(data)
        body = {"productId": "gw-product", "version": "2.0.0", "fileId": stored["id"], **body}
        return await self.ok("POST", "/firmware", json=body)

    async def task(self, firmware_id: str, **body: Any) -> dict[str, Any]:
        return await self.ok(
            "POST", "/firmware/upgrade/task", json={"name": "t", "firmwareId": firmware_id, **body}
        )


@pytest.fixture
async def api(platform_server: PlatformServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(
        trust_env=False, timeout=aiohttp.ClientTimeout(total=10)
    ) as http:
        yield Api(platform_server.url, http)


async def add_gateways(api: Api, *ids: str) -> None:
    for device_id in ids:
        await api.ok("POST", "/device-instance", json={"id": device_id, "productId": "gw-product"})


# -- envelope, products, devices -----------------------------------------------------------


async def test_success_envelope(api: Api) -> None:
    status, body = await api.call("POST", "/device-product", json={"id": "p1", "name": "Prod"})
    assert status == 200
    assert body == {"status": 200, "message": "success", "result": {"id": "p1", "name": "Prod"}}


async def test_error_envelope(api: Api) -> None:
    status, body = await api.call("GET", "/device-instance/ghost")
    assert status == 404
    assert set(body) == {"status", "code", "message"}
    assert body["status"] == 404 and body["code"] == "not_found"
    assert "ghost" in body["message"]


async def test_device_create_and_get(api: Api) -> None:
    created = await api.ok(
        "POST",
        "/device-instance",
        json={"id": "gw-2", "productId": "gw-product", "name": "GW 2", "firmwareVersion": "1.0.0"},
    )
    got = await api.ok("GET", "/device-instance/gw-2")
    assert got == created
    assert got["id"] == "gw-2" and got["productId"] == "gw-product" and got["name"] == "GW 2"
    assert got["parentId"] is None
    assert got["firmwareVersion"] == "1.0.0"
    assert isinstance(got["versionTime"], int)


async def test_fixture_device_is_there(api: Api) -> None:
    got = await api.ok("GET", "/device-instance/gw-1")
    assert (got["productId"], got["name"], got["firmwareVersion"]) == (
        "gw-product",
        "Gateway 1",
        None,
    )


async def test_child_device_has_its_parent(api: Api) -> None:
    await api.ok("POST", "/device-product", json={"id": "node-product"})
    await api.ok(
        "POST",
        "/device-instance",
        json={"id": "node-1", "productId": "node-product", "parentId": "gw-1"},
    )
    got = await api.ok("GET", "/device-instance/node-1")
    assert got["parentId"] == "gw-1"
    assert got["productId"] == "node-product"


async def test_unknown_parent_is_400(api: Api) -> None:
    message = await api.bad(
        "POST", "/device-instance", json={"id": "n", "productId": "gw-product", "parentId": "nope"}
    )
    assert "nope" in message and "parent" in message
    await api.bad("GET", "/device-instance/n", status=404)


async def test_own_parent_is_400(api: Api) -> None:
    message = await api.bad(
        "POST",
        "/device-instance",
        json={"id": "gw-1", "productId": "gw-product", "parentId": "gw-1"},
    )
    assert "own parent" in message


async def test_unknown_product_is_400(api: Api) -> None:
    message = await api.bad("POST", "/device-instance", json={"id": "x", "productId": "nope"})
    assert "nope" in message and "product" in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"id": "n", "productId": "gw-product", "parentId": "nope"},
            "unknown parent gateway 'nope'",
        ),
        ({"id": "n", "productId": "nope"}, "unknown product 'nope'"),
    ],
)
async def test_unknown_reference_message_quotes_the_id(
    api: Api, body: dict[str, str], expected: str
) -> None:
    assert await api.bad("POST", "/device-instance", json=body) == expected


@pytest.mark.parametrize("half", [{"secureId": "sid"}, {"secureKey": "key"}])
async def test_secure_id_and_key_go_together(api: Api, half: dict[str, str]) -> None:
    message = await api.bad(
        "POST", "/device-instance", json={"id": "gw-9", "productId": "gw-product", **half}
    )
    assert "secureId" in message and "secureKey" in message
    await api.bad("GET", "/device-instance/gw-9", status=404)


async def test_secret_is_not_echoed(api: Api) -> None:
    got = await api.ok(
        "POST",
        "/device-instance",
        json={"id": "gw-9", "productId": "gw-product", "secureId": "sid", "secureKey": "key"},
    )
    assert "key" not in json.dumps(got)


# -- body validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/device-product", "/device-instance", "/firmware", "/firmware/upgrade/task"],
)
async def test_non_json_body_is_400(api: Api, path: str) -> None:
    message = await api.bad(
        "POST", path, data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert "JSON" in message


async def test_empty_body_is_400(api: Api) -> None:
    assert "JSON" in await api.bad("POST", "/device-product")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/device-product", {"id": "p", "colour": "red"}),
        ("/device-instance", {"id": "d", "productId": "gw-product", "colour": "red"}),
        ("/firmware", {"productId": "gw-product", "version": "1", "fileId": "f", "colour": 1}),
        ("/firmware/upgrade/task", {"name": "t", "firmwareId": "f", "colour": 1}),
    ],
)
async def test_unknown_field_is_400_naming_it(api: Api, path: str, body: dict[str, Any]) -> None:
    message = await api.bad("POST", path, json=body)
    assert message.startswith("colour:")
    assert "Extra inputs" in message


async def test_missing_field_is_400_naming_it(api: Api) -> None:
    assert (await api.bad("POST", "/device-instance", json={"id": "d"})).startswith("productId:")
    assert (await api.bad("POST", "/device-product", json={"id": ""})).startswith("id:")


async def test_json_that_is_not_an_object_is_400(api: Api) -> None:
    assert "body" in await api.bad("POST", "/device-product", json=["p"])


# -- files and firmware --------------------------------------------------------------------


async def test_upload_file_multipart(api: Api, platform_server: PlatformServer) -> None:
    stored = await api.upload(IMAGE, "gw-2.0.0.bin")
    assert stored["name"] == "gw-2.0.0.bin"
    assert stored["size"] == len(IMAGE)
    assert stored["md5"] == hashlib.md5(IMAGE).hexdigest()
    assert stored["sha256"] == hashlib.sha256(IMAGE).hexdigest()
    prefix = f"{platform_server.url}/file/{stored['id']}?accessKey="
    assert stored["accessUrl"].startswith(prefix)
    assert len(stored["accessUrl"]) > len(prefix)


async def test_upload_needs_multipart_with_a_file_part(api: Api) -> None:
    assert "multipart" in await api.bad("POST", "/file/upload", json={"file": "x"})
    form = aiohttp.FormData()
    form.add_field("other", b"data", filename="x.bin")
    assert "'file'" in await api.bad("POST", "/file/upload", data=form)


@pytest.mark.parametrize(
    ("method", "digest"),
    [
        ("md5", hashlib.md5),
        ("MD5", hashlib.md5),
        ("sha256", hashlib.sha256),
        ("SHA256", hashlib.sha256),
    ],
)
async def test_firmware_sign_is_computed(
    api: Api, platform_server: PlatformServer, method: str, digest: Any
) -> None:
    stored = await api.upload(IMAGE)
    fw = await api.ok(
        "POST",
        "/firmware",
        json={
            "productId": "gw-product",
            "version": "2.0.0",
            "fileId": stored["id"],
            "signMethod": method,
            "parameters": {"test": "test"},
        },
    )
    assert fw["sign"] == digest(IMAGE).hexdigest()
    assert fw["signMethod"] == method  # kept as given; compared case-insensitively
    assert fw["size"] == len(IMAGE)
    assert fw["fileId"] == stored["id"]
    assert fw["parameters"] == {"test": "test"}
    assert fw["url"] == stored["accessUrl"]
    assert fw["url"].startswith(f"{platform_server.url}/file/{stored['id']}?accessKey=")
    async with api.http.get(fw["url"]) as resp:
        assert resp.status == 200
        assert digest(await resp.read()).hexdigest() == fw["sign"]
    assert await api.ok("GET", f"/firmware/{fw['id']}") == fw


async def test_given_sign_is_kept_as_is(api: Api) -> None:
    fw = await api.firmware(sign="0" * 32)
    assert fw["sign"] == "0" * 32


async def test_bad_sign_method_is_400_naming_it(api: Api) -> None:
    stored = await api.upload(IMAGE)
    message = await api.bad(
        "POST",
        "/firmware",
        json={
            "productId": "gw-product",
            "version": "2",
            "fileId": stored["id"],
            "signMethod": "crc32",
        },
    )
    assert message.startswith("signMethod")
    assert "md5" in message and "sha256" in message


async def test_unknown_file_id_is_400(api: Api) -> None:
    message = await api.bad(
        "POST", "/firmware", json={"productId": "gw-product", "version": "2", "fileId": "nope"}
    )
    assert message.startswith("fileId") and "nope" in message


async def test_firmware_of_unknown_product_is_400(api: Api) -> None:
    stored = await api.upload(IMAGE)
    message = await api.bad(
        "POST", "/firmware", json={"productId": "nope", "version": "2", "fileId": stored["id"]}
    )
    assert message.startswith("productId") and "nope" in message


async def test_version_order_counts_up_per_product_unless_given(api: Api) -> None:
    await api.ok("POST", "/device-product", json={"id": "node-product"})
    a = await api.firmware(version="2.0.0")
    b = await api.firmware(version="2.1.0")
    n = await api.firmware(NODE_IMAGE, productId="node-product", version="0.1")
    c = await api.firmware(version="3.0.0", versionOrder=10)
    d = await api.firmware(version="3.1.0")
    assert [x["versionOrder"] for x in (a, b, n, c, d)] == [1, 2, 1, 10, 11]
    listed = await api.ok("GET", "/firmware/_query", params={"productId": "node-product"})
    assert [f["id"] for f in listed] == [n["id"]]
    assert len(await api.ok("GET", "/firmware/_query")) == 5


# -- tasks ---------------------------------------------------------------------------------


async def test_task_defaults(api: Api) -> None:
    fw = await api.firmware()
    task = await api.task(fw["id"], name="roll out")
    assert task["name"] == "roll out"
    assert task["productId"] == "gw-product"
    assert task["firmwareId"] == fw["id"]
    assert task["mode"] == "push"
    assert (task["timeoutSeconds"], task["responseTimeoutSeconds"]) == (600, 30)
    assert task["releaseType"] == "all"
    assert task["state"] == "running"
    assert await api.ok("GET", f"/firmware/upgrade/task/{task['id']}") == task
    assert [t["id"] for t in await api.ok("GET", "/firmware/upgrade/task/_query")] == [task["id"]]


async def test_task_with_unknown_firmware_is_400(api: Api) -> None:
    message = await api.bad("POST", "/firmware/upgrade/task", json={"name": "t", "firmwareId": "x"})
    assert message.startswith("firmwareId") and "'x'" in message


async def test_task_with_a_device_of_another_product_is_400(api: Api) -> None:
    await api.ok("POST", "/device-product", json={"id": "node-product"})
    await api.ok("POST", "/device-instance", json={"id": "node-1", "productId": "node-product"})
    fw = await api.firmware()
    message = await api.bad(
        "POST",
        "/firmware/upgrade/task",
        json={"name": "t", "firmwareId": fw["id"], "releaseType": "part", "deviceId": ["node-1"]},
    )
    assert "node-1" in message and "node-product" in message
    message = await api.bad(
        "POST",
        "/firmware/upgrade/task",
        json={"name": "t", "firmwareId": fw["id"], "deviceId": ["ghost"]},
    )
    assert "ghost" in message
    assert await api.ok("GET", "/firmware/upgrade/task/_query") == []


async def test_task_product_must_be_the_firmwares(api: Api) -> None:
    await api.ok("POST", "/device-product", json={"id": "node-product"})
    fw = await api.firmware()
    message = await api.bad(
        "POST",
        "/firmware/upgrade/task",
        json={"name": "t", "firmwareId": fw["id"], "productId": "node-product"},
    )
    assert message.startswith("productId")


@pytest.mark.parametrize(
    "extra",
    [
        {"mode": "broadcast"},
        {"timeoutSeconds": -1},
        {"responseTimeoutSeconds": -5},
        {"releaseType": "some"},
        {"deviceId": "gw-1"},
    ],
)
async def test_task_field_validation(api: Api, extra: dict[str, Any]) -> None:
    fw = await api.firmware()
    message = await api.bad(
        "POST", "/firmware/upgrade/task", json={"name": "t", "firmwareId": fw["id"], **extra}
    )
    assert message.startswith(next(iter(extra)))


async def pull_task(api: Api, **body: Any) -> dict[str, Any]:
    """A pull-mode task: its records stay waiting (the scheduler pushes only push tasks)."""
    fw = await api.firmware()
    return await api.task(fw["id"], mode="pull", **body)


async def test_deploy_a_list_creates_waiting_records(api: Api) -> None:
    await add_gateways(api, "gw-2", "gw-3")
    task = await pull_task(api)
    result = await api.ok(
        "POST", f"/firmware/upgrade/task/{task['id']}/_deploy", json=["gw-1", "gw-3"]
    )
    expected = [hashlib.md5(f"{task['id']}{d}".encode()).hexdigest() for d in ("gw-1", "gw-3")]
    assert result == {"total": 2, "records": expected}

    records = await api.ok("GET", "/firmware/upgrade/history/_query", params={"taskId": task["id"]})
    assert sorted(r["deviceId"] for r in records) == ["gw-1", "gw-3"]
    for r in records:
        assert r["state"] == "waiting"
        assert r["version"] == "2.0.0"
        assert r["taskName"] == "t"
        assert [h["state"] for h in r["history"]] == ["waiting"]
        assert await api.ok("GET", f"/firmware/upgrade/history/{r['id']}") == r


async def test_deploy_without_body_uses_the_tasks_devices(api: Api) -> None:
    await add_gateways(api, "gw-2")
    task = await pull_task(api, releaseType="part", deviceId=["gw-2"])
    result = await api.ok("POST", f"/firmware/upgrade/task/{task['id']}/_deploy")
    assert result["total"] == 1
    (record,) = await api.ok(
        "GET", "/firmware/upgrade/history/_query", params={"taskId": task["id"]}
    )
    assert record["deviceId"] == "gw-2"


async def test_deploy_without_body_or_devices_is_400(api: Api) -> None:
    task = await pull_task(api, releaseType="part")
    assert "device ids" in await api.bad("POST", f"/firmware/upgrade/task/{task['id']}/_deploy")


async def test_deploy_without_body_on_release_type_all_takes_every_device(api: Api) -> None:
    await add_gateways(api, "gw-2")
    task = await pull_task(api, releaseType="all")
    result = await api.ok("POST", f"/firmware/upgrade/task/{task['id']}/_deploy")
    assert result["total"] == 2


async def test_deploy_all(api: Api) -> None:
    await add_gateways(api, "gw-2")
    await api.ok("POST", "/device-product", json={"id": "node-product"})
    await api.ok("POST", "/device-instance", json={"id": "node-1", "productId": "node-product"})
    task = await pull_task(api)
    result = await api.ok("POST", f"/firmware/upgrade/task/{task['id']}/all/_deploy")
    assert result["total"] == 2
    records = await api.ok("GET", "/firmware/upgrade/history/_query", params={"taskId": task["id"]})
    assert sorted(r["deviceId"] for r in records) == ["gw-1", "gw-2"]


async def test_deploy_all_of_a_product_without_devices_is_400(api: Api) -> None:
    await api.ok("POST", "/device-product", json={"id": "empty-product"})
    fw = await api.firmware(productId="empty-product")
    task = await api.task(fw["id"], mode="pull")
    message = await api.bad("POST", f"/firmware/upgrade/task/{task['id']}/all/_deploy")
    assert "empty-product" in message


@pytest.mark.parametrize(
    "body",
    ['{"deviceId": ["gw-1"]}', '"gw-1"', "[]", '[""]', "[1, 2]", '[["gw-1"]]', "null", "{}"],
)
async def test_deploy_bad_body_is_400_with_a_clear_message(api: Api, body: str) -> None:
    task = await pull_task(api)
    message = await api.bad(
        "POST",
        f"/firmware/upgrade/task/{task['id']}/_deploy",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert "JSON list of device ids" in message
    assert await api.ok("GET", "/firmware/upgrade/history/_query") == []


async def test_deploy_non_json_is_400(api: Api) -> None:
    task = await pull_task(api)
    message = await api.bad(
        "POST",
        f"/firmware/upgrade/task/{task['id']}/_deploy",
        data=b"gw-1",
        headers={"Content-Type": "text/plain"},
    )
    assert "JSON list of device ids" in message


async def test_deploy_unknown_or_foreign_device_is_400(api: Api) -> None:
    await api.ok("POST", "/device-product", json={"id": "node-product"})
    await api.ok("POST", "/device-instance", json={"id": "node-1", "productId": "node-product"})
    task = await pull_task(api)
    path = f"/firmware/upgrade/task/{task['id']}/_deploy"
    assert "ghost" in await api.bad("POST", path, json=["gw-1", "ghost"])
    assert "node-product" in await api.bad("POST", path, json=["node-1"])
    assert await api.ok("GET", "/firmware/upgrade/history/_query") == []


async def test_records_query_by_task_device_and_state(
    api: Api, platform_server: PlatformServer
) -> None:
    await add_gateways(api, "gw-2")
    t1 = await pull_task(api)
    t2 = await pull_task(api)
    await api.ok("POST", f"/firmware/upgrade/task/{t1['id']}/_deploy", json=["gw-1", "gw-2"])
    await api.ok("POST", f"/firmware/upgrade/task/{t2['id']}/_deploy", json=["gw-1"])
    failed = platform_server.platform.upgrades.records_of(task_id=t1["id"], device_id="gw-2")[0]
    failed.start(_now())
    failed.fail(_now(), "boom")

    async def query(**params: str) -> list[tuple[str, str, str]]:
        got = await api.ok("GET", "/firmware/upgrade/history/_query", params=params)
        return sorted((r["taskId"], r["deviceId"], r["state"]) for r in got)

    assert len(await query()) == 3
    assert await query(taskId=t2["id"]) == [(t2["id"], "gw-1", "waiting")]
    assert await query(deviceId="gw-2") == [(t1["id"], "gw-2", "failed")]
    assert await query(state="waiting") == sorted(
        [(t1["id"], "gw-1", "waiting"), (t2["id"], "gw-1", "waiting")]
    )
    assert await query(taskId=t1["id"], state="failed") == [(t1["id"], "gw-2", "failed")]
    assert await query(taskId=t1["id"], deviceId="gw-1", state="failed") == []
    assert await query(taskId="nope") == []


async def test_records_query_unknown_state_is_400(api: Api) -> None:
    message = await api.bad(
        "GET", "/firmware/upgrade/history/_query", params={"state": "upgrading"}
    )
    assert "upgrading" in message


async def test_stop_cancels_waiting_and_processing(
    api: Api, platform_server: PlatformServer
) -> None:
    await add_gateways(api, "gw-2", "gw-3")
    task = await pull_task(api)
    await api.ok("POST", f"/firmware/upgrade/task/{task['id']}/all/_deploy")
    book = platform_server.platform.upgrades
    processing = book.records_of(device_id="gw-2")[0]
    processing.start(_now())
    done = book.records_of(device_id="gw-3")[0]
    done.start(_now())
    done.report_progress(_now(), 100, complete=True, success=True, reason=None)

    assert await api.ok("POST", f"/firmware/upgrade/task/{task['id']}/_stop") == {"total": 2}

    records = await api.ok("GET", "/firmware/upgrade/history/_query", params={"taskId": task["id"]})
    assert sorted((r["deviceId"], r["state"]) for r in records) == [
        ("gw-1", "canceled"),
        ("gw-2", "canceled"),
        ("gw-3", "success"),
    ]
    assert (await api.ok("GET", f"/firmware/upgrade/task/{task['id']}"))["state"] == "stopped"


async def test_stop_a_push_task_cancels_its_records(api: Api) -> None:
    fw = await api.firmware()
    task = await api.task(fw["id"])
    await api.ok("POST", f"/firmware/upgrade/task/{task['id']}/_deploy", json=["gw-1"])
    # waiting or already pushed (processing): either way it is canceled
    assert await api.ok("POST", f"/firmware/upgrade/task/{task['id']}/_stop") == {"total": 1}
    (record,) = await api.ok("GET", "/firmware/upgrade/history/_query")
    assert record["state"] == "canceled"


async def test_start_failed_resets_them_to_waiting(
    api: Api, platform_server: PlatformServer
) -> None:
    await add_gateways(api, "gw-2")
    task = await pull_task(api)
    await api.ok("POST", f"/firmware/upgrade/task/{task['id']}/all/_deploy")
    record = platform_server.platform.upgrades.records_of(device_id="gw-2")[0]
    record.start(_now())
    record.fail(_now(), "boom")

    assert await api.ok("POST", f"/firmware/upgrade/task/{task['id']}/_start", json=["failed"]) == {
        "total": 1
    }

    got = await api.ok("GET", f"/firmware/upgrade/history/{record.id}")
    assert got["state"] == "waiting"
    assert got["errorReason"] is None
    assert [h["state"] for h in got["history"]] == ["waiting", "processing", "failed", "waiting"]


async def test_start_without_body_retries_failed(api: Api, platform_server: PlatformServer) -> None:
    task = await pull_task(api)
    await api.ok("POST", f"/firmware/upgrade/task/{task['id']}/_deploy", json=["gw-1"])
    record = platform_server.platform.upgrades.records_of(device_id="gw-1")[0]
    record.start(_now())
    record.fail(_now(), "boom")
    assert await api.ok("POST", f"/firmware/upgrade/task/{task['id']}/_start") == {"total": 1}
    assert record.state.value == "waiting"


async def test_start_canceled_after_stop(api: Api) -> None:
    task = await pull_task(api)
    path = f"/firmware/upgrade/task/{task['id']}"
    await api.ok("POST", f"{path}/_deploy", json=["gw-1"])
    await api.ok("POST", f"{path}/_stop")
    assert await api.ok("POST", f"{path}/_start", json=["failed"]) == {"total": 0}
    assert await api.ok("POST", f"{path}/_start", json=["canceled"]) == {"total": 1}
    assert (await api.ok("GET", path))["state"] == "running"
    (record,) = await api.ok("GET", "/firmware/upgrade/history/_query")
    assert record["state"] == "waiting"


@pytest.mark.parametrize("body", [["upgrading"], "failed", [1], {"states": ["failed"]}])
async def test_start_bad_states_is_400(api: Api, body: Any) -> None:
    task = await pull_task(api)
    message = await api.bad("POST", f"/firmware/upgrade/task/{task['id']}/_start", json=body)
    assert "state" in message


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/firmware/upgrade/task/nope"),
        ("POST", "/firmware/upgrade/task/nope/_deploy"),
        ("POST", "/firmware/upgrade/task/nope/all/_deploy"),
        ("POST", "/firmware/upgrade/task/nope/_start"),
        ("POST", "/firmware/upgrade/task/nope/_stop"),
        ("GET", "/firmware/upgrade/history/nope"),
        ("GET", "/device-instance/nope"),
        ("POST", "/device-instance/nope/firmware/_read"),
        ("GET", "/firmware/nope"),
    ],
)
async def test_unknown_ids_are_404(api: Api, method: str, path: str) -> None:
    assert "'nope'" in await api.bad(method, path, status=404)


async def test_read_with_a_bad_timeout_is_400(api: Api) -> None:
    message = await api.bad(
        "POST", "/device-instance/gw-1/firmware/_read", params={"timeout": "soon"}
    )
    assert message.startswith("timeout")


# -- mock-only endpoints -------------------------------------------------------------------


async def test_check_pushes_waiting_records_now(broker: EmbeddedBroker) -> None:
    """With a timer that never fires, only POST /firmware/upgrade/_check pushes."""
    server = PlatformServer(broker.url, config=PlatformConfig(check_interval=3600))
    async with server, PlatformClient(server.url, timeout=10) as client:
        server.platform.registry.add_product("gw-product")
        server.platform.registry.add_device("gw-1", "gw-product")
        server.platform.registry.add_device("gw-2", "gw-product")
        fw = await client.upload_firmware(IMAGE, "gw-product", "2.0.0")
        task = await client.create_task(fw["id"])
        await client.deploy(task["id"])
        assert {r["state"] for r in await client.records()} == {"waiting"}

        assert await client.check_now() == 2
        assert {r["state"] for r in await client.records()} == {"processing"}
        assert await client.check_now() == 0


async def test_events_endpoint_lists_and_filters(api: Api, platform_server: PlatformServer) -> None:
    events = platform_server.platform.events
    events.add("bad_message", "garbage", topic="/a/b/firmware/report")
    events.add("unknown_device", "who?", device_id="ghost")
    events.add("bad_message", "more garbage")

    everything = await api.ok("GET", "/platform/events")
    assert everything["counts"] == {"bad_message": 2, "unknown_device": 1}
    assert [e["detail"] for e in everything["events"]] == ["garbage", "who?", "more garbage"]
    first = everything["events"][0]
    assert first["kind"] == "bad_message" and first["topic"] == "/a/b/firmware/report"
    assert "device_id" not in first  # None fields are left out

    only = await api.ok("GET", "/platform/events", params={"kind": "unknown_device"})
    assert [e["device_id"] for e in only["events"]] == ["ghost"]
    assert only["counts"] == everything["counts"]  # counts are always all kinds


async def test_file_log_endpoint(api: Api) -> None:
    assert await api.ok("GET", "/platform/file-log") == []
    stored = await api.upload(IMAGE)
    async with api.http.get(stored["accessUrl"], headers={"Range": "bytes=0-9"}) as resp:
        assert resp.status == 206
    (entry,) = await api.ok("GET", "/platform/file-log")
    assert (entry["fileId"], entry["status"], entry["range"], entry["sent"], entry["cut"]) == (
        stored["id"],
        206,
        "bytes=0-9",
        10,
        False,
    )


async def test_faults_endpoint_sets_the_file_servers_switches(
    api: Api, platform_server: PlatformServer
) -> None:
    faults = platform_server.files.faults
    echoed = await api.ok(
        "PUT",
        "/platform/faults/download",
        json={"cutAfterBytes": 100, "cutTimes": 3, "rangeQuirk": True, "chunkDelay": 0.01},
    )
    assert echoed == {"cutAfterBytes": 100, "cutTimes": 3, "rangeQuirk": True, "chunkDelay": 0.01}
    assert (faults.cut_after_bytes, faults.cut_times) == (100, 3)
    assert faults.range_quirk is True and faults.chunk_delay == 0.01

    await api.ok("PUT", "/platform/faults/download", json={})  # defaults: all off
    assert (faults.cut_after_bytes, faults.cut_times, faults.range_quirk) == (None, 0, False)
    assert faults.chunk_delay == 0.0


@pytest.mark.parametrize(
    "body", [{"cutAfterBytes": -1}, {"cutTimes": -1}, {"chunkDelay": -0.5}, {"cut": 5}]
)
async def test_faults_endpoint_validates(api: Api, body: dict[str, Any]) -> None:
    message = await api.bad("PUT", "/platform/faults/download", json=body)
    assert message.startswith(next(iter(body)))


async def test_platform_client_raises_the_api_error(platform_server: PlatformServer) -> None:
    async with PlatformClient(platform_server.url) as client:
        with pytest.raises(PlatformApiError) as caught:
            await client.device("ghost")
    assert caught.value.status == 404
    assert caught.value.code == "not_found"


@pytest.mark.parametrize("bad_id", ["a+b", "a/b", "a#", ""])
async def test_ids_that_cannot_stand_in_a_topic_are_400(api: Api, bad_id: str) -> None:
    message = await api.bad(
        "POST", "/device-instance", json={"id": bad_id, "productId": "gw-product"}
    )
    assert message.startswith("id:")
    await api.bad("POST", "/device-product", json={"id": bad_id})
