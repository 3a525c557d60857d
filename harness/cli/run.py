"""``ota-hil run``: the BDD suite, with reports under reports/."""

from __future__ import annotations

from pathlib import Path

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
    "--reports",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports"),
    show_default=True,
    help="Where allure-results/ and junit.xml go.",
)
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def run_command(
    brokers: tuple[str, ...],
    target: str,
    rig_file: Path | None,
    reports: Path,
    pytest_args: tuple[str, ...],
) -> None:
    """Run the Gherkin scenarios against a target and write reports.

    The same feature files run on every target; what a target cannot do (fault injection
    without power control, a pull on an external gateway) is skipped with the reason.
    Extra arguments go to pytest (e.g. -k "pull" or -x). Allure results go to
    REPORTS/allure-results (view them with `allure` if installed), JUnit XML to
    REPORTS/junit.xml, one log per scenario and per port to REPORTS/logs.
    """
    if target != "sim" and rig_file is None:
        raise click.UsageError(f"--target {target} needs --rig FILE")
    features = features_dir()
    reports.mkdir(parents=True, exist_ok=True)
    args = [
        str(features),
        f"--rootdir={features.parent}",
        f"--alluredir={reports / 'allure-results'}",
        f"--junitxml={reports / 'junit.xml'}",
        f"--ota-logs={reports / 'logs'}",
        f"--target={target}",
        *([f"--rig={rig_file}"] if rig_file else []),
        *(f"--broker={b}" for b in (brokers or ("embedded",))),
        *pytest_args,
    ]
    raise SystemExit(int(pytest.main(args)))
