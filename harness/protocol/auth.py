"""JetLinks' MQTT authentication for devices.

clientId = deviceId, username = ``secureId|timestamp``, password =
md5(``secureId|timestamp|secureKey``) in lower-case hex; the platform accepts a
timestamp within five minutes of its own clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass

from .messages import now_ms as current_ms

MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
#: What Java's Long.parseLong accepts (ASCII digits, one optional sign), and no more.
_JAVA_LONG = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class DeviceSecret:
    """A device's secureId and secureKey as the platform issues them."""

    secure_id: str
    secure_key: str


@dataclass(frozen=True)
class MqttCredentials:
    client_id: str
    username: str
    password: str


def sign_password(secure_id: str, timestamp_ms: int | str, secure_key: str) -> str:
    """md5 of ``secureId|timestamp|secureKey``; JetLinks signs the username text as sent."""
    return hashlib.md5(f"{secure_id}|{timestamp_ms}|{secure_key}".encode()).hexdigest()


def credentials_for(
    device_id: str, secret: DeviceSecret, timestamp_ms: int | None = None
) -> MqttCredentials:
    """The clientId, username and password a device connects with."""
    ts = current_ms() if timestamp_ms is None else timestamp_ms
    return MqttCredentials(
        client_id=device_id,
        username=f"{secret.secure_id}|{ts}",
        password=sign_password(secret.secure_id, ts, secret.secure_key),
    )


class AuthError(Exception):
    """Why a connecting client was refused."""


def verify(
    client_id: str | None,
    username: str | None,
    password: str | bytes | None,
    lookup: Callable[[str], DeviceSecret | None],
    now_ms: int | None = None,
) -> None:
    """Check a CONNECT's credentials; raise :class:`AuthError` saying what is wrong.

    ``lookup`` maps a device id (the clientId) to its secret, or None if unknown.
    """
    if not client_id:
        raise AuthError("clientId must be the deviceId")
    secret = lookup(client_id)
    if secret is None:
        raise AuthError(f"unknown device {client_id!r}")
    if not username or "|" not in username:
        raise AuthError(f"device {client_id!r}: username must be 'secureId|timestamp'")
    # As JetLinks: split on '|', use the first two parts, sign over the whole username.
    secure_id, ts_text = username.split("|")[:2]
    if secure_id != secret.secure_id:
        raise AuthError(f"device {client_id!r}: secureId does not match")
    if not _JAVA_LONG.fullmatch(ts_text):
        raise AuthError(f"device {client_id!r}: timestamp {ts_text!r} is not an integer")
    ts = int(ts_text)
    now = current_ms() if now_ms is None else now_ms
    if abs(now - ts) > MAX_CLOCK_SKEW_MS:
        raise AuthError(f"device {client_id!r}: timestamp is more than 5 minutes off")
    if isinstance(password, str):
        password = password.encode(errors="replace")
    expected = hashlib.md5(f"{username}|{secret.secure_key}".encode()).hexdigest().encode()
    if not password or not hmac.compare_digest(password, expected):
        raise AuthError(
            f"device {client_id!r}: password is not md5(secureId|timestamp|secureKey) "
            "in lower-case hex"
        )
