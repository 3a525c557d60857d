"""Firmware files and firmware entries, as JetLinks keeps them.

A file is stored once with its md5, sha256 and a random accessKey; a firmware entry
names a product, a version and its order, and points at a file. The sign is computed
from the file unless the uploader gives one (the JetLinks UI lets a person type it in,
which is how a wrong sign reaches a device).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from ..protocol import SIGN_METHODS, FirmwareFields, now_ms


@dataclass(frozen=True)
class StoredFile:
    id: str
    name: str
    data: bytes = field(repr=False)
    md5: str
    sha256: str
    access_key: str

    @property
    def size(self) -> int:
        return len(self.data)

    def digest(self, method: str) -> str:
        """The file's digest for a sign method (any case); ValueError for another method."""
        digests = {"md5": self.md5, "sha256": self.sha256}
        if method.lower() not in digests:
            raise ValueError(f"signMethod must be one of {', '.join(SIGN_METHODS)}")
        return digests[method.lower()]

    def path(self) -> str:
        """Path and query of the download URL, to be put after the platform's base URL."""
        return f"/file/{self.id}?accessKey={self.access_key}"


@dataclass
class Firmware:
    id: str
    product_id: str
    name: str
    version: str
    version_order: int
    sign_method: str
    sign: str
    size: int
    file_id: str
    parameters: dict[str, Any] = field(default_factory=dict)
    create_time: int = field(default_factory=now_ms)

    def to_dict(self, url: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "productId": self.product_id,
            "name": self.name,
            "version": self.version,
            "versionOrder": self.version_order,
            "signMethod": self.sign_method,
            "sign": self.sign,
            "size": self.size,
            "fileId": self.file_id,
            "url": url,
            "parameters": self.parameters,
            "createTime": self.create_time,
        }


class FirmwareStore:
    """Files by id, firmware entries by id. ``base_url`` is how devices reach the file server;
    download URLs are made from it when sent, so it can change after firmware is stored."""

    def __init__(self, base_url: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.files: dict[str, StoredFile] = {}
        self.firmware: dict[str, Firmware] = {}

    def put_file(self, name: str, data: bytes) -> StoredFile:
        stored = StoredFile(
            id=secrets.token_hex(16),
            name=name,
            data=data,
            md5=hashlib.md5(data).hexdigest(),
            sha256=hashlib.sha256(data).hexdigest(),
            access_key=secrets.token_hex(16),
        )
        self.files[stored.id] = stored
        return stored

    def add_firmware(
        self,
        *,
        product_id: str,
        version: str,
        file_id: str,
        version_order: int | None = None,
        sign_method: str = "md5",
        sign: str | None = None,
        name: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> Firmware:
        stored = self.files.get(file_id)
        if stored is None:
            raise KeyError(f"no file {file_id!r}")
        computed = stored.digest(sign_method)
        if version_order is None:
            orders = [f.version_order for f in self.firmware.values() if f.product_id == product_id]
            version_order = max(orders, default=0) + 1
        fw = Firmware(
            id=secrets.token_hex(8),
            product_id=product_id,
            name=name or f"{product_id} {version}",
            version=version,
            version_order=version_order,
            sign_method=sign_method,
            sign=sign if sign is not None else computed,
            size=stored.size,
            file_id=stored.id,
            parameters=dict(parameters or {}),
        )
        self.firmware[fw.id] = fw
        return fw

    def url_of(self, firmware: Firmware) -> str:
        return self.base_url + self.files[firmware.file_id].path()

    def fields_of(self, firmware: Firmware) -> FirmwareFields:
        """What goes into an upgrade message or a pull reply."""
        return FirmwareFields(
            url=self.url_of(firmware),
            version=firmware.version,
            parameters=dict(firmware.parameters),
            sign=firmware.sign,
            signMethod=firmware.sign_method,
            firmwareId=firmware.id,
            size=firmware.size,
        )

    def upload(self, name: str, data: bytes, **firmware: Any) -> Firmware:
        """Store a file and create its firmware entry in one step."""
        return self.add_firmware(file_id=self.put_file(name, data).id, **firmware)
