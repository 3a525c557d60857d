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
    "--reports",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports"),
    show_default=True,
    help="Where allure-results/ and junit.xml go.",
)
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def run_command(brokers: tuple[str, ...], reports: Path, pytest_args: tuple[str, ...]) -> None:
    """Run the Gherkin scenarios (broker, mock platform, reference gateway) and write reports.

    Extra arguments go to pytest (e.g. -k "pull" or -x). Allure results go to
    REPORTS/allure-results (view them with `allure` if installed), JUnit XML to
    REPORTS/junit.xml.
    """
    features = features_dir()
    reports.mkdir(parents=True, exist_ok=True)
    args = [
        str(features),
        f"--rootdir={features.parent}",
        f"--alluredir={reports / 'allure-results'}",
        f"--junitxml={reports / 'junit.xml'}",
        *(f"--broker={b}" for b in (brokers or ("embedded",))),
        *pytest_args,
    ]
    raise SystemExit(int(pytest.main(args)))
