"""``ota-hil run``: the BDD suite, with reports under reports/."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import click
import pytest


def features_dir() -> Path:
    """features/ of the checkout this harness runs from (or of the current folder)."""
    here = Path.cwd() / "features"
    if here.is_dir():
        return here
    beside = Path(__file__).resolve().parents[2] / "features"
    if beside.is_dir():
        return beside
    raise click.ClickException(
        "no features/ folder here or beside the installed harness; run from the checkout"
    )


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.option(
    "--broker",
    "brokers",
    multiple=True,
    help="Broker backend(s): embedded, mosquitto, container or mqtt://host:port "
    "[default: embedded].",
)
@click.option(
    "--target",
    type=click.Choice(["sim", "rig", "external"]),
    default="sim",
    show_default=True,
    help="sim: simulated fleets; rig: the rig's nodes behind its coordinator board; "
    "external: a real gateway on the harness's broker (rig and external need --rig).",
)
@click.option(
    "--rig",
    "rig_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The rig file (rigs/*.yaml).",
)
@click.option(
    "--rig-lock-timeout",
    type=click.FloatRange(min=0),
    default=600.0,
    show_default=True,
    help="Seconds to wait for another run to release the rig before failing.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of fleets, faults and firmware images: the same seed gives the same run.",
)
@click.option(
    "--reports",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports"),
    show_default=True,
    help="Where allure-results/, junit.xml, logs/ and traces/ go.",
)
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def run_command(
    brokers: tuple[str, ...],
    target: str,
    rig_file: Path | None,
    rig_lock_timeout: float,
    seed: int,
    reports: Path,
    pytest_args: tuple[str, ...],
) -> None:
    """Run the Gherkin scenarios against a target and write reports.

    The same feature files run on every target; what a target cannot do (a fault a rig
    cannot inject: only "offline" through a node's power command; a pull on an external
    gateway) is skipped with the reason. A rig is locked for the whole run.
    Extra arguments go to pytest (e.g. -k "pull" or -x). Allure results go to
    REPORTS/allure-results (turn them into HTML with `ota-hil report`), JUnit XML to
    REPORTS/junit.xml, one log per scenario and per port to REPORTS/logs, one trace per
    scenario to REPORTS/traces (rerun one with `ota-hil replay`). A table of the
    scenarios by feature ends the run.
    """
    from rigs.rigfile import RigFileError, load_rig, target_problem

    try:
        rig = load_rig(rig_file) if rig_file else None
    except RigFileError as exc:
        raise click.ClickException(str(exc)) from None
    problem = target_problem(target, rig)
    if problem is not None:
        raise click.UsageError(problem)
    if target != "sim" and any(
        a == "-n" or a.startswith(("-n", "--numprocesses", "--dist")) for a in pytest_args
    ):
        raise click.UsageError(
            f"--target {target} drives one rig, one scenario at a time: run it without -n"
        )
    features = features_dir()
    reports.mkdir(parents=True, exist_ok=True)
    args = [
        str(features),
        f"--rootdir={features.parent}",
        f"--alluredir={reports / 'allure-results'}",
        f"--junitxml={reports / 'junit.xml'}",
        f"--ota-logs={reports / 'logs'}",
        f"--ota-traces={reports / 'traces'}",
        f"--ota-seed={seed}",
        f"--target={target}",
        *([f"--rig={rig_file}", f"--rig-lock-timeout={rig_lock_timeout}"] if rig_file else []),
        *(f"--broker={b}" for b in (brokers or ("embedded",))),
        *pytest_args,
    ]
    raise SystemExit(int(pytest.main(args, plugins=[FeatureSummary()])))


class FeatureSummary:
    """A table at the end of the run: each feature's scenarios passed, failed and skipped,
    and the time they took (pytest's own progress shows how far the run is)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # The feature comes with the report (the plugin adds it where the test ran: under
        # xdist that is a worker); any other test is counted under its file.
        feature = dict(report.user_properties).get("feature") or report.nodeid.split("::")[0]
        row = self.rows.setdefault(
            str(feature),
            {"passed": 0, "failed": 0, "skipped": 0, "seconds": 0.0},
        )
        row["seconds"] += report.duration
        if report.when == "call" or (report.when == "setup" and not report.passed):
            outcome = "failed" if report.failed else report.outcome
            row["passed" if outcome == "passed" else outcome] += 1
        elif report.when == "teardown" and report.failed:
            row["failed"] += 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.rows:
            return
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        table = Table(title="scenarios by feature", title_justify="left")
        for column in ("feature", "passed", "failed", "skipped", "seconds"):
            table.add_column(column, justify="left" if column == "feature" else "right")
        for feature, row in sorted(self.rows.items()):
            failed = int(row["failed"])
            table.add_row(
                escape(feature),
                str(int(row["passed"])),
                f"[red]{failed}[/]" if failed else "0",
                str(int(row["skipped"])),
                f"{row['seconds']:.1f}",
            )
        out = io.StringIO()
        Console(file=out, width=110, highlight=False, force_terminal=False).print(table)
        terminalreporter.write(out.getvalue())
