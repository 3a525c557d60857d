"""Tests for harness.protocol.topics: building, parsing and subscribing to firmware topics."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from harness.protocol import (
    PLATFORM_SUBSCRIPTIONS,
    FirmwareTopic,
    TopicError,
    TopicKind,
    child_topic,
    device_topic,
    parse_topic,
    subscriptions_for_device,
)

DOWNSTREAM = {TopicKind.UPGRADE, TopicKind.PULL_REPLY, TopicKind.READ}
UPSTREAM = set(TopicKind) - DOWNSTREAM


def matches_any(filters: list[str], topic: str) -> bool:
    return any(topic_matches_sub(f, topic) for f in filters)


# --- the filter matcher itself (so a broken matcher cannot make the tests below vacuous) ---


@pytest.mark.parametrize(
    ("sub", "topic", "expected"),
    [
        ("/+/+/firmware/upgrade", "/p/d/firmware/upgrade", True),
        ("/+/+/firmware/upgrade", "/p/d/firmware/upgrade/reply", False),
        ("/+/+/firmware/upgrade", "/p/g/child/c/firmware/upgrade", False),
        ("/p/d/child/+/firmware/read", "/p/d/child/c/firmware/read", True),
        ("/p/d/child/+/firmware/read", "/p/x/child/c/firmware/read", False),
    ],
)
def test_topic_matcher_sanity(sub: str, topic: str, expected: bool) -> None:
    assert topic_matches_sub(sub, topic) is expected


# --- direction ---


def test_downstream_kinds_are_exactly_upgrade_pull_reply_and_read() -> None:
    assert {k for k in TopicKind if k.downstream} == DOWNSTREAM


# --- build / parse round trip ---


@pytest.mark.parametrize("kind", list(TopicKind))
def test_device_topic_round_trip(kind: TopicKind) -> None:
    topic = device_topic("1549064506569449472", "1549217055251308544", kind)
    text = str(topic)
    assert text == f"/1549064506569449472/1549217055251308544/firmware/{kind.value}"
    parsed = parse_topic(text)
    assert parsed == topic
    assert parsed.kind is kind
    assert parsed.gateway_id is None
    assert not parsed.is_child


@pytest.mark.parametrize("kind", list(TopicKind))
def test_child_topic_round_trip(kind: TopicKind) -> None:
    topic = child_topic("prod", "gw-1", "node-7", kind)
    text = str(topic)
    assert text == f"/prod/gw-1/child/node-7/firmware/{kind.value}"
    parsed = parse_topic(text)
    assert parsed == topic
    assert parsed.product_id == "prod"
    assert parsed.gateway_id == "gw-1"
    assert parsed.device_id == "node-7"
    assert parsed.kind is kind
    assert parsed.is_child


@pytest.mark.parametrize("gateway", [None, "gw"])
def test_with_kind_keeps_the_device(gateway: str | None) -> None:
    topic = FirmwareTopic("p", "d", TopicKind.UPGRADE, gateway)
    reply = topic.with_kind(TopicKind.UPGRADE_REPLY)
    assert reply == FirmwareTopic("p", "d", TopicKind.UPGRADE_REPLY, gateway)
    assert parse_topic(str(reply)) == reply


def test_ids_that_look_like_the_child_keyword_round_trip() -> None:
    for topic in (
        device_topic("child", "child", TopicKind.PULL),
        child_topic("child", "child", "child", TopicKind.READ_REPLY),
    ):
        assert parse_topic(str(topic)) == topic


@pytest.mark.parametrize(
    "topic",
    [
        device_topic("firmware", "d", TopicKind.UPGRADE),
        device_topic("p", "firmware", TopicKind.UPGRADE),
        device_topic("firmware", "firmware", TopicKind.PULL_REPLY),
        child_topic("p", "firmware", "c", TopicKind.UPGRADE),
        child_topic("p", "g", "firmware", TopicKind.UPGRADE),
        child_topic("firmware", "child", "firmware", TopicKind.READ),
        child_topic("child", "firmware", "child", TopicKind.UPGRADE_PROGRESS),
    ],
    ids=str,
)
def test_ids_named_firmware_round_trip(topic: FirmwareTopic) -> None:
    assert parse_topic(str(topic)) == topic


_id = st.sampled_from(["firmware", "child"]) | st.text(
    alphabet=st.characters(exclude_characters="/+#", exclude_categories=("Cs",)), min_size=1
)


@settings(max_examples=200, deadline=None)
@given(product=_id, gateway=_id, device=_id, kind=st.sampled_from(list(TopicKind)))
def test_round_trip_property(product: str, gateway: str, device: str, kind: TopicKind) -> None:
    for topic in (device_topic(product, device, kind), child_topic(product, gateway, device, kind)):
        assert parse_topic(str(topic)) == topic


# --- subscriptions ---


@pytest.mark.parametrize("kind", list(TopicKind))
def test_device_subscriptions_cover_exactly_downstream_own_topics(kind: TopicKind) -> None:
    subs = subscriptions_for_device("p", "gw")
    assert matches_any(subs, str(device_topic("p", "gw", kind))) is kind.downstream
    # another device, another product: never
    assert not matches_any(subs, str(device_topic("p", "other", kind)))
    assert not matches_any(subs, str(device_topic("q", "gw", kind)))


@pytest.mark.parametrize("kind", list(TopicKind))
def test_device_subscriptions_cover_exactly_downstream_child_topics(kind: TopicKind) -> None:
    subs = subscriptions_for_device("p", "gw")
    for child in ("node-1", "1551519269396340736"):
        assert matches_any(subs, str(child_topic("p", "gw", child, kind))) is kind.downstream
    # children of another gateway: never
    assert not matches_any(subs, str(child_topic("p", "gw2", "node-1", kind)))


def test_device_subscriptions_have_no_redundant_filters() -> None:
    subs = subscriptions_for_device("p", "gw")
    assert len(subs) == len(set(subs)) == 2 * len(DOWNSTREAM)
    assert all("#" not in s for s in subs)


@pytest.mark.parametrize("kind", list(TopicKind))
def test_platform_subscriptions_cover_exactly_upstream_kinds(kind: TopicKind) -> None:
    expected = not kind.downstream
    assert matches_any(PLATFORM_SUBSCRIPTIONS, str(device_topic("p", "d", kind))) is expected
    assert matches_any(PLATFORM_SUBSCRIPTIONS, str(child_topic("p", "g", "c", kind))) is expected


def test_platform_subscriptions_have_no_redundant_filters() -> None:
    assert len(PLATFORM_SUBSCRIPTIONS) == len(set(PLATFORM_SUBSCRIPTIONS)) == 2 * len(UPSTREAM)


def test_subscription_filters_do_not_match_non_firmware_topics() -> None:
    others = [
        "/p/gw/properties/read",
        "/p/gw/firmware/upgrade/x",
        "/p/gw/firmware",
        "p/gw/firmware/upgrade",
    ]
    for topic in others:
        assert not matches_any(subscriptions_for_device("p", "gw"), topic)
        assert not matches_any(PLATFORM_SUBSCRIPTIONS, topic)


# --- parse errors ---

BAD_ID = "must be a non-empty id without '/', '+' or '#'"


@pytest.mark.parametrize(
    ("topic", "field", "words"),
    [
        ("p/d/firmware/upgrade", None, "'/'"),
        ("", None, "'/'"),
        ("/p/d/properties/read", None, "firmware"),
        ("/p/d/firmware/upgrad", None, "upgrad"),
        ("/p/d/firmware/upgrade/", None, "unknown"),
        ("/p/d/firmware/", None, "unknown"),
        # no kind at all: not a firmware topic's shape, so the generic message
        ("/p/d/firmware", None, "expected /{productId}/{deviceId}/firmware/..."),
        ("/p/g/child/c/firmware", None, "expected /{productId}/{deviceId}/firmware/..."),
        ("/p/d/firmware/upgrade/reply/extra", None, "unknown"),
        ("/p/d/firmware/+", None, "unknown"),
        ("/p/d/firmware/#", None, "unknown"),
        ("/firmware/upgrade", None, "expected"),
        ("/p/firmware/upgrade", None, "expected"),
        ("/p/a/d/firmware/upgrade", None, "expected"),
        ("/p/g/child/c/x/firmware/upgrade", None, "expected"),
        ("/p/g/chld/c/firmware/upgrade", None, "child"),
        ("/p/g/Child/c/firmware/upgrade", None, "child"),
        ("//d/firmware/upgrade", "productId", BAD_ID),
        ("/p//firmware/upgrade", "deviceId", BAD_ID),
        ("//g/child/c/firmware/upgrade", "productId", BAD_ID),
        ("/p//child/c/firmware/upgrade", "gatewayId", BAD_ID),
        ("/p/g/child//firmware/upgrade", "childId", BAD_ID),
        ("/+/d/firmware/upgrade", "productId", BAD_ID),
        ("/p/#/firmware/upgrade", "deviceId", BAD_ID),
        ("/p/de+v/firmware/upgrade", "deviceId", BAD_ID),
        ("/p/g+/child/c/firmware/upgrade", "gatewayId", BAD_ID),
        ("/p/+/child/c/firmware/read", "gatewayId", BAD_ID),
        ("/p/g/child/c#/firmware/pull/reply", "childId", BAD_ID),
        ("/p/g/child/+/firmware/upgrade", "childId", BAD_ID),
    ],
)
def test_parse_errors_name_topic_and_field(topic: str, field: str | None, words: str) -> None:
    with pytest.raises(TopicError) as info:
        parse_topic(topic)
    err = info.value
    assert err.topic == topic
    assert repr(topic) in str(err)
    assert err.field == field
    if field is not None:
        assert f"field {field!r}" in str(err)
        assert f"{field} {BAD_ID}" in str(err)
    assert words in str(err)


# --- construction refuses ids that would build a topic that does not parse ---


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "de+v", "d#", "/"])
@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda bad: device_topic(bad, "d", TopicKind.UPGRADE), "productId"),
        (lambda bad: device_topic("p", bad, TopicKind.UPGRADE), "deviceId"),
        (lambda bad: FirmwareTopic("p", bad, TopicKind.READ), "deviceId"),
        (lambda bad: child_topic(bad, "g", "c", TopicKind.PULL_REPLY), "productId"),
        (lambda bad: child_topic("p", bad, "c", TopicKind.PULL_REPLY), "gatewayId"),
        (lambda bad: FirmwareTopic("p", "c", TopicKind.READ, bad), "gatewayId"),
    ],
    ids=[
        "device-productId",
        "device-deviceId",
        "FirmwareTopic-deviceId",
        "child-productId",
        "child-gatewayId",
        "FirmwareTopic-gatewayId",
    ],
)
def test_construction_refuses_bad_ids(build: Any, field: str, bad: str) -> None:
    with pytest.raises(TopicError) as info:
        build(bad)
    err = info.value
    assert err.field == field
    assert f"{field} {BAD_ID}" in str(err)
    assert err.topic.startswith("/") and "/firmware/" in err.topic  # names the topic it would be


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#"])
def test_construction_refuses_bad_child_id(bad: str) -> None:
    with pytest.raises(TopicError) as info:
        child_topic("p", "g", bad, TopicKind.UPGRADE)
    assert info.value.topic == f"/p/g/child/{bad}/firmware/upgrade"
    assert BAD_ID in str(info.value)


def test_construction_names_the_child_id_like_parse_topic() -> None:
    with pytest.raises(TopicError) as built:
        child_topic("p", "g", "c+", TopicKind.UPGRADE)
    with pytest.raises(TopicError) as parsed:
        parse_topic("/p/g/child/c+/firmware/upgrade")
    assert parsed.value.field == "childId"
    assert built.value.field == parsed.value.field


def test_with_kind_of_a_valid_topic_stays_valid() -> None:
    topic = child_topic("firmware", "child", "firmware", TopicKind.UPGRADE)
    for kind in TopicKind:
        assert parse_topic(str(topic.with_kind(kind))) == topic.with_kind(kind)


def test_parse_non_string_raises_topic_error() -> None:
    with pytest.raises(TopicError) as info:
        parse_topic(None)  # type: ignore[arg-type]
    assert info.value.topic == "None"


# --- arbitrary text ---

_segment = st.sampled_from(
    [
        *("", "p", "d", "firmware", "child", "upgrade", "reply", "progress", "pull", "read"),
        *("report", "+", "#", "a+b", " ", "é", "\x00"),
    ]
)
_topicish = st.one_of(
    st.text(max_size=40),
    st.lists(_segment, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    st.lists(_segment, max_size=8).map("/".join),
)


@settings(max_examples=400, deadline=None)
@given(_topicish)
def test_parse_arbitrary_text_parses_exactly_or_raises_topic_error(text: str) -> None:
    try:
        parsed = parse_topic(text)
    except TopicError as err:
        assert err.topic == text
        return
    assert str(parsed) == text
    assert "+" not in text and "#" not in text
