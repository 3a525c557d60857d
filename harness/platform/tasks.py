"""Upgrade tasks and their per-device records: the platform's bookkeeping, free of I/O.

Every method takes ``now`` (ms) so the rules can be tested without a clock. The
states are JetLinks' own: waiting, processing (the seed's "upgrading"), success,
failed, canceled.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RecordState(StrEnum):
    WAITING = "waiting"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in (RecordState.SUCCESS, RecordState.FAILED, RecordState.CANCELED)


class TaskMode(StrEnum):
    PUSH = "push"
    PULL = "pull"


@dataclass
class UpgradeTask:
    id: str
    name: str
    product_id: str
    firmware_id: str
    mode: TaskMode
    timeout_seconds: int
    response_timeout_seconds: int
    release_type: str  # "all" or "part"
    device_ids: list[str]
    create_time: int
    running: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "productId": self.product_id,
            "firmwareId": self.firmware_id,
            "mode": self.mode.value,
            "timeoutSeconds": self.timeout_seconds,
            "responseTimeoutSeconds": self.response_timeout_seconds,
            "releaseType": self.release_type,
            "deviceId": self.device_ids,
            "createTime": self.create_time,
            "state": "running" if self.running else "stopped",
        }


@dataclass
class UpgradeRecord:
    id: str
    task_id: str
    task_name: str
    device_id: str
    device_name: str
    product_id: str
    firmware_id: str
    version: str
    version_order: int
    timeout_seconds: int
    response_timeout_seconds: int
    create_time: int
    state: RecordState = RecordState.WAITING
    progress: int = 0
    error_reason: str | None = None
    upgrade_time: int | None = None
    complete_time: int | None = None
    #: messageId of the last upgrade message sent; its reply is matched on it.
    message_id: str | None = None
    #: When the device last said anything about this record (reply or progress).
    heard_time: int | None = None
    history: list[tuple[str, int]] = field(default_factory=list)

    def _move(self, state: RecordState, now: int) -> None:
        self.state = state
        self.history.append((state.value, now))

    def start(self, now: int, message_id: str | None = None) -> None:
        """The upgrade was sent (push) or handed out (pull): the record is processing."""
        self.message_id = message_id
        self.upgrade_time = now
        self.heard_time = None
        self.error_reason = None
        self.complete_time = None
        self.progress = 0
        self._move(RecordState.PROCESSING, now)

    def reply(self, now: int, success: bool, reason: str | None) -> None:
        self.heard_time = now
        if not success:
            self.fail(now, reason or "device refused the upgrade")

    def report_progress(
        self, now: int, progress: int, complete: bool, success: bool, reason: str | None
    ) -> None:
        self.heard_time = now
        if not success:
            self.fail(now, reason or "device reported failure without a reason")
            return
        self.progress = progress
        if complete:
            self.progress = 100
            self.complete_time = now
            self.error_reason = None
            self._move(RecordState.SUCCESS, now)

    def fail(self, now: int, reason: str) -> None:
        self.error_reason = reason
        self.complete_time = now
        self._move(RecordState.FAILED, now)

    def cancel(self, now: int) -> None:
        self.complete_time = now
        self._move(RecordState.CANCELED, now)

    def reset(self, now: int) -> None:
        """Back to waiting, for a retry or a restart of a canceled record."""
        self.error_reason = None
        self.progress = 0
        self.message_id = None
        self.complete_time = None
        self._move(RecordState.WAITING, now)

    def overdue(self, now: int) -> str | None:
        """Why this processing record has run out of time, or None."""
        if self.state is not RecordState.PROCESSING or self.upgrade_time is None:
            return None
        waited = (now - self.upgrade_time) / 1000
        if (
            self.message_id is not None
            and self.heard_time is None
            and 0 < self.response_timeout_seconds <= waited
        ):
            return (
                f"timeout: no reply to the upgrade message within "
                f"{self.response_timeout_seconds} s (device offline?)"
            )
        if 0 < self.timeout_seconds <= waited:
            return (
                f"timeout: upgrade not complete within {self.timeout_seconds} s "
                f"(last progress {self.progress}%)"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "taskId": self.task_id,
            "taskName": self.task_name,
            "deviceId": self.device_id,
            "deviceName": self.device_name,
            "productId": self.product_id,
            "firmwareId": self.firmware_id,
            "version": self.version,
            "versionOrder": self.version_order,
            "timeoutSeconds": self.timeout_seconds,
            "state": self.state.value,
            "progress": self.progress,
            "errorReason": self.error_reason,
            "createTime": self.create_time,
            "upgradeTime": self.upgrade_time,
            "completeTime": self.complete_time,
            "history": [{"state": s, "time": t} for s, t in self.history],
        }


def record_id(task_id: str, device_id: str) -> str:
    """JetLinks' record id: md5(taskId + deviceId)."""
    return hashlib.md5(f"{task_id}{device_id}".encode()).hexdigest()


class TaskBook:
    """Tasks and records, and the rules for moving records between states."""

    def __init__(self) -> None:
        self.tasks: dict[str, UpgradeTask] = {}
        self.records: dict[str, UpgradeRecord] = {}
        self._by_message: dict[str, str] = {}
        #: Records by device: a fleet's progress messages must not scan every record.
        self._by_device: dict[str, dict[str, UpgradeRecord]] = {}

    def create_task(
        self,
        *,
        now: int,
        name: str,
        product_id: str,
        firmware_id: str,
        mode: TaskMode = TaskMode.PUSH,
        timeout_seconds: int = 600,
        response_timeout_seconds: int = 30,
        release_type: str = "all",
        device_ids: list[str] | None = None,
    ) -> UpgradeTask:
        task = UpgradeTask(
            id=secrets.token_hex(8),
            name=name,
            product_id=product_id,
            firmware_id=firmware_id,
            mode=TaskMode(mode),
            timeout_seconds=timeout_seconds,
            response_timeout_seconds=response_timeout_seconds,
            release_type=release_type,
            device_ids=list(device_ids or []),
            create_time=now,
        )
        self.tasks[task.id] = task
        return task

    def deploy(
        self,
        task: UpgradeTask,
        devices: list[tuple[str, str]],
        *,
        version: str,
        version_order: int,
        now: int,
    ) -> list[UpgradeRecord]:
        """One waiting record per (device id, device name); a device already deployed keeps its
        record unless that record is final, in which case it starts over."""
        out = []
        for device_id, device_name in devices:
            rid = record_id(task.id, device_id)
            existing = self.records.get(rid)
            if existing is not None and not existing.state.final:
                out.append(existing)
                continue
            record = UpgradeRecord(
                id=rid,
                task_id=task.id,
                task_name=task.name,
                device_id=device_id,
                device_name=device_name,
                product_id=task.product_id,
                firmware_id=task.firmware_id,
                version=version,
                version_order=version_order,
                timeout_seconds=task.timeout_seconds,
                response_timeout_seconds=task.response_timeout_seconds,
                create_time=now,
            )
            record.history.append((RecordState.WAITING.value, now))
            self.records[rid] = record
            self._by_device.setdefault(device_id, {})[rid] = record
            out.append(record)
        task.running = True
        return out

    def records_of(
        self,
        task_id: str | None = None,
        device_id: str | None = None,
        state: RecordState | None = None,
    ) -> list[UpgradeRecord]:
        pool = self.records if device_id is None else self._by_device.get(device_id, {})
        return [
            r
            for r in pool.values()
            if (task_id is None or r.task_id == task_id)
            and (device_id is None or r.device_id == device_id)
            and (state is None or r.state is state)
        ]

    def due_for_push(self) -> list[UpgradeRecord]:
        """Waiting records of running push tasks, in creation order."""
        return [
            r
            for r in self.records.values()
            if r.state is RecordState.WAITING
            and (task := self.tasks.get(r.task_id)) is not None
            and task.running
            and task.mode is TaskMode.PUSH
        ]

    def sent(self, record: UpgradeRecord, message_id: str, now: int) -> None:
        if record.message_id is not None:
            self._by_message.pop(record.message_id, None)
        record.start(now, message_id)
        self._by_message[message_id] = record.id

    def by_message_id(self, message_id: str) -> UpgradeRecord | None:
        """The record whose current attempt was sent as ``message_id`` (an earlier attempt's
        id, or one from before a re-deploy, answers nothing)."""
        record = self.records.get(self._by_message.get(message_id, ""))
        return record if record is not None and record.message_id == message_id else None

    def processing_for(self, device_id: str, firmware_id: str, version: str) -> list[UpgradeRecord]:
        """The records a progress message belongs to (JetLinks matches all three, processing):
        two tasks of one firmware for one device follow the same upgrade."""
        return [
            record
            for record in self._by_device.get(device_id, {}).values()
            if record.state is RecordState.PROCESSING
            and record.firmware_id == firmware_id
            and record.version == version
        ]

    def pull_candidate(
        self, device_id: str, request_version: str | None, *, force: bool = False
    ) -> UpgradeRecord | None:
        """The pull-task record to hand a device that asks: newest versionOrder first."""
        candidates = [
            r
            for r in self.records.values()
            if r.device_id == device_id
            and (task := self.tasks.get(r.task_id)) is not None
            and task.mode is TaskMode.PULL
            and task.running
            and (force or r.state in (RecordState.WAITING, RecordState.PROCESSING))
            and (request_version is None or r.version == request_version)
        ]
        return max(candidates, key=lambda r: (r.version_order, r.create_time), default=None)

    def overdue(self, now: int) -> list[tuple[UpgradeRecord, str]]:
        return [(r, why) for r in self.records.values() if (why := r.overdue(now)) is not None]

    def stop(self, task: UpgradeTask, now: int) -> list[UpgradeRecord]:
        """Stop a task: its waiting and processing records are canceled."""
        task.running = False
        canceled = []
        for record in self.records_of(task.id):
            if record.state in (RecordState.WAITING, RecordState.PROCESSING):
                record.cancel(now)
                canceled.append(record)
        return canceled

    def restart(
        self, task: UpgradeTask, states: list[RecordState], now: int
    ) -> list[UpgradeRecord]:
        """Put the task's records in ``states`` back to waiting (retry failed, start canceled)."""
        task.running = True
        again = [r for r in self.records_of(task.id) if r.state in states]
        for record in again:
            record.reset(now)
        return again
