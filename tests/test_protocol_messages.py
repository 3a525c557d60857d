"""Tests for harness.protocol.messages (and ids): the seed's firmware JSON messages."""

from __future__ import annotations

import copy
import itertools
import json
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from harness.protocol import (
    MESSAGE_TYPES,
    SIGN_METHODS,
    FirmwareFields,
    FirmwareMessage,
    MessageError,
    PullFirmware,
    PullReply,
    ReadFirmware,
    ReadReply,
    ReportFirmware,
    TopicKind,
    UpgradeFirmware,
    UpgradeProgress,
    UpgradeReply,
    decode,
    message_id_of,
    new_message_id,
)

K = TopicKind
TOPIC = "/1549064506569449472/1549217055251308544/firmware/x"

# --- the seed's examples, from upgrade-flow.zh.md (comments and a trailing comma removed) ---
# The seed's signMethod is the placeholder "签名方式" ("signature method") in the short forms;
# it is replaced by a real method, since the validator (rightly) refuses the placeholder.

SEED_UPGRADE = {
    "timestamp": 1601196762389,
    "url": "固件文件下载地址",
    "version": "版本号",
    "parameters": {},
    "sign": "文件签名值",
    "signMethod": "md5",
    "firmwareId": "固件ID",
    "size": 100000,
}
SEED_UPGRADE_PUSH = {
    "messageId": "1551807719374848000",
    "deviceId": "1549217055251308544",
    "headers": {
        "deviceName": "固件升级",
        "productName": "升级",
        "productId": "1549064506569449472",
        "creatorId": "1199596756811550720",
        "timeout": 10000,
    },
    "timestamp": 1658814766149,
    "url": "http://127.0.0.1:8844/file/97b8f5ae7311a275c27e734b633635d0"
    "?accessKey=65bd8a681e1fea659886962621ddf337",
    "version": "1.0",
    "parameters": {"test": "test"},
    "sign": "b292b8415378b8660705f1e9a312cb0b",
    "signMethod": "MD5",
    "firmwareId": "1551519269396340736",
    "size": 570,
    "messageType": "UPGRADE_FIRMWARE",
}
SEED_UPGRADE_REPLY = {
    "success": True,
    "messageId": "1551807719374848000",
    "timestamp": 1658213956066,
}
SEED_PROGRESS = {
    "timestamp": 1601196762389,
    "progress": 50,
    "complete": False,
    "version": "升级的版本号",
    "success": True,
    "errorReason": "失败原因",
    "firmwareId": "固件ID",
}
SEED_PULL = {
    "timestamp": 1601196762389,
    "messageId": "消息ID",
    "currentVersion": "1.0",
    "requestVersion": "1.2",
}
SEED_PULL_REPLY = {
    "timestamp": 1601196762389,
    "messageId": "请求的ID",
    "url": "固件文件下载地址",
    "version": "版本号",
    "parameters": {},
    "sign": "文件签名值",
    "signMethod": "sha256",
    "firmwareId": "固件ID",
    "size": 100000,
}
SEED_REPORT = {"timestamp": 1601196762389, "version": "版本号"}
SEED_READ = {"timestamp": 1601196762389, "messageId": "消息ID"}
SEED_READ_REPLY = {"timestamp": 1601196762389, "messageId": "读取指令中的消息ID", "version": ""}

SEEDS = [
    pytest.param(K.UPGRADE, SEED_UPGRADE, id="upgrade"),
    pytest.param(K.UPGRADE, SEED_UPGRADE_PUSH, id="upgrade-push"),
    pytest.param(K.UPGRADE_REPLY, SEED_UPGRADE_REPLY, id="upgrade-reply"),
    pytest.param(K.UPGRADE_PROGRESS, SEED_PROGRESS, id="progress"),
    pytest.param(K.PULL, SEED_PULL, id="pull"),
    pytest.param(K.PULL_REPLY, SEED_PULL_REPLY, id="pull-reply"),
    pytest.param(K.REPORT, SEED_REPORT, id="report"),
    pytest.param(K.READ, SEED_READ, id="read"),
    pytest.param(K.READ_REPLY, SEED_READ_REPLY, id="read-reply"),
]


SEEDS_EXACT_KEYS = [
    pytest.param(K.UPGRADE, SEED_UPGRADE_PUSH, id="upgrade-push"),
    pytest.param(K.UPGRADE_REPLY, SEED_UPGRADE_REPLY, id="upgrade-reply"),
    pytest.param(K.UPGRADE_PROGRESS, SEED_PROGRESS, id="progress"),
    pytest.param(K.PULL, SEED_PULL, id="pull"),
    pytest.param(K.REPORT, SEED_REPORT, id="report"),
    pytest.param(K.READ, SEED_READ, id="read"),
]

# Seed forms the encoder writes with extra fields, on purpose (see the test below).
SEEDS_WITH_ADDED_FIELDS = [
    pytest.param(
        K.UPGRADE,
        SEED_UPGRADE,
        {"headers": {}, "messageType": "UPGRADE_FIRMWARE"},
        id="upgrade",
    ),
    pytest.param(K.PULL_REPLY, SEED_PULL_REPLY, {"success": True}, id="pull-reply"),
    pytest.param(K.READ_REPLY, SEED_READ_REPLY, {"success": True}, id="read-reply"),
]

VALID: dict[TopicKind, dict[str, Any]] = {
    K.UPGRADE: SEED_UPGRADE,
    K.UPGRADE_REPLY: SEED_UPGRADE_REPLY,
    K.UPGRADE_PROGRESS: SEED_PROGRESS,
    K.PULL: SEED_PULL,
    K.PULL_REPLY: SEED_PULL_REPLY,
    K.REPORT: SEED_REPORT,
    K.READ: SEED_READ,
    K.READ_REPLY: SEED_READ_REPLY,
}

REQUIRED: dict[TopicKind, list[str]] = {
    K.UPGRADE: ["url", "version", "sign", "signMethod", "firmwareId", "size"],
    K.UPGRADE_REPLY: ["messageId"],
    K.UPGRADE_PROGRESS: ["progress", "version", "firmwareId"],
    K.PULL: ["messageId"],
    K.PULL_REPLY: ["messageId"],
    K.REPORT: ["version"],
    K.READ: ["messageId"],
    K.READ_REPLY: ["messageId", "version"],
}


def with_(kind: TopicKind, **changes: Any) -> bytes:
    data = copy.deepcopy(VALID[kind])
    data.update(changes)
    return json.dumps(data).encode()


def without(kind: TopicKind, field: str) -> bytes:
    data = copy.deepcopy(VALID[kind])
    del data[field]
    return json.dumps(data).encode()


# --- registry ---


def test_every_topic_kind_has_a_message_type() -> None:
    assert set(MESSAGE_TYPES) == set(TopicKind)
    for kind, cls in MESSAGE_TYPES.items():
        assert cls.kind is kind


# --- the seed's examples ---


@pytest.mark.parametrize(("kind", "seed"), SEEDS)
def test_seed_example_decodes_with_its_values(kind: TopicKind, seed: dict[str, Any]) -> None:
    for payload in (json.dumps(seed).encode(), json.dumps(seed, ensure_ascii=False)):
        msg = decode(kind, payload, TOPIC)
        assert type(msg) is MESSAGE_TYPES[kind]
        encoded = json.loads(msg.to_json())
        assert encoded == msg.to_dict()
        assert {k: encoded[k] for k in seed} == seed


@pytest.mark.parametrize(("kind", "seed"), SEEDS_EXACT_KEYS)
def test_seed_example_encodes_exactly_the_seed_field_names(
    kind: TopicKind, seed: dict[str, Any]
) -> None:
    encoded = json.loads(decode(kind, json.dumps(seed)).to_json())
    assert set(encoded) == set(seed)


@pytest.mark.parametrize(("kind", "seed", "added"), SEEDS_WITH_ADDED_FIELDS)
def test_seed_example_encodes_with_the_jetlinks_added_fields(
    kind: TopicKind, seed: dict[str, Any], added: dict[str, Any]
) -> None:
    # Kept on purpose: JetLinks adds messageType (and headers) when it serialises an upgrade,
    # and its pull/read reply classes carry success.
    encoded = json.loads(decode(kind, json.dumps(seed)).to_json())
    assert encoded == {**seed, **added}


def test_seed_push_form_fields() -> None:
    msg = decode(K.UPGRADE, json.dumps(SEED_UPGRADE_PUSH))
    assert isinstance(msg, UpgradeFirmware)
    assert msg.messageId == "1551807719374848000"
    assert msg.deviceId == "1549217055251308544"
    assert msg.headers["timeout"] == 10000
    assert msg.messageType == "UPGRADE_FIRMWARE"
    assert msg.parameters == {"test": "test"}
    assert msg.size == 570
    assert msg.to_dict() == SEED_UPGRADE_PUSH


def test_seed_reply_literal() -> None:
    payload = b'{"success": true, "messageId": "1551807719374848000", "timestamp": 1658213956066}'
    msg = decode(K.UPGRADE_REPLY, payload)
    assert msg == UpgradeReply(messageId="1551807719374848000", timestamp=1658213956066)
    assert json.loads(msg.to_json()) == json.loads(payload)


def test_to_json_is_compact_utf8() -> None:
    raw = decode(K.REPORT, json.dumps(SEED_REPORT)).to_json()
    assert isinstance(raw, bytes)
    assert "版本号".encode() in raw
    assert b", " not in raw and b": " not in raw


def test_extra_fields_are_ignored() -> None:
    msg = decode(K.REPORT, with_(K.REPORT, something="else", headers={"a": 1}))
    assert "something" not in msg.to_dict()


def test_missing_timestamp_defaults_to_now() -> None:
    msg = decode(K.READ, b'{"messageId": "1"}')
    assert msg.timestamp > 1_600_000_000_000


# --- round trip of every model ---

MODELS: list[FirmwareMessage] = [
    UpgradeFirmware(**SEED_UPGRADE),
    UpgradeFirmware(**SEED_UPGRADE_PUSH),
    UpgradeReply(messageId="1", success=False, code="busy", message="try later", deviceId="d"),
    UpgradeReply(messageId="1"),
    UpgradeProgress(progress=0, version="1.1", firmwareId="f"),
    UpgradeProgress(
        progress=100, complete=True, version="1.1", success=False, errorReason="x", firmwareId="f"
    ),
    PullFirmware(messageId="1"),
    PullFirmware(messageId="1", currentVersion="1.0", requestVersion="1.2"),
    PullReply(messageId="1", success=False, code="not_found", message="no firmware"),
    PullReply(**SEED_PULL_REPLY),
    ReportFirmware(version="1.0"),
    ReportFirmware(version="1.0", properties={"a": [1, 2.5, None, {"b": True}]}),
    ReadFirmware(messageId="1"),
    ReadReply(messageId="1", version=""),
    ReadReply(messageId="1", version="2", success=False, properties={}),
]


@pytest.mark.parametrize("msg", MODELS, ids=lambda m: type(m).__name__)
def test_model_round_trip(msg: FirmwareMessage) -> None:
    again = decode(msg.kind, msg.to_json(), TOPIC)
    assert type(again) is type(msg)
    assert again == msg
    assert decode(msg.kind, msg.to_json().decode()) == msg


def test_models_cover_every_type() -> None:
    assert {type(m) for m in MODELS} == set(MESSAGE_TYPES.values())


# --- None handling on encode ---


def test_none_fields_are_omitted() -> None:
    assert UpgradeReply(messageId="1", timestamp=5).to_dict() == {
        "messageId": "1",
        "success": True,
        "timestamp": 5,
    }
    progress = UpgradeProgress(progress=1, version="v", firmwareId="f").to_dict()
    assert "errorReason" not in progress and "deviceId" not in progress
    reply = PullReply(messageId="1", success=False, code="not_found").to_dict()
    for absent in ("message", "url", "version", "parameters", "sign", "signMethod", "size"):
        assert absent not in reply
    assert "properties" not in ReportFirmware(version="1").to_dict()
    upgrade = UpgradeFirmware(**SEED_UPGRADE).to_dict()
    assert "messageId" not in upgrade and "deviceId" not in upgrade
    assert b"null" not in UpgradeFirmware(**SEED_UPGRADE).to_json()


def test_pull_writes_null_versions() -> None:
    msg = PullFirmware(messageId="1", timestamp=7)
    assert msg.to_dict() == {
        "timestamp": 7,
        "messageId": "1",
        "currentVersion": None,
        "requestVersion": None,
    }
    raw = msg.to_json()
    assert b'"currentVersion":null' in raw and b'"requestVersion":null' in raw
    assert decode(K.PULL, raw) == msg


def test_pull_accepts_null_versions() -> None:
    msg = decode(K.PULL, with_(K.PULL, currentVersion=None, requestVersion=None))
    assert isinstance(msg, PullFirmware)
    assert msg.currentVersion is None and msg.requestVersion is None


# --- signMethod ---


@pytest.mark.parametrize("method", ["md5", "MD5", "Md5", "sha256", "SHA256", "Sha256"])
@pytest.mark.parametrize("kind", [K.UPGRADE, K.PULL_REPLY])
def test_sign_method_any_case_is_accepted(kind: TopicKind, method: str) -> None:
    msg = decode(kind, with_(kind, signMethod=method))
    assert msg.signMethod == method  # type: ignore[attr-defined]
    assert method.lower() in SIGN_METHODS


@pytest.mark.parametrize("method", ["sha1", "crc32", "", "md 5", "sha-256", "签名方式"])
@pytest.mark.parametrize("kind", [K.UPGRADE, K.PULL_REPLY])
def test_sign_method_unknown_is_refused(kind: TopicKind, method: str) -> None:
    with pytest.raises(MessageError) as info:
        decode(kind, with_(kind, signMethod=method), TOPIC)
    assert info.value.field == "signMethod"
    assert info.value.topic == TOPIC
    assert "md5" in info.value.reason and "sha256" in info.value.reason


@pytest.mark.parametrize("method", ["sha1", ""])
def test_pull_reply_model_refuses_unknown_sign_method(method: str) -> None:
    with pytest.raises(ValidationError):
        PullReply(messageId="1", signMethod=method)


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        (K.UPGRADE, 5),
        (K.UPGRADE, ["md5"]),
        (K.UPGRADE, None),
        (K.PULL_REPLY, 5),
        (K.PULL_REPLY, ["md5"]),
    ],
)
def test_sign_method_of_wrong_type_is_refused(kind: TopicKind, method: Any) -> None:
    with pytest.raises(MessageError) as info:
        decode(kind, with_(kind, signMethod=method), TOPIC)
    assert info.value.field == "signMethod"


def test_pull_reply_refusal_needs_no_sign_method() -> None:
    reply = decode(K.PULL_REPLY, b'{"messageId": "1", "success": false, "signMethod": null}')
    assert reply.signMethod is None  # type: ignore[attr-defined]
    absent = decode(K.PULL_REPLY, b'{"messageId": "1", "success": false}')
    assert absent.signMethod is None  # type: ignore[attr-defined]
    assert PullReply(messageId="1", signMethod=None).signMethod is None


def test_sign_method_error_lists_the_methods() -> None:
    with pytest.raises(MessageError) as info:
        decode(K.UPGRADE, with_(K.UPGRADE, signMethod="sha1"))
    assert "md5" in info.value.reason and "sha256" in info.value.reason


# --- refusals ---

BAD = [
    (K.UPGRADE_PROGRESS, {"progress": 101}, "progress"),
    (K.UPGRADE_PROGRESS, {"progress": -1}, "progress"),
    (K.UPGRADE_PROGRESS, {"progress": "50"}, "progress"),
    (K.UPGRADE_PROGRESS, {"progress": 50.0}, "progress"),
    (K.UPGRADE_PROGRESS, {"progress": True}, "progress"),
    (K.UPGRADE_PROGRESS, {"complete": "false"}, "complete"),
    (K.UPGRADE_PROGRESS, {"success": 1}, "success"),
    (K.UPGRADE_PROGRESS, {"version": ""}, "version"),
    (K.UPGRADE, {"size": "100000"}, "size"),
    (K.UPGRADE, {"size": -1}, "size"),
    (K.UPGRADE, {"timestamp": "1601196762389"}, "timestamp"),
    (K.UPGRADE, {"timestamp": -1}, "timestamp"),
    (K.UPGRADE, {"url": ""}, "url"),
    (K.UPGRADE, {"parameters": []}, "parameters"),
    (K.UPGRADE, {"messageType": "READ_FIRMWARE"}, "messageType"),
    (K.UPGRADE_REPLY, {"messageId": 1551807719374848000}, "messageId"),
    (K.UPGRADE_REPLY, {"messageId": ""}, "messageId"),
    (K.UPGRADE_REPLY, {"success": "true"}, "success"),
    (K.PULL, {"currentVersion": 1.0}, "currentVersion"),
    (K.PULL_REPLY, {"size": "1"}, "size"),
    (K.REPORT, {"version": 1.2}, "version"),
    (K.READ, {"messageId": None}, "messageId"),
    (K.READ_REPLY, {"version": None}, "version"),
]


@pytest.mark.parametrize(("kind", "changes", "field"), BAD)
def test_bad_field_is_refused_naming_topic_and_field(
    kind: TopicKind, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(MessageError) as info:
        decode(kind, with_(kind, **changes), TOPIC)
    err = info.value
    assert err.topic == TOPIC
    assert err.field == field
    assert repr(TOPIC) in str(err) and f"field {field!r}" in str(err)


@pytest.mark.parametrize(
    ("kind", "field"), [(kind, field) for kind, fields in REQUIRED.items() for field in fields]
)
def test_missing_required_field(kind: TopicKind, field: str) -> None:
    with pytest.raises(MessageError) as info:
        decode(kind, without(kind, field), TOPIC)
    assert info.value.topic == TOPIC
    assert info.value.field == field
    assert "missing" in info.value.reason


def test_several_problems_are_counted() -> None:
    with pytest.raises(MessageError) as info:
        decode(K.UPGRADE_PROGRESS, b'{"progress": 500}', TOPIC)
    assert info.value.field == "progress"
    assert "and 2 more problems" in info.value.reason


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"messageId": "1"', "not valid JSON"),
        ("{'messageId': '1'}", "not valid JSON"),
        (b'{"messageId": "\xff\xfe"}', "not valid JSON"),
        (b"\x80\x81\x82", "not valid JSON"),
        (b'[{"messageId": "1"}]', "JSON object"),
        (b'"messageId"', "JSON object"),
        (b"42", "JSON object"),
        (b"null", "JSON object"),
    ],
)
@pytest.mark.parametrize("kind", list(TopicKind))
def test_payload_that_is_not_a_json_object(kind: TopicKind, payload: bytes, words: str) -> None:
    with pytest.raises(MessageError) as info:
        decode(kind, payload, TOPIC)
    assert info.value.topic == TOPIC
    assert info.value.field is None
    assert words in info.value.reason


@pytest.mark.parametrize("kind", list(TopicKind))
def test_default_topic_names_the_kind(kind: TopicKind) -> None:
    with pytest.raises(MessageError) as info:
        decode(kind, b"[]")
    assert info.value.topic == f"firmware/{kind.value}"


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000,
        b'{"messageId": "1", "parameters": ' + b"[" * 100_000,
        b'{"messageId": "1", "x": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001,
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=["open-lists", "open-in-object", "closed-objects", "closed-lists-str"],
)
@pytest.mark.parametrize("kind", [K.READ, K.UPGRADE])
def test_deeply_nested_json_is_a_message_error(kind: TopicKind, payload: bytes | str) -> None:
    with pytest.raises(MessageError) as info:
        decode(kind, payload, TOPIC)
    assert info.value.topic == TOPIC
    assert info.value.field is None
    assert info.value.reason == "payload is nested too deeply"


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        pytest.param(
            K.READ_REPLY,
            b'{"messageId": "1", "version": "1", "properties": {"a": "\\ud800"}}',
            id="properties-value",
        ),
        pytest.param(
            K.REPORT,
            b'{"version": "1", "properties": {"a": ["x", {"b": "\\udfff\\ud800"}]}}',
            id="nested-value",
        ),
        pytest.param(K.UPGRADE, with_(K.UPGRADE, headers={"a": "\ud800"}), id="headers-value"),
        pytest.param(
            K.PULL_REPLY, with_(K.PULL_REPLY, parameters={"a": "\udc80"}), id="parameters-value"
        ),
        pytest.param(
            K.READ_REPLY,
            b'{"messageId": "1", "version": "1", "properties": {"\\ud800": 1}}',
            id="properties-key",
        ),
        pytest.param(
            K.UPGRADE,
            with_(K.UPGRADE, parameters={"\ud800": "x"}),
            id="parameters-key",
        ),
    ],
)
def test_whatever_decodes_re_encodes(kind: TopicKind, payload: bytes) -> None:
    msg = decode(kind, payload)  # these all decode: the surrogate is in a free-form field
    raw = msg.to_json()
    raw.decode("utf-8")  # valid UTF-8 on the wire
    assert decode(kind, raw) == msg
    assert b"\\u" in raw  # the ASCII-escaped fallback, not a replacement character


def test_to_json_stays_utf8_without_surrogates() -> None:
    msg = ReportFirmware(version="版本号", properties={"键": "值"})
    raw = msg.to_json()
    assert "版本号".encode() in raw and "键".encode() in raw and b"\\u" not in raw


def test_lone_surrogate_in_a_string_field_is_a_message_error() -> None:
    with pytest.raises(MessageError) as info:
        decode(K.READ, b'{"messageId": "\\ud800"}')
    assert info.value.field == "messageId"


# --- message_id_of ---


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"messageId": "1551807719374848000", "progress": 500}', "1551807719374848000"),
        ('{"messageId": "abc"}', "abc"),
        (json.dumps(SEED_UPGRADE_PUSH).encode(), "1551807719374848000"),
        (b"not json", None),
        (b"\xff\xfe\xfd", None),
        (b"", None),
        (b'["messageId"]', None),
        (b'"messageId"', None),
        (b"{}", None),
        (b'{"messageId": ""}', None),
        (b'{"messageId": 1551807719374848000}', None),
        (b'{"messageId": null}', None),
        (b'{"messageId": ["1"]}', None),
    ],
)
def test_message_id_of(payload: bytes | str, expected: str | None) -> None:
    assert message_id_of(payload) == expected


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000,
        b'{"messageId": "1", "parameters": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "{" + '"a": {' * 100_000 + "}" * 100_001,
    ],
)
def test_message_id_of_deeply_nested(payload: bytes | str) -> None:
    assert message_id_of(payload) is None


# --- PullReply.firmware() ---


def test_pull_reply_firmware() -> None:
    reply = decode(K.PULL_REPLY, json.dumps(SEED_PULL_REPLY))
    assert isinstance(reply, PullReply)
    fw = reply.firmware()
    assert isinstance(fw, FirmwareFields)
    expected = {k: v for k, v in SEED_PULL_REPLY.items() if k not in ("timestamp", "messageId")}
    assert fw.model_dump() == expected


def test_pull_reply_firmware_of_the_push_fields() -> None:
    push = UpgradeFirmware(**SEED_UPGRADE_PUSH)
    reply = PullReply(messageId="9", **FirmwareFields(**SEED_UPGRADE_PUSH).model_dump())
    assert reply.firmware() == FirmwareFields(
        **push.model_dump(include=set(FirmwareFields.model_fields))
    )


def test_pull_reply_firmware_of_a_refusal_raises_value_error() -> None:
    reply = decode(K.PULL_REPLY, b'{"messageId": "1", "success": false, "code": "not_found"}')
    with pytest.raises(ValueError) as info:
        reply.firmware()  # type: ignore[attr-defined]
    assert isinstance(info.value, ValidationError)
    assert {e["loc"][0] for e in info.value.errors()} >= {"url", "version", "sign", "size"}


def test_pull_reply_firmware_without_parameters() -> None:
    data = {k: v for k, v in SEED_PULL_REPLY.items() if k != "parameters"}
    assert decode(K.UPGRADE, json.dumps(data)).parameters == {}  # type: ignore[attr-defined]
    reply = decode(K.PULL_REPLY, json.dumps(data))
    assert reply.firmware().parameters == {}  # type: ignore[attr-defined]
    assert reply.firmware() == decode(K.PULL_REPLY, json.dumps(SEED_PULL_REPLY)).firmware()  # type: ignore[attr-defined]


@pytest.mark.parametrize("missing", ["url", "version", "sign", "signMethod", "firmwareId", "size"])
def test_pull_reply_firmware_names_the_missing_field(missing: str) -> None:
    data = {k: v for k, v in SEED_PULL_REPLY.items() if k not in (missing, "parameters")}
    reply = decode(K.PULL_REPLY, json.dumps(data))
    with pytest.raises(ValueError) as info:
        reply.firmware()  # type: ignore[attr-defined]
    assert isinstance(info.value, ValidationError)
    assert [(e["loc"], e["type"]) for e in info.value.errors()] == [((missing,), "missing")]
    assert missing in str(info.value)


# --- property tests ---

_text = st.text(max_size=12)
_id = st.text(min_size=1, max_size=20)
_ts = st.integers(min_value=0, max_value=2**53)
_opt = st.none() | _text
_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_json = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_obj = st.dictionaries(_text, _json, max_size=4)
_method = st.sampled_from(["md5", "MD5", "Md5", "sha256", "SHA256", "Sha256"])
_fw = {
    "url": st.text(min_size=1, max_size=30),
    "version": _id,
    "parameters": _obj,
    "sign": st.text(min_size=1, max_size=64),
    "signMethod": _method,
    "firmwareId": _id,
    "size": st.integers(min_value=0, max_value=2**40),
}

STRATEGIES: dict[type[FirmwareMessage], st.SearchStrategy[FirmwareMessage]] = {
    UpgradeFirmware: st.builds(
        UpgradeFirmware,
        timestamp=_ts,
        messageId=st.none() | _id,
        deviceId=st.none() | _id,
        headers=_obj,
        **_fw,
    ),
    UpgradeReply: st.builds(
        UpgradeReply,
        timestamp=_ts,
        messageId=_id,
        success=st.booleans(),
        code=_opt,
        message=_opt,
        deviceId=_opt,
    ),
    UpgradeProgress: st.builds(
        UpgradeProgress,
        timestamp=_ts,
        progress=st.integers(0, 100),
        complete=st.booleans(),
        version=_id,
        success=st.booleans(),
        errorReason=_opt,
        firmwareId=_id,
        deviceId=_opt,
    ),
    PullFirmware: st.builds(
        PullFirmware, timestamp=_ts, messageId=_id, currentVersion=_opt, requestVersion=_opt
    ),
    PullReply: st.one_of(
        st.builds(
            PullReply,
            timestamp=_ts,
            messageId=_id,
            success=st.just(False),
            code=_opt,
            message=_opt,
        ),
        st.builds(PullReply, timestamp=_ts, messageId=_id, **_fw),
    ),
    ReportFirmware: st.builds(
        ReportFirmware, timestamp=_ts, version=_id, properties=st.none() | _obj
    ),
    ReadFirmware: st.builds(ReadFirmware, timestamp=_ts, messageId=_id),
    ReadReply: st.builds(
        ReadReply,
        timestamp=_ts,
        messageId=_id,
        version=_text,
        success=st.booleans(),
        properties=st.none() | _obj,
    ),
}


def test_strategies_cover_every_type() -> None:
    assert set(STRATEGIES) == set(MESSAGE_TYPES.values())


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_generated_messages_round_trip(cls: type[FirmwareMessage], data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[cls])
    again = decode(msg.kind, msg.to_json(), TOPIC)
    assert type(again) is cls
    assert again == msg
    if isinstance(msg, PullReply) and msg.success:
        assert msg.firmware() == FirmwareFields(
            **msg.model_dump(include=set(FirmwareFields.model_fields))
        )


_field_names = sorted({name for cls in MESSAGE_TYPES.values() for name in cls.model_fields})
_any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["md5", "SHA256", "UPGRADE_FIRMWARE", "1"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_field_names) | st.text(max_size=6), inner, max_size=8)
    ),
    max_leaves=20,
)


def _decodes_or_message_error(kind: TopicKind, payload: bytes | str) -> None:
    try:
        msg = decode(kind, payload, TOPIC)
    except MessageError as err:
        assert err.topic == TOPIC
        assert err.field is None or err.field.split(".")[0] in MESSAGE_TYPES[kind].model_fields
        return
    assert type(msg) is MESSAGE_TYPES[kind]


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(list(TopicKind)), payload=st.binary(max_size=64) | st.text(max_size=64))
def test_arbitrary_bytes_decode_or_message_error(kind: TopicKind, payload: bytes | str) -> None:
    _decodes_or_message_error(kind, payload)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(list(TopicKind)), value=_any_json)
def test_arbitrary_json_decode_or_message_error(kind: TopicKind, value: Any) -> None:
    _decodes_or_message_error(kind, json.dumps(value))


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(list(TopicKind)), data=st.data())
def test_mutated_valid_message_decodes_or_message_error(
    kind: TopicKind, data: st.DataObject
) -> None:
    """A valid message with one field replaced by any JSON value: hits the field validators."""
    payload = copy.deepcopy(VALID[kind])
    field = data.draw(st.sampled_from(sorted(MESSAGE_TYPES[kind].model_fields)))
    payload[field] = data.draw(_any_json)
    _decodes_or_message_error(kind, json.dumps(payload))


# --- message ids ---


def _is_id(value: str) -> bool:
    return isinstance(value, str) and value.isdecimal() and value.isascii() and value[0] != "0"


def test_message_ids_unique_and_increasing() -> None:
    ids = [new_message_id() for _ in range(10_000)]
    assert all(_is_id(i) for i in ids)
    numbers = [int(i) for i in ids]
    assert all(a < b for a, b in itertools.pairwise(numbers))
    assert len(ids[0]) == 19  # JetLinks-sized snowflake


def test_message_ids_unique_and_increasing_across_threads() -> None:
    per_thread: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(per_thread))

    def work(out: list[str]) -> None:
        start.wait()
        for _ in range(1250):
            out.append(new_message_id())

    threads = [threading.Thread(target=work, args=(out,)) for out in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for out in per_thread for i in out]
    assert len(everything) == 10_000
    assert len(set(everything)) == 10_000
    assert all(_is_id(i) for i in everything)
    for out in per_thread:
        numbers = [int(i) for i in out]
        assert all(a < b for a, b in itertools.pairwise(numbers))
    assert int(new_message_id()) > max(int(i) for i in everything)
