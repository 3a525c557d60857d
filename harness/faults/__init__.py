"""System-level faults for tests and rigs: things going wrong between the components rather
than inside one of them (see docs/faults.md)."""

from __future__ import annotations

from .mqtt_proxy import MqttFaultProxy, topic_matches

__all__ = ["MqttFaultProxy", "topic_matches"]
