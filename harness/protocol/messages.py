"""The seed's firmware messages as pydantic models, with JSON field names exactly as on the wire.

Decoding is strict about types (a progress of ``"50"`` is an error, not 50) and lenient
about extra fields (JetLinks adds headers and others freely).
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import MessageError
from .topics import TopicKind

SIGN_METHODS = ("md5", "sha256")


def now_ms() -> int:
    return int(time.time() * 1000)


Id = Annotated[str, Field(min_length=1)]


class FirmwareMessage(BaseModel):
    """Base of every firmware message. ``timestamp`` is milliseconds since the epoch."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    kind: ClassVar[TopicKind]
    #: Fields written even when None, because the seed gives null a meaning there.
    nullable: ClassVar[frozenset[str]] = frozenset()

    timestamp: int = Field(default_factory=now_ms, ge=0)

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(by_alias=True)  # python mode: keeps dict keys as sent
        return {k: v for k, v in data.items() if v is not None or k in self.nullable}

    def to_json(self) -> bytes:
        data = self.to_dict()
        try:
            return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:
            # A lone surrogate from a free-form field: only the escaped form is valid UTF-8.
            return json.dumps(data, separators=(",", ":")).encode()


def _check_sign_method(value: str) -> str:
    if value.lower() not in SIGN_METHODS:
        raise ValueError(f"signMethod must be one of {', '.join(SIGN_METHODS)} (any case)")
    return value


class FirmwareFields(BaseModel):
    """What the device needs to fetch and check an image (shared by upgrade and pull reply)."""

    url: str = Field(min_length=1)
    version: Id
    parameters: dict[str, Any] = Field(default_factory=dict)
    sign: str = Field(min_length=1)
    signMethod: str
    firmwareId: Id
    size: int = Field(ge=0)

    _sign_method = field_validator("signMethod")(_check_sign_method)


class UpgradeFirmware(FirmwareMessage, FirmwareFields):
    """Platform -> device: upgrade to this firmware (the seed's full push form)."""

    kind = TopicKind.UPGRADE
    messageId: str | None = None
    deviceId: str | None = None
    headers: dict[str, Any] = Field(default_factory=dict)
    messageType: Literal["UPGRADE_FIRMWARE"] = "UPGRADE_FIRMWARE"


class UpgradeReply(FirmwareMessage):
    """Device -> platform: the upgrade message was accepted (or refused, with code and message)."""

    kind = TopicKind.UPGRADE_REPLY
    messageId: Id
    success: bool = True
    code: str | None = None
    message: str | None = None
    deviceId: str | None = None


class UpgradeProgress(FirmwareMessage):
    """Device -> platform: how far the upgrade is; ``success`` counts once ``complete``."""

    kind = TopicKind.UPGRADE_PROGRESS
    progress: int = Field(ge=0, le=100)
    complete: bool = False
    version: Id
    success: bool = True
    errorReason: str | None = None
    firmwareId: Id
    deviceId: str | None = None


class PullFirmware(FirmwareMessage):
    """Device -> platform: what is the firmware for me? ``requestVersion`` null means latest."""

    kind = TopicKind.PULL
    nullable = frozenset({"currentVersion", "requestVersion"})
    messageId: Id
    currentVersion: str | None = None
    requestVersion: str | None = None
    #: JetLinks reads ``force: true`` here: any record state may be handed out again.
    headers: dict[str, Any] | None = None


class PullReply(FirmwareMessage):
    """Platform -> device: the firmware found, or ``success=false`` with ``code=not_found``."""

    kind = TopicKind.PULL_REPLY
    messageId: Id
    success: bool = True
    code: str | None = None
    message: str | None = None
    url: str | None = None
    version: str | None = None
    parameters: dict[str, Any] | None = None
    sign: str | None = None
    signMethod: str | None = None
    firmwareId: str | None = None
    size: int | None = Field(default=None, ge=0)

    @field_validator("signMethod")
    @classmethod
    def _sign_method(cls, value: str | None) -> str | None:
        return None if value is None else _check_sign_method(value)

    def firmware(self) -> FirmwareFields:
        """The firmware a successful reply carries; ValueError naming what is missing."""
        fields = self.model_dump(include=set(FirmwareFields.model_fields), exclude_none=True)
        return FirmwareFields.model_validate(fields)


class ReportFirmware(FirmwareMessage):
    """Device -> platform: the firmware version this device runs."""

    kind = TopicKind.REPORT
    version: Id
    properties: dict[str, Any] | None = None


class ReadFirmware(FirmwareMessage):
    """Platform -> device: tell me your firmware version."""

    kind = TopicKind.READ
    messageId: Id


class ReadReply(FirmwareMessage):
    """Device -> platform: the answer to a read, same ``messageId``."""

    kind = TopicKind.READ_REPLY
    messageId: Id
    version: str
    success: bool = True
    properties: dict[str, Any] | None = None


MESSAGE_TYPES: dict[TopicKind, type[FirmwareMessage]] = {
    cls.kind: cls
    for cls in (
        UpgradeFirmware,
        UpgradeReply,
        UpgradeProgress,
        PullFirmware,
        PullReply,
        ReportFirmware,
        ReadFirmware,
        ReadReply,
    )
}


def decode(kind: TopicKind, payload: bytes | str, topic: str = "") -> FirmwareMessage:
    """Decode a payload for ``kind``; raise :class:`MessageError` naming the topic and the field."""
    topic = topic or f"firmware/{kind.value}"
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError(topic, f"payload is not valid JSON ({exc})") from None
    except RecursionError:
        raise MessageError(topic, "payload is nested too deeply") from None
    if not isinstance(data, dict):
        raise MessageError(topic, f"payload must be a JSON object, got {type(data).__name__}")
    try:
        return MESSAGE_TYPES[kind].model_validate(data)
    except ValidationError as exc:
        raise _message_error(topic, exc) from None


def message_id_of(payload: bytes | str) -> str | None:
    """Best-effort messageId of a payload that failed to decode, so a refusal can still be sent."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    value = data.get("messageId") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def _message_error(topic: str, exc: ValidationError) -> MessageError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    reason = first["msg"]
    if first["type"] == "missing":
        reason = "required field is missing"
    more = exc.error_count() - 1
    if more:
        reason += f" (and {more} more problem{'s' * (more > 1)})"
    return MessageError(topic, reason, field=field)
