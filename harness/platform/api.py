"""The platform's REST API, on JetLinks-style paths, with JetLinks' response envelope
``{"status": 200, "message": "success", "result": ...}``.

Paths marked "mock" do not exist in JetLinks; they let a test steer and observe the
mock. docs/platform-api.md lists them all.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..protocol import DeviceSecret, now_ms
from .files import FileServer
from .registry import Device
from .service import Platform, ReadFailed
from .tasks import RecordState, TaskMode, UpgradeTask

M = TypeVar("M", bound=BaseModel)

# -- envelopes and errors ------------------------------------------------------------------


def ok(result: Any) -> web.Response:
    return web.json_response({"status": 200, "message": "success", "result": result})


class ApiError(web.HTTPException):
    """An error answer with JetLinks' body: status, code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status_code = status
        super().__init__(
            text=json.dumps({"status": status, "code": code, "message": message}),
            content_type="application/json",
        )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "illegal_argument", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


async def body_of(request: web.Request, model: type[M]) -> M:
    try:
        data = await request.json()
    except ValueError:
        raise bad_request("request body must be JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        raise bad_request(f"{field}: {err['msg']}") from None


async def id_list(request: web.Request, what: str) -> list[str]:
    try:
        data = await request.json()
    except ValueError:
        raise bad_request(f"request body must be a JSON list of {what}") from None
    if not isinstance(data, list) or not all(isinstance(x, str) and x for x in data):
        raise bad_request(f"request body must be a JSON list of {what}")
    return data


# -- request bodies ------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


#: An id that can stand in an MQTT topic segment (no '/', '+', '#').
TopicId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^/+#\x00]+$")]


class ProductBody(_Body):
    id: TopicId
    name: str | None = None


class DeviceBody(_Body):
    id: TopicId
    productId: TopicId
    name: str | None = None
    parentId: str | None = None
    secureId: str | None = None
    secureKey: str | None = None
    firmwareVersion: str | None = None


class FirmwareBody(_Body):
    productId: str = Field(min_length=1)
    version: str = Field(min_length=1)
    fileId: str = Field(min_length=1)
    versionOrder: int | None = None
    signMethod: str = "md5"
    sign: str | None = Field(default=None, min_length=1)
    name: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class TaskBody(_Body):
    name: str = Field(min_length=1)
    firmwareId: str = Field(min_length=1)
    productId: str | None = None
    mode: TaskMode = TaskMode.PUSH
    timeoutSeconds: int = Field(default=600, ge=0)
    responseTimeoutSeconds: int = Field(default=30, ge=0)
    releaseType: Literal["all", "part"] = "all"
    deviceId: list[str] = Field(default_factory=list)


class FaultsBody(_Body):
    cutAfterBytes: int | None = Field(default=None, ge=0)
    cutTimes: int = Field(default=1, ge=0)
    rangeQuirk: bool = False
    chunkDelay: float = Field(default=0.0, ge=0)


# -- the routes ----------------------------------------------------------------------------


class PlatformApi:
    def __init__(self, platform: Platform, files: FileServer) -> None:
        self.platform = platform
        self.files = files

    def routes(self) -> list[web.RouteDef]:
        r: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("POST", "/file/upload", self.upload_file),
            ("POST", "/device-product", self.save_product),
            ("PATCH", "/device-product", self.save_product),
            ("POST", "/device-instance", self.save_device),
            ("PATCH", "/device-instance", self.save_device),
            ("GET", "/device-instance/{id}", self.get_device),
            ("POST", "/device-instance/{id}/firmware/_read", self.read_version),
            ("POST", "/firmware", self.save_firmware),
            ("PATCH", "/firmware", self.save_firmware),
            ("GET", "/firmware/_query", self.query_firmware),
            ("GET", "/firmware/{id}", self.get_firmware),
            ("POST", "/firmware/upgrade/task", self.create_task),
            ("PATCH", "/firmware/upgrade/task", self.create_task),
            ("GET", "/firmware/upgrade/task/_query", self.query_tasks),
            ("GET", "/firmware/upgrade/task/{id}", self.get_task),
            ("POST", "/firmware/upgrade/task/{id}/_deploy", self.deploy),
            ("POST", "/firmware/upgrade/task/{id}/all/_deploy", self.deploy_all),
            ("POST", "/firmware/upgrade/task/{id}/_start", self.start_task),
            ("POST", "/firmware/upgrade/task/{id}/_stop", self.stop_task),
            ("GET", "/firmware/upgrade/history/_query", self.query_records),
            ("GET", "/firmware/upgrade/history/{id}", self.get_record),
            # mock-only
            ("POST", "/firmware/upgrade/_check", self.check_now),
            ("GET", "/platform/events", self.list_events),
            ("GET", "/platform/file-log", self.file_log),
            ("PUT", "/platform/faults/download", self.set_faults),
        ]
        return [web.route(method, path, handler) for method, path, handler in r]

    # files and firmware

    async def upload_file(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            raise bad_request("upload as multipart/form-data with a 'file' part")
        reader = await request.multipart()
        async for part in reader:
            if getattr(part, "name", None) == "file":
                data = await part.read()  # type: ignore[union-attr]
                name = getattr(part, "filename", None) or "firmware.bin"
                stored = self.platform.store.put_file(name, bytes(data))
                return ok(
                    {
                        "id": stored.id,
                        "name": stored.name,
                        "size": stored.size,
                        "md5": stored.md5,
                        "sha256": stored.sha256,
                        "accessUrl": self.platform.store.base_url + stored.path(),
                    }
                )
        raise bad_request("multipart body has no 'file' part")

    async def save_firmware(self, request: web.Request) -> web.Response:
        body = await body_of(request, FirmwareBody)
        if body.productId not in self.platform.registry.products:
            raise bad_request(f"productId: unknown product {body.productId!r}")
        if body.fileId not in self.platform.store.files:
            raise bad_request(f"fileId: no uploaded file {body.fileId!r}")
        try:
            fw = self.platform.store.add_firmware(
                product_id=body.productId,
                version=body.version,
                file_id=body.fileId,
                version_order=body.versionOrder,
                sign_method=body.signMethod,
                sign=body.sign,
                name=body.name,
                parameters=body.parameters,
            )
        except ValueError as exc:
            raise bad_request(f"signMethod: {exc}") from None
        return ok(fw.to_dict(self.platform.store.url_of(fw)))

    async def query_firmware(self, request: web.Request) -> web.Response:
        product = request.query.get("productId")
        items = [
            f.to_dict(self.platform.store.url_of(f))
            for f in self.platform.store.firmware.values()
            if product is None or f.product_id == product
        ]
        return ok(items)

    async def get_firmware(self, request: web.Request) -> web.Response:
        fw = self.platform.store.firmware.get(request.match_info["id"])
        if fw is None:
            raise not_found(f"no firmware {request.match_info['id']!r}")
        return ok(fw.to_dict(self.platform.store.url_of(fw)))

    # products and devices

    async def save_product(self, request: web.Request) -> web.Response:
        body = await body_of(request, ProductBody)
        product = self.platform.registry.add_product(body.id, body.name)
        return ok({"id": product.id, "name": product.name})

    async def save_device(self, request: web.Request) -> web.Response:
        body = await body_of(request, DeviceBody)
        if (body.secureId is None) != (body.secureKey is None):
            raise bad_request("secureId and secureKey go together")
        secret = DeviceSecret(body.secureId, body.secureKey) if body.secureId else None
        try:
            device = self.platform.registry.add_device(
                body.id,
                body.productId,
                name=body.name,
                parent_id=body.parentId,
                secret=secret,
                firmware_version=body.firmwareVersion,
            )
        except (KeyError, ValueError) as exc:
            raise bad_request(str(exc.args[0])) from None
        return ok(device.to_dict())

    def _device(self, request: web.Request) -> Device:
        device = self.platform.registry.get(request.match_info["id"])
        if device is None:
            raise not_found(f"no device {request.match_info['id']!r}")
        return device

    async def get_device(self, request: web.Request) -> web.Response:
        return ok(self._device(request).to_dict())

    async def read_version(self, request: web.Request) -> web.Response:
        device = self._device(request)
        try:
            timeout = float(request.query.get("timeout", self.platform.config.read_timeout))
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 3600:
            raise bad_request("timeout: must be a number of seconds in (0, 3600]")
        try:
            version = await self.platform.read_version(device.id, timeout)
        except TimeoutError as exc:
            raise ApiError(504, "timeout", str(exc)) from None
        except ReadFailed as exc:
            raise ApiError(502, "read_failed", str(exc)) from None
        return ok({"deviceId": device.id, "version": version})

    # tasks and records

    def _task(self, request: web.Request) -> UpgradeTask:
        task = self.platform.upgrades.tasks.get(request.match_info["id"])
        if task is None:
            raise not_found(f"no upgrade task {request.match_info['id']!r}")
        return task

    async def create_task(self, request: web.Request) -> web.Response:
        body = await body_of(request, TaskBody)
        fw = self.platform.store.firmware.get(body.firmwareId)
        if fw is None:
            raise bad_request(f"firmwareId: no firmware {body.firmwareId!r}")
        if body.productId and body.productId != fw.product_id:
            raise bad_request(f"productId: firmware {fw.id!r} belongs to {fw.product_id!r}")
        self._check_devices(body.deviceId, fw.product_id)
        task = self.platform.upgrades.create_task(
            now=now_ms(),
            name=body.name,
            product_id=fw.product_id,
            firmware_id=fw.id,
            mode=body.mode,
            timeout_seconds=body.timeoutSeconds,
            response_timeout_seconds=body.responseTimeoutSeconds,
            release_type=body.releaseType,
            device_ids=body.deviceId,
        )
        return ok(task.to_dict())

    def _check_devices(self, device_ids: list[str], product_id: str) -> None:
        for device_id in device_ids:
            device = self.platform.registry.get(device_id)
            if device is None:
                raise bad_request(f"deviceId: unknown device {device_id!r}")
            if device.product_id != product_id:
                raise bad_request(
                    f"deviceId: device {device_id!r} is of product {device.product_id!r}, "
                    f"the firmware is for {product_id!r}"
                )

    async def query_tasks(self, request: web.Request) -> web.Response:
        return ok([t.to_dict() for t in self.platform.upgrades.tasks.values()])

    async def get_task(self, request: web.Request) -> web.Response:
        return ok(self._task(request).to_dict())

    def _deploy(self, task: UpgradeTask, device_ids: list[str]) -> web.Response:
        fw = self.platform.store.firmware[task.firmware_id]
        self._check_devices(device_ids, task.product_id)
        devices = [(d, self.platform.registry.devices[d].name) for d in device_ids]
        records = self.platform.upgrades.deploy(
            task, devices, version=fw.version, version_order=fw.version_order, now=now_ms()
        )
        return ok({"total": len(records), "records": [r.id for r in records]})

    def _product_devices(self, task: UpgradeTask) -> list[str]:
        ids = [
            d.id for d in self.platform.registry.devices.values() if d.product_id == task.product_id
        ]
        if not ids:
            raise bad_request(f"product {task.product_id!r} has no devices")
        return ids

    async def deploy(self, request: web.Request) -> web.Response:
        """The body's device ids; without a body, the task's own list, or for
        releaseType "all" every device of the product."""
        task = self._task(request)
        if request.can_read_body:
            ids = await id_list(request, "device ids")
        elif task.release_type == "all" and not task.device_ids:
            ids = self._product_devices(task)
        else:
            ids = task.device_ids
        if not ids:
            raise bad_request("no devices to deploy to: give a JSON list of device ids")
        return self._deploy(task, ids)

    async def deploy_all(self, request: web.Request) -> web.Response:
        task = self._task(request)
        return self._deploy(task, self._product_devices(task))

    async def start_task(self, request: web.Request) -> web.Response:
        task = self._task(request)
        names = await id_list(request, "record states") if request.can_read_body else ["failed"]
        try:
            states = [RecordState(n) for n in names]
        except ValueError:
            raise bad_request(
                f"states: each must be one of {', '.join(s.value for s in RecordState)}"
            ) from None
        again = self.platform.upgrades.restart(task, states, now_ms())
        return ok({"total": len(again)})

    async def stop_task(self, request: web.Request) -> web.Response:
        canceled = self.platform.upgrades.stop(self._task(request), now_ms())
        return ok({"total": len(canceled)})

    async def query_records(self, request: web.Request) -> web.Response:
        q = request.query
        state = q.get("state")
        if state and state not in {s.value for s in RecordState}:
            raise bad_request(f"state: unknown record state {state!r}")
        records = self.platform.upgrades.records_of(
            task_id=q.get("taskId"),
            device_id=q.get("deviceId"),
            state=RecordState(state) if state else None,
        )
        return ok([r.to_dict() for r in records])

    async def get_record(self, request: web.Request) -> web.Response:
        record = self.platform.upgrades.records.get(request.match_info["id"])
        if record is None:
            raise not_found(f"no upgrade record {request.match_info['id']!r}")
        return ok(record.to_dict())

    # mock-only

    async def check_now(self, request: web.Request) -> web.Response:
        return ok({"sent": self.platform.push_waiting()})

    async def list_events(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind")
        return ok(
            {
                "counts": dict(self.platform.events.counts),
                "events": [e.to_dict() for e in self.platform.events.list(kind)],
            }
        )

    async def file_log(self, request: web.Request) -> web.Response:
        return ok([s.to_dict() for s in self.files.served])

    async def set_faults(self, request: web.Request) -> web.Response:
        body = await body_of(request, FaultsBody)
        faults = self.files.faults
        faults.cut_after_bytes = body.cutAfterBytes
        faults.cut_times = body.cutTimes if body.cutAfterBytes is not None else 0
        faults.range_quirk = body.rangeQuirk
        faults.chunk_delay = body.chunkDelay
        return ok(body.model_dump())
