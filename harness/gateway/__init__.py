"""Reference gateway: MQTT agent, downloader, jobs and upgraders."""

from .agent import DOWNLOAD_SHARE, GatewayAgent, GatewayConfig
from .download import Downloader, DownloadError, DownloadPolicy, check_sign
from .jobs import Job, ProgressReporter, UpgradeFailed
from .state import GatewayState, write_atomic
from .upgraders import GatewayImageUpgrader, Upgrader, UpgraderRegistry

__all__ = [
    "DOWNLOAD_SHARE",
    "DownloadError",
    "DownloadPolicy",
    "Downloader",
    "GatewayAgent",
    "GatewayConfig",
    "GatewayImageUpgrader",
    "GatewayState",
    "Job",
    "ProgressReporter",
    "UpgradeFailed",
    "Upgrader",
    "UpgraderRegistry",
    "check_sign",
    "partial_download",
    "write_atomic",
]
