"""Unit tests of the mock platform's bookkeeping (harness.platform.tasks): TaskBook and
UpgradeRecord rules, with explicit ``now`` values and no I/O."""

from __future__ import annotations

import hashlib

import pytest

from harness.platform.tasks import (
    RecordState,
    TaskBook,
    TaskMode,
    UpgradeRecord,
    UpgradeTask,
    record_id,
)

T0 = 1_700_000_000_000  # an arbitrary "now", in ms
S = RecordState


def make_task(
    book: TaskBook,
    *,
    mode: TaskMode = TaskMode.PUSH,
    firmware_id: str = "fw-1",
    timeout: int = 600,
    response_timeout: int = 30,
    name: str = "upgrade",
) -> UpgradeTask:
    return book.create_task(
        now=T0,
        name=name,
        product_id="gw-product",
        firmware_id=firmware_id,
        mode=mode,
        timeout_seconds=timeout,
        response_timeout_seconds=response_timeout,
    )


def deploy_one(
    book: TaskBook,
    task: UpgradeTask,
    device: str = "gw-1",
    *,
    version: str = "2.0.0",
    order: int = 1,
    now: int = T0,
) -> UpgradeRecord:
    (record,) = book.deploy(
        task, [(device, f"name of {device}")], version=version, version_order=order, now=now
    )
    return record


def states(record: UpgradeRecord) -> list[str]:
    return [state for state, _ in record.history]


# -- ids and deploy ------------------------------------------------------------------------


def test_record_id_is_md5_of_task_id_then_device_id() -> None:
    assert record_id("task-1", "gw-1") == hashlib.md5(b"task-1gw-1").hexdigest()
    assert record_id("task-1", "gw-1") != record_id("gw-1", "task-1")


def test_deploy_creates_one_waiting_record_per_device_with_the_task_fields() -> None:
    book = TaskBook()
    task = make_task(book, timeout=120, response_timeout=7)
    records = book.deploy(
        task,
        [("gw-1", "Gateway 1"), ("gw-2", "Gateway 2")],
        version="2.0.0",
        version_order=4,
        now=T0 + 5,
    )

    assert [r.device_id for r in records] == ["gw-1", "gw-2"]
    for record, name in zip(records, ["Gateway 1", "Gateway 2"], strict=True):
        assert record.id == hashlib.md5(f"{task.id}{record.device_id}".encode()).hexdigest()
        assert book.records[record.id] is record
        assert record.state is S.WAITING
        assert record.history == [("waiting", T0 + 5)]
        assert record.device_name == name
        assert (record.task_id, record.task_name) == (task.id, task.name)
        assert (record.product_id, record.firmware_id) == ("gw-product", "fw-1")
        assert (record.version, record.version_order) == ("2.0.0", 4)
        assert (record.timeout_seconds, record.response_timeout_seconds) == (120, 7)
        assert record.progress == 0
        assert record.create_time == T0 + 5
        assert record.upgrade_time is None and record.complete_time is None


def test_two_tasks_give_the_same_device_two_records() -> None:
    book = TaskBook()
    a, b = make_task(book, name="a"), make_task(book, name="b")
    assert a.id != b.id
    assert deploy_one(book, a).id != deploy_one(book, b).id
    assert len(book.records_of(device_id="gw-1")) == 2


@pytest.mark.parametrize("state", [S.WAITING, S.PROCESSING])
def test_redeploy_keeps_a_record_that_is_not_final(state: RecordState) -> None:
    book = TaskBook()
    task = make_task(book)
    record = deploy_one(book, task)
    if state is S.PROCESSING:
        book.sent(record, "m-1", T0 + 10)
        record.report_progress(T0 + 20, 40, complete=False, success=True, reason=None)
    history = list(record.history)

    again = deploy_one(book, task, now=T0 + 1000)

    assert again is record
    assert record.state is state
    assert record.history == history
    assert record.create_time == T0
    if state is S.PROCESSING:
        assert record.progress == 40


@pytest.mark.parametrize("final", [S.SUCCESS, S.FAILED, S.CANCELED])
def test_redeploy_starts_a_final_record_over(final: RecordState) -> None:
    book = TaskBook()
    task = make_task(book)
    record = deploy_one(book, task)
    book.sent(record, "m-1", T0 + 10)
    if final is S.SUCCESS:
        record.report_progress(T0 + 20, 100, complete=True, success=True, reason=None)
    elif final is S.FAILED:
        record.fail(T0 + 20, "boom")
    else:
        book.stop(task, T0 + 20)
    assert record.state is final

    again = deploy_one(book, task, now=T0 + 1000)

    assert again is not record
    assert again.id == record.id
    assert book.records[record.id] is again
    assert again.state is S.WAITING
    assert again.history == [("waiting", T0 + 1000)]
    assert again.progress == 0 and again.error_reason is None
    assert again.create_time == T0 + 1000
    assert task.running  # deploying (re)starts the task


# -- push ----------------------------------------------------------------------------------


def test_due_for_push_is_only_waiting_records_of_running_push_tasks() -> None:
    book = TaskBook()
    push = make_task(book, name="push")
    pull = make_task(book, mode=TaskMode.PULL, name="pull")
    stopped = make_task(book, name="stopped")
    wanted = deploy_one(book, push, "gw-1")
    already_sent = deploy_one(book, push, "gw-2")
    book.sent(already_sent, "m-2", T0 + 1)
    deploy_one(book, pull, "gw-1")
    deploy_one(book, stopped, "gw-3")
    stopped.running = False

    assert book.due_for_push() == [wanted]


def test_due_for_push_keeps_creation_order() -> None:
    book = TaskBook()
    task = make_task(book)
    devices = [f"dev-{i}" for i in range(5)]
    book.deploy(task, [(d, d) for d in devices], version="2", version_order=1, now=T0)
    assert [r.device_id for r in book.due_for_push()] == devices


def test_sent_moves_the_record_to_processing_and_remembers_the_message_id() -> None:
    book = TaskBook()
    record = deploy_one(book, make_task(book))

    book.sent(record, "m-1", T0 + 50)

    assert record.state is S.PROCESSING
    assert record.message_id == "m-1"
    assert record.upgrade_time == T0 + 50
    assert record.history == [("waiting", T0), ("processing", T0 + 50)]
    assert book.by_message_id("m-1") is record
    assert book.by_message_id("m-unknown") is None
    assert book.due_for_push() == []


def test_sending_again_forgets_the_previous_message_id() -> None:
    book = TaskBook()
    record = deploy_one(book, make_task(book))
    book.sent(record, "m-1", T0 + 10)
    book.sent(record, "m-2", T0 + 20)
    assert book.by_message_id("m-2") is record
    assert book.by_message_id("m-1") is None


def test_a_retried_record_no_longer_answers_to_its_previous_message_id() -> None:
    book = TaskBook()
    task = make_task(book)
    record = deploy_one(book, task)
    book.sent(record, "m-1", T0 + 10)
    record.reply(T0 + 20, success=False, reason="busy")
    book.restart(task, [S.FAILED], T0 + 30)
    book.sent(record, "m-2", T0 + 40)

    assert book.by_message_id("m-2") is record
    assert book.by_message_id("m-1") is None  # a stale reply to m-1 must not touch attempt 2


def test_a_redeployed_record_does_not_answer_to_the_old_message_id() -> None:
    book = TaskBook()
    task = make_task(book)
    first = deploy_one(book, task)
    book.sent(first, "m-1", T0 + 10)
    first.fail(T0 + 20, "boom")
    second = deploy_one(book, task, now=T0 + 30)

    assert book.by_message_id("m-1") is None
    book.sent(second, "m-2", T0 + 40)
    assert book.by_message_id("m-1") is None


# -- reply and progress --------------------------------------------------------------------


def processing_record(book: TaskBook | None = None, **task_kw: int) -> UpgradeRecord:
    book = book or TaskBook()
    record = deploy_one(book, make_task(book, **task_kw))
    book.sent(record, "m-1", T0 + 10)
    return record


def test_reply_success_keeps_the_record_processing_and_marks_it_heard() -> None:
    record = processing_record()
    record.reply(T0 + 20, success=True, reason=None)
    assert record.state is S.PROCESSING
    assert record.heard_time is not None
    assert record.heard_time == T0 + 20
    assert record.error_reason is None


def test_reply_failure_fails_the_record_with_the_reason() -> None:
    record = processing_record()
    record.reply(T0 + 20, success=False, reason="busy: battery low")
    assert record.state is S.FAILED
    assert record.error_reason == "busy: battery low"
    assert record.complete_time == T0 + 20
    assert states(record) == ["waiting", "processing", "failed"]


def test_reply_failure_without_a_reason_still_says_why() -> None:
    record = processing_record()
    record.reply(T0 + 20, success=False, reason=None)
    assert record.state is S.FAILED
    assert record.error_reason  # not None, not empty
    assert "refused" in record.error_reason


def test_progress_is_matched_on_device_firmware_version_and_processing() -> None:
    book = TaskBook()
    record = processing_record(book)
    assert book.processing_for("gw-1", "fw-1", "2.0.0") == [record]
    assert book.processing_for("gw-2", "fw-1", "2.0.0") == []
    assert book.processing_for("gw-1", "fw-2", "2.0.0") == []
    assert book.processing_for("gw-1", "fw-1", "2.0.1") == []
    record.fail(T0 + 20, "boom")
    assert book.processing_for("gw-1", "fw-1", "2.0.0") == []


def test_a_waiting_record_takes_no_progress() -> None:
    book = TaskBook()
    deploy_one(book, make_task(book))
    assert book.processing_for("gw-1", "fw-1", "2.0.0") == []


def test_progress_then_complete_is_success_at_100() -> None:
    record = processing_record()
    record.report_progress(T0 + 20, 50, complete=False, success=True, reason=None)
    assert (record.state, record.progress) == (S.PROCESSING, 50)
    assert record.heard_time == T0 + 20
    assert record.complete_time is None

    record.report_progress(T0 + 30, 90, complete=True, success=True, reason=None)

    assert record.state is S.SUCCESS
    assert record.progress == 100
    assert record.complete_time == T0 + 30
    assert record.error_reason is None
    assert record.history == [("waiting", T0), ("processing", T0 + 10), ("success", T0 + 30)]


def test_progress_with_success_false_fails_with_the_error_reason() -> None:
    record = processing_record()
    record.report_progress(T0 + 20, 30, complete=False, success=True, reason=None)
    record.report_progress(T0 + 30, 60, complete=True, success=False, reason="sign mismatch")
    assert record.state is S.FAILED
    assert record.error_reason == "sign mismatch"
    assert record.progress == 30  # the failing message's progress is not taken
    assert record.complete_time == T0 + 30
    assert states(record)[-1] == "failed"


def test_progress_failure_without_a_reason_gets_one() -> None:
    record = processing_record()
    record.report_progress(T0 + 20, 0, complete=False, success=False, reason=None)
    assert record.state is S.FAILED
    assert record.error_reason and "without a reason" in record.error_reason


# -- timeouts ------------------------------------------------------------------------------


def test_response_timeout_only_while_nothing_was_heard() -> None:
    record = processing_record(timeout=600, response_timeout=5)  # sent at T0 + 10
    assert record.overdue(T0 + 10 + 4_999) is None
    reason = record.overdue(T0 + 10 + 5_000)
    assert reason is not None and "no reply" in reason and "5 s" in reason


def test_a_reply_stops_the_response_timeout() -> None:
    record = processing_record(timeout=600, response_timeout=5)
    record.reply(T0 + 1_000, success=True, reason=None)
    assert record.overdue(T0 + 10 + 60_000) is None


def test_progress_without_a_reply_also_counts_as_heard() -> None:
    record = processing_record(timeout=600, response_timeout=5)
    record.report_progress(T0 + 1_000, 10, complete=False, success=True, reason=None)
    assert record.overdue(T0 + 10 + 60_000) is None


def test_overall_timeout_applies_even_after_a_reply() -> None:
    record = processing_record(timeout=60, response_timeout=5)
    record.reply(T0 + 1_000, success=True, reason=None)
    record.report_progress(T0 + 2_000, 42, complete=False, success=True, reason=None)
    assert record.overdue(T0 + 10 + 59_999) is None
    reason = record.overdue(T0 + 10 + 60_000)
    assert reason is not None
    assert "not complete" in reason and "60 s" in reason and "42%" in reason


@pytest.mark.parametrize(
    ("timeout", "response_timeout", "expected"),
    [(0, 5, "no reply"), (60, 0, "not complete"), (0, 0, None)],
)
def test_zero_disables_a_timeout(timeout: int, response_timeout: int, expected: str | None) -> None:
    record = processing_record(timeout=timeout, response_timeout=response_timeout)
    reason = record.overdue(T0 + 10 + 10**9)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


def test_a_pulled_record_has_no_response_timeout() -> None:
    book = TaskBook()
    record = deploy_one(book, make_task(book, mode=TaskMode.PULL, timeout=60, response_timeout=5))
    record.start(T0 + 10)  # handed out on a pull: no messageId to be answered
    assert record.overdue(T0 + 10 + 30_000) is None
    assert record.overdue(T0 + 10 + 60_000) is not None


@pytest.mark.parametrize("state", [S.WAITING, S.SUCCESS, S.FAILED, S.CANCELED])
def test_only_processing_records_are_overdue(state: RecordState) -> None:
    book = TaskBook()
    task = make_task(book, timeout=1, response_timeout=1)
    record = deploy_one(book, task)
    if state is not S.WAITING:
        book.sent(record, "m-1", T0 + 10)
        if state is S.SUCCESS:
            record.report_progress(T0 + 20, 100, complete=True, success=True, reason=None)
        elif state is S.FAILED:
            record.fail(T0 + 20, "boom")
        else:
            record.cancel(T0 + 20)
    assert record.overdue(T0 + 10**9) is None
    assert book.overdue(T0 + 10**9) == []


def test_book_overdue_lists_records_with_reasons() -> None:
    book = TaskBook()
    slow = processing_record(book, timeout=600, response_timeout=5)
    fast_task = make_task(book, timeout=600, response_timeout=50)
    fine = deploy_one(book, fast_task, "gw-2")
    book.sent(fine, "m-9", T0 + 10)
    found = book.overdue(T0 + 10 + 5_000)
    assert [(r, "no reply" in why) for r, why in found] == [(slow, True)]


# -- stop and restart ----------------------------------------------------------------------


def test_stop_cancels_waiting_and_processing_records_only() -> None:
    book = TaskBook()
    task = make_task(book)
    other = make_task(book, name="other")
    waiting, processing, done, failed = (deploy_one(book, task, d) for d in "abcd")
    for record, mid in ((processing, "m-b"), (done, "m-c"), (failed, "m-d")):
        book.sent(record, mid, T0 + 10)
    done.report_progress(T0 + 20, 100, complete=True, success=True, reason=None)
    failed.fail(T0 + 20, "boom")
    untouched = deploy_one(book, other, "a")

    canceled = book.stop(task, T0 + 100)

    assert {r.id for r in canceled} == {waiting.id, processing.id}
    assert waiting.state is S.CANCELED and processing.state is S.CANCELED
    assert waiting.complete_time == T0 + 100
    assert states(processing) == ["waiting", "processing", "canceled"]
    assert done.state is S.SUCCESS and failed.state is S.FAILED
    assert untouched.state is S.WAITING
    assert task.running is False and other.running is True
    assert book.due_for_push() == [untouched]


def test_restart_resets_records_in_the_given_states_to_waiting() -> None:
    book = TaskBook()
    task = make_task(book)
    failed, canceled, done = (deploy_one(book, task, d) for d in "abc")
    for record in (failed, canceled, done):
        book.sent(record, f"m-{record.device_id}", T0 + 10)
    failed.report_progress(T0 + 15, 40, complete=False, success=True, reason=None)
    failed.fail(T0 + 20, "boom")
    canceled.cancel(T0 + 20)
    done.report_progress(T0 + 20, 100, complete=True, success=True, reason=None)
    task.running = False

    again = book.restart(task, [S.FAILED], T0 + 100)

    assert again == [failed]
    assert failed.state is S.WAITING
    assert failed.error_reason is None
    assert failed.progress == 0
    assert failed.message_id is None
    assert failed.complete_time is None
    assert failed.history[-1] == ("waiting", T0 + 100)
    assert canceled.state is S.CANCELED and done.state is S.SUCCESS
    assert task.running is True
    assert book.due_for_push() == [failed]

    assert book.restart(task, [S.CANCELED, S.SUCCESS], T0 + 200) == [canceled, done]
    assert canceled.state is S.WAITING and done.state is S.WAITING


# -- pull ----------------------------------------------------------------------------------


def pull_book() -> tuple[TaskBook, dict[str, UpgradeRecord]]:
    """gw-1 has pull records for 2.0.0 (order 1), 3.0.0 (order 3) and 2.5.0 (order 2)."""
    book = TaskBook()
    records = {}
    for version, order in (("2.0.0", 1), ("3.0.0", 3), ("2.5.0", 2)):
        task = make_task(book, mode=TaskMode.PULL, firmware_id=f"fw-{version}", name=version)
        records[version] = deploy_one(book, task, version=version, order=order)
    return book, records


def test_pull_candidate_is_the_highest_version_order() -> None:
    book, records = pull_book()
    assert book.pull_candidate("gw-1", None) is records["3.0.0"]


def test_pull_candidate_filters_on_the_requested_version() -> None:
    book, records = pull_book()
    assert book.pull_candidate("gw-1", "2.5.0") is records["2.5.0"]
    assert book.pull_candidate("gw-1", "2.0.0") is records["2.0.0"]
    assert book.pull_candidate("gw-1", "9.9.9") is None


def test_pull_candidate_is_per_device() -> None:
    book, _ = pull_book()
    assert book.pull_candidate("gw-2", None) is None


def test_pull_candidate_ignores_push_tasks_and_stopped_pull_tasks() -> None:
    book = TaskBook()
    push = make_task(book, mode=TaskMode.PUSH)
    deploy_one(book, push, version="5.0.0", order=5)
    assert book.pull_candidate("gw-1", None) is None

    pull = make_task(book, mode=TaskMode.PULL)
    record = deploy_one(book, pull, version="4.0.0", order=4)
    assert book.pull_candidate("gw-1", None) is record
    pull.running = False
    assert book.pull_candidate("gw-1", None) is None


def test_pull_candidate_takes_waiting_and_processing_unless_forced() -> None:
    book, records = pull_book()
    records["3.0.0"].start(T0 + 10)  # processing: still a candidate
    assert book.pull_candidate("gw-1", None) is records["3.0.0"]

    records["3.0.0"].report_progress(T0 + 20, 100, complete=True, success=True, reason=None)
    records["2.5.0"].start(T0 + 10)
    records["2.5.0"].fail(T0 + 20, "boom")
    assert book.pull_candidate("gw-1", None) is records["2.0.0"]
    assert book.pull_candidate("gw-1", "3.0.0") is None

    assert book.pull_candidate("gw-1", None, force=True) is records["3.0.0"]
    assert book.pull_candidate("gw-1", "2.5.0", force=True) is records["2.5.0"]


# -- shapes --------------------------------------------------------------------------------


def test_record_state_final() -> None:
    assert [s.value for s in RecordState if s.final] == ["success", "failed", "canceled"]


def test_to_dict_uses_jetlinks_field_names() -> None:
    book = TaskBook()
    task = make_task(book)
    record = processing_record(book)
    data = record.to_dict()
    assert data["id"] == record.id
    assert data["state"] == "processing"
    assert data["history"] == [
        {"state": "waiting", "time": T0},
        {"state": "processing", "time": T0 + 10},
    ]
    for key in (
        "taskId",
        "taskName",
        "deviceId",
        "deviceName",
        "productId",
        "firmwareId",
        "version",
        "versionOrder",
        "timeoutSeconds",
        "progress",
        "errorReason",
        "createTime",
        "upgradeTime",
        "completeTime",
    ):
        assert key in data
    assert data["upgradeTime"] == T0 + 10

    t = task.to_dict()
    assert t["mode"] == "push" and t["state"] == "running"
    assert t["responseTimeoutSeconds"] == 30 and t["timeoutSeconds"] == 600
    task.running = False
    assert task.to_dict()["state"] == "stopped"
