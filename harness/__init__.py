"""ota-hil: hardware-in-the-loop harness for IoT gateway firmware upgrades."""

__version__ = "0.1.0"
