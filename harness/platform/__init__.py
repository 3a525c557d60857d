"""Mock JetLinks platform: firmware store and file server, devices, tasks, records,
scheduler and REST API."""

from .events import EventLog, PlatformEvent
from .files import DownloadFaults, FileServer
from .registry import Device, DeviceRegistry
from .server import PlatformServer
from .service import PLATFORM_CLIENT_ID, Platform, PlatformConfig
from .store import Firmware, FirmwareStore, StoredFile
from .tasks import RecordState, TaskBook, TaskMode, UpgradeRecord, UpgradeTask, record_id

__all__ = [
    "PLATFORM_CLIENT_ID",
    "Device",
    "DeviceRegistry",
    "DownloadFaults",
    "EventLog",
    "FileServer",
    "Firmware",
    "FirmwareStore",
    "Platform",
    "PlatformConfig",
    "PlatformEvent",
    "PlatformServer",
    "RecordState",
    "StoredFile",
    "TaskBook",
    "TaskMode",
    "UpgradeRecord",
    "UpgradeTask",
    "record_id",
]
