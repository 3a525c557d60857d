"""Products and devices; a child device knows its parent gateway."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..protocol import (
    DeviceSecret,
    FirmwareTopic,
    TopicKind,
    child_topic,
    device_topic,
    now_ms,
)


@dataclass
class Product:
    id: str
    name: str


@dataclass
class Device:
    id: str
    product_id: str
    name: str
    parent_id: str | None = None
    secret: DeviceSecret | None = None
    firmware_version: str | None = None
    version_time: int | None = None
    create_time: int = field(default_factory=now_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "productId": self.product_id,
            "name": self.name,
            "parentId": self.parent_id,
            "firmwareVersion": self.firmware_version,
            "versionTime": self.version_time,
            "createTime": self.create_time,
        }


class DeviceRegistry:
    def __init__(self) -> None:
        self.products: dict[str, Product] = {}
        self.devices: dict[str, Device] = {}

    def add_product(self, product_id: str, name: str | None = None) -> Product:
        product = self.products.get(product_id) or Product(product_id, name or product_id)
        if name:
            product.name = name
        self.products[product_id] = product
        return product

    def add_device(
        self,
        device_id: str,
        product_id: str,
        *,
        name: str | None = None,
        parent_id: str | None = None,
        secret: DeviceSecret | None = None,
        firmware_version: str | None = None,
    ) -> Device:
        if product_id not in self.products:
            raise KeyError(f"unknown product {product_id!r}")
        if parent_id is not None and parent_id not in self.devices:
            raise KeyError(f"unknown parent gateway {parent_id!r}")
        if parent_id == device_id:
            raise ValueError(f"device {device_id!r} cannot be its own parent")
        device = Device(device_id, product_id, name or device_id, parent_id, secret)
        if firmware_version:
            device.firmware_version = firmware_version
            device.version_time = now_ms()
        self.devices[device_id] = device
        return device

    def get(self, device_id: str) -> Device | None:
        return self.devices.get(device_id)

    def secret_of(self, device_id: str) -> DeviceSecret | None:
        device = self.devices.get(device_id)
        return device.secret if device else None

    def topic_for(self, device: Device, kind: TopicKind) -> FirmwareTopic:
        """Where the platform sends ``kind`` to ``device``: its own topic, or via its gateway."""
        if device.parent_id is None:
            return device_topic(device.product_id, device.id, kind)
        gateway = self.devices[device.parent_id]
        return child_topic(gateway.product_id, gateway.id, device.id, kind)

    def sender_mismatch(self, device: Device, topic: FirmwareTopic) -> str | None:
        """Why ``topic`` is not a place ``device`` may speak from, or None when it is."""
        if device.parent_id is None:
            if topic.is_child:
                return f"device {device.id!r} has no parent gateway but spoke on a child topic"
            if topic.product_id != device.product_id:
                return (
                    f"device {device.id!r} belongs to product {device.product_id!r}, "
                    f"not {topic.product_id!r}"
                )
            return None
        if topic.gateway_id != device.parent_id:
            return (
                f"device {device.id!r} is a child of {device.parent_id!r}, not {topic.gateway_id!r}"
            )
        gateway = self.devices[device.parent_id]
        if topic.product_id != gateway.product_id:
            return (
                f"gateway {gateway.id!r} of child {device.id!r} belongs to product "
                f"{gateway.product_id!r}, not {topic.product_id!r}"
            )
        return None

    def set_version(self, device_id: str, version: str) -> None:
        device = self.devices[device_id]
        device.firmware_version = version
        device.version_time = now_ms()
