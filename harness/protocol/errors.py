"""Typed errors for everything a receiver may be handed.

Receivers log these and carry on; they never let one escape the receive loop.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Something on the wire that this side cannot accept."""

    def __init__(self, topic: str, reason: str, field: str | None = None) -> None:
        self.topic = topic
        self.field = field
        self.reason = reason
        where = f"{topic!r}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {reason}")


class TopicError(ProtocolError):
    """The topic is not one of the firmware topics."""


class MessageError(ProtocolError):
    """The payload is not valid JSON, or a field is missing, mistyped or out of range."""


class CorrelationError(ProtocolError):
    """A well-formed message that answers nothing this side asked (e.g. an unknown messageId)."""
