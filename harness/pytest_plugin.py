"""pytest plugin (entry point ``ota_hil``): options and fixtures to run scenarios against
a live broker, platform and reference gateway.

- ``--broker`` picks the backend(s); tests that use ``broker_backend`` (directly or
  through ``ota``) run once per backend.
- ``ota`` is a running :class:`~harness.system.OtaSystem` driven from synchronous code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Coroutine, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .broker import BrokerUnavailable
from .client import PlatformClient
from .loop import LoopThread
from .platform import PlatformConfig
from .system import OtaSystem, SystemConfig
from .trace import TraceRecorder

T = TypeVar("T")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ota-hil", "ota-hil harness")
    group.addoption(
        "--broker",
        action="append",
        default=None,
        metavar="BACKEND",
        help="MQTT broker for the scenarios: embedded, mosquitto, container or mqtt://host:port; "
        "repeat or comma-separate to run every scenario on each (default: ini ota_brokers)",
    )
    group.addoption(
        "--ota-check-interval",
        type=float,
        default=None,
        help="the mock platform's push check interval in seconds for scenarios (default 0.2)",
    )
    group.addoption(
        "--ota-logs",
        default="reports/logs",
        metavar="DIR",
        help="where each test's ota-hil log goes, one file per test (default reports/logs, "
        "relative to the rootdir)",
    )
    group.addoption(
        "--ota-traces",
        default="reports/traces",
        metavar="DIR",
        help="where each test's trace goes, one JSON Lines file per test (default "
        "reports/traces, relative to the rootdir; 'none' records none)",
    )
    group.addoption(
        "--ota-seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the scenarios' random choices: fleets' radio channels and faults, "
        "firmware images (default 0); the same seed gives the same run",
    )
    group.addoption(
        "--target",
        choices=("sim", "rig", "external"),
        default="sim",
        help="what the scenarios run against: the simulated fleet (sim), a rig's nodes "
        "behind a coordinator board (rig), or an external gateway on the harness's broker "
        "(external); rig and external need --rig",
    )
    group.addoption("--rig", default=None, metavar="FILE", help="the rig file (rigs/*.yaml)")
    group.addoption(
        "--rig-lock-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for another run to release the rig (default 600)",
    )
    parser.addini(
        "ota_brokers",
        "broker backends scenarios run on when --broker is not given (space separated)",
        default="embedded",
    )


def broker_backends(config: pytest.Config) -> list[str]:
    chosen = config.getoption("--broker") or [config.getini("ota_brokers")]
    specs = [s for item in chosen for s in item.replace(",", " ").split()]
    return list(dict.fromkeys(specs)) or ["embedded"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "single_broker: run on the first --broker backend only (a long test whose broker "
        "coverage the others already give)",
    )
    config.stash[_TARGET] = _load_target(config)


_TARGET = pytest.StashKey["tuple[str, Any]"]()


def _load_target(config: pytest.Config) -> tuple[str, Any]:
    """--target and its rig, checked once: a bad rig file stops the run before any test."""
    from rigs.rigfile import RigFileError, load_rig, target_problem

    kind = config.getoption("--target")
    rig_file = config.getoption("--rig")
    try:
        rig = load_rig(rig_file) if rig_file else None
    except RigFileError as exc:
        raise pytest.UsageError(str(exc)) from None
    problem = target_problem(kind, rig)
    if problem is not None:
        raise pytest.UsageError(problem)
    return kind, rig


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The run's environment (target, brokers, seed, versions) into the Allure results."""
    config = session.config
    results = getattr(config.option, "allure_report_dir", None)
    if not results or _TARGET not in config.stash:
        return
    from .reporting import environment_properties, write_allure_environment

    kind, _ = target_and_rig(config)
    seed = config.getoption("--ota-seed")
    write_allure_environment(
        Path(results), environment_properties(kind, broker_backends(config), seed)
    )


def target_and_rig(config: pytest.Config) -> tuple[str, Any]:
    """The run's target ("sim", "rig" or "external") and its :class:`rigs.Rig` (or None)."""
    return config.stash[_TARGET]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker_backend" in metafunc.fixturenames:
        backends = broker_backends(metafunc.config)
        if metafunc.definition.get_closest_marker("single_broker"):
            backends = backends[:1]
        metafunc.parametrize(
            "broker_backend", backends, indirect=True, ids=backends, scope="session"
        )


@pytest.fixture(scope="session")
def broker_backend(request: pytest.FixtureRequest) -> str:
    """The broker spec this test runs on."""
    return getattr(request, "param", broker_backends(request.config)[0])


@pytest.fixture(scope="session")
def ota_loop() -> Iterator[LoopThread]:
    """One asyncio loop on a thread for the session's synchronous tests and steps."""
    with LoopThread() as loop:
        yield loop


@pytest.fixture
def ota_config(broker_backend: str, request: pytest.FixtureRequest) -> SystemConfig:
    """The system under test's configuration; override this fixture to change it."""
    interval = request.config.getoption("--ota-check-interval") or 0.2
    return SystemConfig(broker=broker_backend, platform=PlatformConfig(check_interval=interval))


class Ota:
    """A running system plus the loop it lives on, for synchronous callers, and the trace
    the test writes (None when traces are off)."""

    def __init__(
        self, system: OtaSystem, loop: LoopThread, trace: TraceRecorder | None = None
    ) -> None:
        self.system = system
        self.loop = loop
        self.trace = trace

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return self.loop.run(coro, timeout)

    @property
    def client(self) -> PlatformClient:
        assert self.system.client is not None
        return self.system.client


LOG_KEY = pytest.StashKey[Path]()
_CALL_OUTCOME = pytest.StashKey[str]()


def scenario_of(item: pytest.Item) -> tuple[str | None, str | None]:
    """The feature file (relative to the features folder) and the scenario name of a
    pytest-bdd test; (None, None) for any other test."""
    from pytest_bdd.scenario import scenario_wrapper_template_registry as templates

    function = getattr(item, "obj", None)
    template = templates.get(function) if function is not None else None
    if template is None:
        return None, None
    feature = getattr(template.feature, "rel_filename", None) or template.feature.name
    return str(feature), str(template.name)


def _output_path(request: pytest.FixtureRequest, option: str, suffix: str) -> Path:
    """This test's file in the folder an option names (relative to the rootdir)."""
    folder = Path(request.config.getoption(option))
    if not folder.is_absolute():
        folder = request.config.rootpath / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{file_stem(request.node.nodeid)}{suffix}"


def file_stem(nodeid: str) -> str:
    """A test's id as the stem of its log and trace files (what replay looks for)."""
    return re.sub(r"[^\w.-]+", "_", nodeid).strip("_")[:180]


@pytest.fixture
def ota_seed(request: pytest.FixtureRequest) -> int:
    """The run's seed (--ota-seed): scenarios derive every random choice from it."""
    return int(request.config.getoption("--ota-seed"))


@pytest.fixture
def ota_log(request: pytest.FixtureRequest) -> Iterator[Path]:
    """This test's log file: every ota-hil logger at INFO and above (DEBUG with -v -v)."""
    path = _output_path(request, "--ota-logs", ".log")
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logger = logging.getLogger("ota_hil")
    level = logging.DEBUG if request.config.get_verbosity() >= 2 else logging.INFO
    previous = logger.level
    logger.setLevel(min(level, logger.getEffectiveLevel()))
    logger.addHandler(handler)
    request.node.stash[LOG_KEY] = path
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report names its log file (pytest-embedded does the same)."""
    feature, _ = scenario_of(item)
    if feature is not None and ("feature", feature) not in item.user_properties:
        # In every report, so a run's summary by feature works across xdist workers.
        item.user_properties.append(("feature", feature))
    report = yield
    if report.when == "call" or (report.when == "setup" and not report.passed):
        item.stash[_CALL_OUTCOME] = report.outcome
    path = item.stash.get(LOG_KEY, None)
    if path is not None and report.failed:
        # The test's own log, then one per port (coordinator, consoles, a gateway process).
        ports = sorted(path.with_suffix("").glob("*.log"))
        lines = [f"full log of this test: {path}"]
        lines += [f"port log: {p}" for p in ports]
        report.sections.append(("ota-hil log", "\n".join(lines)))
        _attach([path])  # the port logs go in with the evidence, failed or not
    return report


def _attach(logs: list[Path]) -> None:
    """The logs into the Allure result, when Allure is recording (allure-pytest-bdd)."""
    try:
        import allure
    except ImportError:
        return
    for log in logs:
        if log.exists():
            allure.attach.file(str(log), name=log.name, attachment_type=allure.attachment_type.TEXT)


@pytest.fixture
def ota_trace(
    request: pytest.FixtureRequest, ota_config: SystemConfig, broker_backend: str, ota_seed: int
) -> Iterator[TraceRecorder | None]:
    """This test's trace (reports/traces/<test>.jsonl), or None with ``--ota-traces none``.
    Its header holds what ``ota-hil replay`` needs to run the test again."""
    if str(request.config.getoption("--ota-traces")).lower() == "none":
        yield None
        return
    kind, rig = target_and_rig(request.config)
    feature, scenario = scenario_of(request.node)
    source = {
        "kind": "pytest",
        "nodeid": request.node.nodeid,
        "feature": feature,
        "scenario": scenario,
        "rootdir": str(request.config.rootpath),
        "target": kind,
        "rig": str(rig.path) if rig is not None and getattr(rig, "path", None) else None,
        "broker": broker_backend,
        "check_interval": request.config.getoption("--ota-check-interval"),
    }
    path = _output_path(request, "--ota-traces", ".jsonl")
    with TraceRecorder(path, source=source, seed=ota_seed, config=ota_config) as trace:
        yield trace


@pytest.fixture
def ota(
    request: pytest.FixtureRequest,
    ota_loop: LoopThread,
    ota_config: SystemConfig,
    ota_log: Path,
    ota_trace: TraceRecorder | None,
) -> Iterator[Ota]:
    """Broker, mock platform and reference gateway, started for one test."""
    system = OtaSystem(ota_config, trace=ota_trace)
    try:
        ota_loop.run(system.start())
    except BrokerUnavailable as exc:
        if ota_config.broker == "embedded":
            raise
        pytest.skip(str(exc))
    try:
        yield Ota(system, ota_loop, ota_trace)
    finally:
        try:
            try:
                if ota_trace is not None:
                    status = request.node.stash.get(_CALL_OUTCOME, "passed")
                    ota_loop.run(record_outcome(ota_trace, system, status))
            finally:
                ota_loop.run(system.stop())
        finally:
            # Whatever went wrong above, a failed test keeps its evidence.
            if ota_trace is not None:
                ota_trace.close()
            attach_evidence(request.config, ota_trace and ota_trace.path, ota_log.with_suffix(""))


async def record_outcome(trace: TraceRecorder, system: OtaSystem, status: str) -> None:
    """The trace's last line: every record's end and every device's version, as the
    platform has them (what a replay compares). A coroutine: it reads the platform on
    the loop the platform runs on."""
    server = system.platform_server
    if server is None:
        return
    platform = server.platform
    records = {}
    for record in sorted(platform.upgrades.records.values(), key=lambda r: r.create_time):
        key = record.device_id
        if key in records:  # several tasks for one device: each keeps its own line
            key = f"{record.device_id}@{record.task_name}"
        records[key] = {
            "state": record.state.value,
            "reason": record.error_reason,
            "progress": record.progress,
            "version": record.version,
        }
    versions = {d.id: d.firmware_version for d in platform.registry.devices.values()}
    trace.outcome(status, records, versions)


def attach_evidence(
    config: pytest.Config, trace_path: Path | None, log_dir: Path | None = None
) -> None:
    """The trace and what it shows (MQTT transcript, frame excerpt, progress chart, block
    reception picture) and the logs of the test's ports (``log_dir``) into the test's
    Allure result, when Allure is recording."""
    if not getattr(config.option, "allure_report_dir", None):
        return
    import allure

    from .evidence import frame_excerpt, mqtt_transcript, progress_chart_svg, reception_png
    from .trace import TraceError, read_trace

    if log_dir is not None:
        _attach(sorted(log_dir.glob("*.log")))  # serial ports, an external gateway
    if trace_path is None:
        return
    try:
        events = read_trace(trace_path).all
    except TraceError as exc:
        allure.attach(
            str(exc), name="trace unreadable", attachment_type=allure.attachment_type.TEXT
        )
        return
    text = allure.attachment_type.TEXT
    allure.attach(mqtt_transcript(events), name="MQTT transcript", attachment_type=text)
    allure.attach(frame_excerpt(events), name="node frames (excerpt)", attachment_type=text)
    allure.attach(
        progress_chart_svg(events),
        name="progress per device",
        attachment_type=allure.attachment_type.SVG,
    )
    if any(e.get("ev") == "frame" and e.get("vt") is not None for e in events):
        allure.attach(
            progress_chart_svg(events, radio=True),
            name="progress per device over radio time",
            attachment_type=allure.attachment_type.SVG,
        )
    picture = reception_png(events)
    if picture is not None:
        allure.attach(
            picture, name="block reception per node", attachment_type=allure.attachment_type.PNG
        )
    allure.attach.file(
        str(trace_path), name="trace (JSON Lines)", attachment_type=text, extension="jsonl"
    )
