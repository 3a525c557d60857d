"""Unit tests of the gateway's pure parts: progress reporting, persisted state, the
gateway-image upgrader and the upgrader registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.gateway import (
    GatewayImageUpgrader,
    GatewayState,
    Job,
    ProgressReporter,
    UpgradeFailed,
    UpgraderRegistry,
    write_atomic,
)
from harness.protocol import (
    FirmwareFields,
    TopicKind,
    UpgradeProgress,
    decode,
    device_topic,
)

FIRMWARE = FirmwareFields(
    url="http://127.0.0.1:8844/file/97b8f5ae7311a275c27e734b633635d0?accessKey=k",
    version="1.1.0",
    sign="b292b8415378b8660705f1e9a312cb0b",
    signMethod="MD5",
    firmwareId="1551519269396340736",
    size=570,
)


def make_job(firmware: FirmwareFields = FIRMWARE, image: Path | None = None) -> Job:
    return Job(
        device_id="gw-1",
        target="gateway",
        firmware=firmware,
        topic=device_topic("gw-product", "gw-1", TopicKind.UPGRADE),
        image=image,
    )


class Sent(list[UpgradeProgress]):
    @property
    def values(self) -> list[int]:
        return [m.progress for m in self]


def reporter(step: int = 5) -> tuple[ProgressReporter, Sent]:
    sent = Sent()
    return ProgressReporter(make_job(), sent.append, step=step), sent


# -- ProgressReporter ----------------------------------------------------------------------


def test_progress_never_goes_down_and_ignores_small_steps() -> None:
    rep, sent = reporter(step=5)
    for value in [0, 3, 5, 4, 9, 12, 12, 11.9, 50, 49, 47.5, 54.9, 55]:
        rep.update(value)
    assert sent.values == [0, 5, 12, 50, 55]
    assert all(not m.complete and m.success and m.errorReason is None for m in sent)


def test_progress_step_is_configurable() -> None:
    rep, sent = reporter(step=10)
    for value in range(0, 40):
        rep.update(value)
    assert sent.values == [0, 10, 20, 30]


def test_progress_is_clamped_to_0_and_capped_at_99_until_success() -> None:
    rep, sent = reporter(step=1)
    rep.update(-20)
    rep.update(99.99)
    rep.update(100)
    rep.update(1000)
    assert sent.values == [0, 99]
    assert not any(m.complete for m in sent)
    rep.succeed()
    assert sent.values == [0, 99, 100]


def test_first_update_is_sent_whatever_the_step() -> None:
    rep, sent = reporter(step=50)
    rep.update(3)
    assert sent.values == [3]


def test_succeed_sends_100_complete_success_and_then_nothing() -> None:
    rep, sent = reporter()
    rep.update(0)
    rep.update(40)
    rep.succeed()
    final = sent[-1]
    assert (final.progress, final.complete, final.success, final.errorReason) == (
        100,
        True,
        True,
        None,
    )
    count = len(sent)
    rep.update(99)
    rep.succeed()
    rep.fail("too late")
    assert len(sent) == count
    assert rep.done


def test_fail_keeps_the_last_progress_and_ends_once() -> None:
    rep, sent = reporter()
    rep.update(0)
    rep.update(37.8)
    rep.fail("sign mismatch: md5 of the image is 00, expected 11")
    final = sent[-1]
    assert final.complete is True
    assert final.success is False
    assert final.progress == 37
    assert final.errorReason == "sign mismatch: md5 of the image is 00, expected 11"
    count = len(sent)
    rep.update(90)
    rep.fail("again")
    rep.succeed()
    assert len(sent) == count


def test_fail_before_any_progress_reports_0() -> None:
    rep, sent = reporter()
    rep.fail("no network")
    assert [(m.progress, m.complete, m.success) for m in sent] == [(0, True, False)]


def test_every_message_echoes_firmware_id_and_version_on_the_wire() -> None:
    rep, sent = reporter(step=1)
    for value in range(0, 100, 7):
        rep.update(value)
    rep.fail("boom")
    assert len(sent) > 10
    for message in sent:
        wire = json.loads(message.to_json())
        assert wire["firmwareId"] == FIRMWARE.firmwareId
        assert wire["version"] == FIRMWARE.version
        assert 0 <= wire["progress"] <= 100
        # What goes out decodes as a valid progress message.
        assert decode(TopicKind.UPGRADE_PROGRESS, message.to_json()) == message
    assert json.loads(sent[-1].to_json())["errorReason"] == "boom"


def test_span_maps_a_phase_onto_part_of_the_job() -> None:
    rep, sent = reporter(step=1)
    download = rep.span(0, 60)
    install = rep.span(60, 99)
    download(0)
    download(50)
    download(100)
    download(250)  # beyond the phase: capped at its end
    install(-10)  # below the phase: its start, already sent
    install(50)
    install(100)
    assert sent.values == [0, 30, 60, 79, 99]
    rep.succeed()
    assert sent.values[-1] == 100


def test_span_of_an_earlier_phase_cannot_move_progress_back() -> None:
    rep, sent = reporter(step=1)
    rep.span(60, 99)(50)
    rep.span(0, 60)(90)
    assert sent.values == [79]


# -- GatewayState --------------------------------------------------------------------------


def test_state_persists_versions_across_instances(tmp_path: Path) -> None:
    first = GatewayState(tmp_path / "gw")
    assert first.version("gw-1") is None
    first.set_version("gw-1", "1.0.0")
    first.set_version("node-7", "3.2")
    first.set_version("gw-1", "1.1.0")
    second = GatewayState(tmp_path / "gw")
    assert second.version("gw-1") == "1.1.0"
    assert second.version("node-7") == "3.2"
    assert second.version("nobody") is None
    on_disk = json.loads((tmp_path / "gw" / "state.json").read_text())
    assert on_disk == {"versions": {"gw-1": "1.1.0", "node-7": "3.2"}, "counter": 0}


def test_state_write_replaces_the_file_and_leaves_no_temporaries(tmp_path: Path) -> None:
    state = GatewayState(tmp_path)
    state.set_version("gw-1", "1.0.0")
    path = tmp_path / "state.json"
    inode = path.stat().st_ino
    state.set_version("gw-1", "1.1.0")
    assert path.stat().st_ino != inode, "the file was rewritten in place, not replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_write_atomic_keeps_the_old_content_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, b"new content")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_state_failed_write_does_not_change_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = GatewayState(tmp_path)
    state.set_version("gw-1", "1.0.0")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        state.set_version("gw-1", "2.0.0")
    assert GatewayState(tmp_path).version("gw-1") == "1.0.0"
    assert state.version("gw-1") == "1.0.0"


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b"null", b'{"versions": []}', b'{"versions": "1.0"}', b"\xff\xfe\x00"],
)
def test_corrupt_state_file_is_a_value_error_naming_the_file(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a gateway state file") as caught:
        GatewayState(tmp_path)
    assert str(path) in str(caught.value)


def test_state_creates_its_folder_and_a_downloads_folder(tmp_path: Path) -> None:
    state = GatewayState(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    downloads = state.downloads()
    assert downloads == tmp_path / "a" / "b" / "downloads"
    assert downloads.is_dir()
    assert state.downloads() == downloads  # a second call is fine


# -- GatewayImageUpgrader ------------------------------------------------------------------


async def test_gateway_image_upgrader_stores_the_image_and_bumps_the_version(
    tmp_path: Path,
) -> None:
    state = GatewayState(tmp_path / "gw")
    state.set_version("gw-1", "1.0.0")
    image = tmp_path / "download.bin"
    image.write_bytes(b"\x7fELF new gateway image")
    upgrader = GatewayImageUpgrader(state)
    assert upgrader.kind == "gateway"
    assert upgrader.current_version("gw-1") == "1.0.0"
    progress: list[float] = []
    version = await upgrader.apply(make_job(image=image), progress.append)
    assert version == "1.1.0"
    assert upgrader.current_version("gw-1") == "1.1.0"
    assert GatewayState(tmp_path / "gw").version("gw-1") == "1.1.0"
    slot = tmp_path / "gw" / "firmware"
    assert (slot / "1.1.0.bin").read_bytes() == b"\x7fELF new gateway image"
    assert sorted(p.name for p in slot.iterdir()) == ["1.1.0.bin"]
    assert progress == sorted(progress)
    assert progress[-1] == 100
    assert all(0 <= p <= 100 for p in progress)


async def test_gateway_image_upgrader_without_an_image_fails(tmp_path: Path) -> None:
    state = GatewayState(tmp_path)
    state.set_version("gw-1", "1.0.0")
    with pytest.raises(UpgradeFailed, match="no image"):
        await GatewayImageUpgrader(state).apply(make_job(image=None), lambda _: None)
    assert state.version("gw-1") == "1.0.0"


async def test_gateway_image_upgrader_with_a_missing_image_fails_and_keeps_the_version(
    tmp_path: Path,
) -> None:
    state = GatewayState(tmp_path)
    state.set_version("gw-1", "1.0.0")
    job = make_job(image=tmp_path / "vanished.bin")
    with pytest.raises(UpgradeFailed, match="cannot store the image"):
        await GatewayImageUpgrader(state).apply(job, lambda _: None)
    assert GatewayState(tmp_path).version("gw-1") == "1.0.0"


# -- UpgraderRegistry ----------------------------------------------------------------------


class NodeUpgrader:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def current_version(self, device_id: str) -> str | None:
        return None

    async def apply(self, job: Job, progress) -> str:
        return job.firmware.version


def test_registry_finds_upgraders_by_kind_and_lists_them_sorted() -> None:
    registry = UpgraderRegistry()
    ble, radio = NodeUpgrader("ble"), NodeUpgrader("324")
    registry.register(ble)
    registry.register(radio)
    assert registry.get("ble") is ble
    assert registry.get("324") is radio
    assert registry.get("wifi") is None
    assert registry.kinds() == ["324", "ble"]


def test_registry_refuses_a_second_upgrader_for_a_kind(tmp_path: Path) -> None:
    registry = UpgraderRegistry()
    first = GatewayImageUpgrader(GatewayState(tmp_path))
    registry.register(first)
    with pytest.raises(ValueError, match="'gateway' is already registered"):
        registry.register(NodeUpgrader("gateway"))
    assert registry.get("gateway") is first
    assert registry.kinds() == ["gateway"]


def test_the_start_counter_grows_across_instances(tmp_path: Path) -> None:
    first = GatewayState(tmp_path)
    assert [first.next_counter(), first.next_counter()] == [1, 2]
    again = GatewayState(tmp_path)
    assert again.next_counter() == 3  # never reused after a restart: nodes refuse replays
