"""A client of the mock platform's REST API, for the CLI, the steps and the tests.

It speaks only HTTP, so it works the same against a platform in this process, in
another one, or behind a rig.
"""

from __future__ import annotations

from typing import Any

import aiohttp


class PlatformApiError(Exception):
    """The platform answered with an error; ``status`` and ``code`` as it sent them."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(f"HTTP {status} {code}: {message}")


class PlatformClient:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PlatformClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=False, timeout=self._timeout)
        async with self._session.request(method, self.base_url + path, **kwargs) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            if resp.status >= 400 or not isinstance(body, dict):
                if isinstance(body, dict):
                    raise PlatformApiError(
                        resp.status, body.get("code", ""), body.get("message", "")
                    )
                raise PlatformApiError(resp.status, "", (await resp.text())[:200])
            return body.get("result")

    # devices

    async def save_product(self, product_id: str, name: str | None = None) -> dict[str, Any]:
        return await self.request("POST", "/device-product", json={"id": product_id, "name": name})

    async def save_device(self, device_id: str, product_id: str, **fields: Any) -> dict[str, Any]:
        body = {"id": device_id, "productId": product_id, **fields}
        return await self.request("POST", "/device-instance", json=body)

    async def device(self, device_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/device-instance/{device_id}")

    async def read_version(self, device_id: str, timeout: float = 10.0) -> str:
        result = await self.request(
            "POST", f"/device-instance/{device_id}/firmware/_read", params={"timeout": str(timeout)}
        )
        return result["version"]

    # firmware

    async def upload_file(self, data: bytes, name: str = "firmware.bin") -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
        return await self.request("POST", "/file/upload", data=form)

    async def upload_firmware(
        self,
        data: bytes,
        product_id: str,
        version: str,
        *,
        name: str | None = None,
        sign_method: str = "md5",
        sign: str | None = None,
        version_order: int | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Upload the file and create its firmware entry (JetLinks' two steps in one)."""
        stored = await self.upload_file(data, name or f"{product_id}-{version}.bin")
        body: dict[str, Any] = {
            "productId": product_id,
            "version": version,
            "fileId": stored["id"],
            "signMethod": sign_method,
            "parameters": parameters or {},
        }
        for key, value in (("sign", sign), ("versionOrder", version_order), ("name", name)):
            if value is not None:
                body[key] = value
        return await self.request("POST", "/firmware", json=body)

    # tasks and records

    async def create_task(self, firmware_id: str, name: str = "upgrade", **fields: Any) -> dict:
        return await self.request(
            "POST",
            "/firmware/upgrade/task",
            json={"name": name, "firmwareId": firmware_id, **fields},
        )

    async def deploy(self, task_id: str, device_ids: list[str] | None = None) -> dict[str, Any]:
        if device_ids is None:
            return await self.request("POST", f"/firmware/upgrade/task/{task_id}/all/_deploy")
        return await self.request(
            "POST", f"/firmware/upgrade/task/{task_id}/_deploy", json=device_ids
        )

    async def start_task(self, task_id: str, states: list[str]) -> dict[str, Any]:
        return await self.request("POST", f"/firmware/upgrade/task/{task_id}/_start", json=states)

    async def stop_task(self, task_id: str) -> dict[str, Any]:
        return await self.request("POST", f"/firmware/upgrade/task/{task_id}/_stop")

    async def check_now(self) -> int:
        return (await self.request("POST", "/firmware/upgrade/_check"))["sent"]

    async def records(self, **query: str) -> list[dict[str, Any]]:
        return await self.request("GET", "/firmware/upgrade/history/_query", params=query)

    async def record(self, record_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/firmware/upgrade/history/{record_id}")

    # mock-only

    async def events(self, kind: str | None = None) -> dict[str, Any]:
        return await self.request("GET", "/platform/events", params={"kind": kind} if kind else {})

    async def file_log(self) -> list[dict[str, Any]]:
        return await self.request("GET", "/platform/file-log")

    async def set_download_faults(self, **faults: Any) -> dict[str, Any]:
        return await self.request("PUT", "/platform/faults/download", json=faults)
