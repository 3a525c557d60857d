"""Tests for harness.protocol.auth: JetLinks' MQTT clientId/username/password scheme."""

from __future__ import annotations

import hashlib
import re

import pytest

from harness.protocol import AuthError, DeviceSecret, credentials_for, sign_password, verify

DEVICE = "1549217055251308544"
SECRET = DeviceSecret(secure_id="sid-gw-01", secure_key="k3y-0f-gw-01")
TS = 1658213956066
FIVE_MIN = 5 * 60 * 1000
# Computed independently of the code under test.
EXPECTED_PASSWORD = hashlib.md5(f"sid-gw-01|{TS}|k3y-0f-gw-01".encode()).hexdigest()


def lookup(device_id: str) -> DeviceSecret | None:
    return SECRET if device_id == DEVICE else None


def good_password(ts: int = TS) -> str:
    return hashlib.md5(f"{SECRET.secure_id}|{ts}|{SECRET.secure_key}".encode()).hexdigest()


def test_credentials_for_fixed_example() -> None:
    creds = credentials_for(DEVICE, SECRET, TS)
    assert creds.client_id == DEVICE
    assert creds.username == f"sid-gw-01|{TS}"
    assert creds.password == EXPECTED_PASSWORD
    assert re.fullmatch(r"[0-9a-f]{32}", creds.password)
    assert sign_password(SECRET.secure_id, TS, SECRET.secure_key) == EXPECTED_PASSWORD


def test_credentials_for_uses_the_clock_by_default() -> None:
    creds = credentials_for(DEVICE, SECRET)
    secure_id, ts = creds.username.split("|")
    assert secure_id == SECRET.secure_id
    assert creds.password == good_password(int(ts))
    verify(creds.client_id, creds.username, creds.password, lookup)  # now from the clock


@pytest.mark.parametrize("skew", [0, 1, -1, FIVE_MIN, -FIVE_MIN])
def test_verify_accepts_good_credentials(skew: int) -> None:
    creds = credentials_for(DEVICE, SECRET, TS)
    assert verify(creds.client_id, creds.username, creds.password, lookup, now_ms=TS + skew) is None


def test_verify_accepts_bytes_password() -> None:
    assert verify(DEVICE, f"sid-gw-01|{TS}", EXPECTED_PASSWORD.encode(), lookup, now_ms=TS) is None


@pytest.mark.parametrize(
    "password",
    [
        EXPECTED_PASSWORD.upper(),
        EXPECTED_PASSWORD.upper().encode(),
        EXPECTED_PASSWORD[:16].upper() + EXPECTED_PASSWORD[16:],
    ],
    ids=["upper-str", "upper-bytes", "mixed-case"],
)
def test_verify_refuses_upper_case_password(password: str | bytes) -> None:
    # JetLinks compares md5Hex (lower case) with equals: a mock accepting upper case would
    # hide a device that JetLinks refuses.
    assert any(c.isalpha() for c in EXPECTED_PASSWORD)  # else upper() changes nothing
    with pytest.raises(AuthError, match="password") as info:
        verify(DEVICE, f"sid-gw-01|{TS}", password, lookup, now_ms=TS)
    assert "lower-case hex" in str(info.value)


@pytest.mark.parametrize(
    "password",
    [f" {EXPECTED_PASSWORD}", f"{EXPECTED_PASSWORD}\n", EXPECTED_PASSWORD + "0"],
    ids=["leading-space", "trailing-newline", "one-char-more"],
)
def test_verify_refuses_password_that_only_contains_the_signature(password: str) -> None:
    with pytest.raises(AuthError, match="password"):
        verify(DEVICE, f"sid-gw-01|{TS}", password, lookup, now_ms=TS)


@pytest.mark.parametrize(
    ("client_id", "username", "password", "now", "words"),
    [
        (None, f"sid-gw-01|{TS}", EXPECTED_PASSWORD, TS, "clientId"),
        ("", f"sid-gw-01|{TS}", EXPECTED_PASSWORD, TS, "clientId"),
        ("1549217055251308545", f"sid-gw-01|{TS}", EXPECTED_PASSWORD, TS, "unknown device"),
        (DEVICE, f"sid-gw-01{TS}", EXPECTED_PASSWORD, TS, "secureId|timestamp"),
        (DEVICE, "", EXPECTED_PASSWORD, TS, "secureId|timestamp"),
        (DEVICE, None, EXPECTED_PASSWORD, TS, "secureId|timestamp"),
        (DEVICE, f"sid-gw-02|{TS}", EXPECTED_PASSWORD, TS, "secureId does not match"),
        (DEVICE, f"|{TS}", EXPECTED_PASSWORD, TS, "secureId does not match"),
        (DEVICE, "sid-gw-01|abc", EXPECTED_PASSWORD, TS, "not an integer"),
        (DEVICE, "sid-gw-01|", EXPECTED_PASSWORD, TS, "not an integer"),
        (DEVICE, f"sid-gw-01|{TS}.0", EXPECTED_PASSWORD, TS, "not an integer"),
        (DEVICE, f"sid-gw-01|{TS}", EXPECTED_PASSWORD, TS + FIVE_MIN + 1, "5 minutes"),
        (DEVICE, f"sid-gw-01|{TS}", EXPECTED_PASSWORD, TS - FIVE_MIN - 1, "5 minutes"),
        (DEVICE, f"sid-gw-01|{TS}", good_password(TS + 1), TS, "password"),
        (DEVICE, f"sid-gw-01|{TS}", EXPECTED_PASSWORD[:-1], TS, "password"),
        (DEVICE, f"sid-gw-01|{TS}", "", TS, "password"),
        (DEVICE, f"sid-gw-01|{TS}", None, TS, "password"),
        (
            DEVICE,
            f"sid-gw-01|{TS}",
            hashlib.md5(f"sid-gw-01|{TS}|wrong-key".encode()).hexdigest(),
            TS,
            "password",
        ),
    ],
    ids=[
        "no-clientId",
        "empty-clientId",
        "unknown-device",
        "username-without-bar",
        "empty-username",
        "no-username",
        "wrong-secureId",
        "empty-secureId",
        "timestamp-not-a-number",
        "timestamp-empty",
        "timestamp-float",
        "timestamp-5min+1ms-old",
        "timestamp-5min+1ms-ahead",
        "password-for-other-timestamp",
        "password-truncated",
        "password-empty",
        "password-none",
        "password-with-wrong-key",
    ],
)
def test_verify_refuses(
    client_id: str | None, username: str | None, password: str | None, now: int, words: str
) -> None:
    with pytest.raises(AuthError, match=re.escape(words)):
        verify(client_id, username, password, lookup, now_ms=now)


def test_password_refusal_message() -> None:
    with pytest.raises(AuthError) as info:
        verify(DEVICE, f"sid-gw-01|{TS}", "0" * 32, lookup, now_ms=TS)
    assert str(info.value) == (
        f"device {DEVICE!r}: password is not md5(secureId|timestamp|secureKey) in lower-case hex"
    )


def test_refusal_names_the_device() -> None:
    with pytest.raises(AuthError) as info:
        verify(DEVICE, f"sid-gw-01|{TS}", "0" * 32, lookup, now_ms=TS)
    assert DEVICE in str(info.value)


def test_unknown_device_is_checked_before_the_username() -> None:
    seen: list[str] = []

    def spy(device_id: str) -> DeviceSecret | None:
        seen.append(device_id)
        return None

    with pytest.raises(AuthError, match="unknown device"):
        verify("nobody", "garbage", "garbage", spy, now_ms=TS)
    assert seen == ["nobody"]


@pytest.mark.parametrize(
    "password",
    [
        "é" * 32,
        b"\xff" * 32,
        "é" * 16,
        EXPECTED_PASSWORD[:-1] + "é",
        "\ud800" * 32,
    ],
    ids=["non-ascii-str", "bad-utf8", "non-ascii-16-chars", "one-non-ascii-char", "surrogates"],
)
def test_verify_refuses_non_ascii_password_with_auth_error(password: str | bytes) -> None:
    with pytest.raises(AuthError, match="password"):
        verify(DEVICE, f"sid-gw-01|{TS}", password, lookup, now_ms=TS)


# JetLinks signs md5(username + "|" + secureKey) over the username text as sent.
@pytest.mark.parametrize("ts_text", [f"0{TS}", f"+{TS}", f"00{TS}"])
def test_verify_signs_over_the_username_text(ts_text: str) -> None:
    username = f"{SECRET.secure_id}|{ts_text}"
    password = hashlib.md5(f"{username}|{SECRET.secure_key}".encode()).hexdigest()
    assert verify(DEVICE, username, password, lookup, now_ms=TS) is None
    assert verify(DEVICE, username, password.encode(), lookup, now_ms=TS + FIVE_MIN) is None


@pytest.mark.parametrize("ts_text", [f"0{TS}", f"+{TS}"])
def test_verify_refuses_a_password_signed_over_the_reformatted_timestamp(ts_text: str) -> None:
    # md5 over the parsed number, not the text as sent: JetLinks refuses this.
    with pytest.raises(AuthError, match="password"):
        verify(DEVICE, f"{SECRET.secure_id}|{ts_text}", EXPECTED_PASSWORD, lookup, now_ms=TS)


@pytest.mark.parametrize("ts_text", [f"0{TS}", f"+{TS}"])
@pytest.mark.parametrize("now", [TS + FIVE_MIN + 1, TS - FIVE_MIN - 1])
def test_verify_checks_the_window_on_the_parsed_timestamp(ts_text: str, now: int) -> None:
    username = f"{SECRET.secure_id}|{ts_text}"
    password = hashlib.md5(f"{username}|{SECRET.secure_key}".encode()).hexdigest()
    with pytest.raises(AuthError, match="5 minutes"):
        verify(DEVICE, username, password, lookup, now_ms=now)


# JetLinks' Long.parseLong refuses what Python's int() would take (spaces, '_').
@pytest.mark.parametrize(
    "ts_text",
    [f" {TS}", f"{TS} ", f"{TS}\n", f"{TS:_}"],
    ids=["leading-space", "trailing-space", "trailing-newline", "underscores"],
)
def test_verify_refuses_a_timestamp_java_cannot_parse(ts_text: str) -> None:
    username = f"{SECRET.secure_id}|{ts_text}"
    password = hashlib.md5(f"{username}|{SECRET.secure_key}".encode()).hexdigest()
    with pytest.raises(AuthError, match="not an integer"):
        verify(DEVICE, username, password, lookup, now_ms=TS)


# JetLinks splits the username on '|' and signs over all of it, so extra parts pass.
@pytest.mark.parametrize("extra", ["|x", "|"])
def test_verify_accepts_extra_username_parts_signed_over_the_whole_username(extra: str) -> None:
    username = f"{SECRET.secure_id}|{TS}{extra}"
    password = hashlib.md5(f"{username}|{SECRET.secure_key}".encode()).hexdigest()
    assert verify(DEVICE, username, password, lookup, now_ms=TS) is None
