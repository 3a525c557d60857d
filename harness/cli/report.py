"""``ota-hil report``: the Allure results of ``ota-hil run`` as an HTML report."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import click

from ..reporting import (
    AllureCli,
    OutputInUse,
    clear_output,
    count_results,
    find_allure,
    missing_allure_message,
    run_bounded,
    tail,
)
from .common import say

#: Lines of the generator's output shown when it fails.
TAIL_LINES = 20


def _require_results(results: Path) -> int:
    """How many results there are; an error saying what to run when there are none."""
    if not results.is_dir():
        raise click.ClickException(
            f"no results folder {results}: run `ota-hil run` first (or pass --results)"
        )
    found = count_results(results)
    if found == 0:
        raise click.ClickException(
            f"no test results (*-result.json) in {results}: run `ota-hil run` first"
        )
    return found


def _generate(allure: AllureCli, results: Path, output: Path, timeout: float) -> None:
    """Run the generator; exit with a message (and its last lines) if it does not succeed."""
    argv = allure.generate_command(results, output)
    try:
        clear_output(output, results)
    except (OutputInUse, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    say(f"Generating with {allure.describe()}: {shlex.join(argv)}")
    try:
        finished = run_bounded(argv, timeout)
    except OSError as exc:
        raise click.ClickException(f"cannot run {allure.executable}: {exc}") from None
    last = tail(finished.output, TAIL_LINES)
    if finished.timed_out:
        _fail(f"allure generate did not finish within {timeout:g} s (--timeout); stopped it.", last)
        raise SystemExit(1)
    code = finished.returncode or 0
    if code > 0:
        _fail(f"allure generate failed with exit code {code}.", last)
        raise SystemExit(code)
    if code < 0:
        _fail(f"allure generate was killed by signal {-code}.", last)
        raise SystemExit(1)
    if not (output / "index.html").is_file():
        _fail(f"allure generate exited 0 but wrote no {output / 'index.html'}.", last)
        raise SystemExit(1)


def _fail(message: str, last_lines: str) -> None:
    click.echo(f"Error: {message}", err=True)
    if last_lines:
        click.echo(f"Its output (last {TAIL_LINES} lines):\n{last_lines}", err=True)


@click.command("report")
@click.option(
    "--results",
    type=click.Path(path_type=Path),
    default=Path("reports/allure-results"),
    show_default=True,
    help="The Allure results that `ota-hil run` wrote.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=Path("reports/allure-report"),
    show_default=True,
    help="Where the HTML report goes. A previous report there is replaced; any other "
    "non-empty folder is refused.",
)
@click.option(
    "--allure",
    "allure_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The allure executable (a path, or a name on PATH) "
    "[default: ./node_modules/.bin/allure, else allure on PATH].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds the generator may take before it is stopped.",
)
@click.option(
    "--open",
    "open_report",
    is_flag=True,
    help="Afterwards serve the report with `allure open` (until Ctrl-C).",
)
def report_command(
    results: Path, output: Path, allure_path: Path | None, timeout: float, open_report: bool
) -> None:
    """Turn the Allure results of `ota-hil run` into an HTML report.

    Needs the Allure 3 generator (npm package `allure`, Node.js 20+): `npm install -g allure`,
    or `npm install allure` in this folder (./node_modules/.bin/allure is tried before PATH).
    The Java Allure 2 works too; what `allure --version` prints decides the command line:

    \b
      Allure 3:  allure generate RESULTS --output OUTPUT
      Allure 2:  allure generate RESULTS -o OUTPUT --clean

    Prints OUTPUT/index.html and the number of results in it. Exits 1 when there is no
    generator (saying how to get it and what it would have run), no results (run
    `ota-hil run` first) or the timeout is hit; when the generator fails, with its exit
    code and its last 20 lines of output.
    """
    count = _require_results(results)
    allure = find_allure(allure_path)
    if allure is None:
        raise click.ClickException(missing_allure_message(results, output, allure_path))
    _generate(allure, results, output, timeout)
    say(f"Report: {output / 'index.html'} ({count} test result{'' if count == 1 else 's'})")
    if not open_report:
        say(f"View it with: {shlex.join(allure.open_command(output))}")
        return
    try:
        code = subprocess.call(allure.open_command(output))
    except KeyboardInterrupt:  # Ctrl-C is how the viewer is stopped
        return
    if code != 0:
        raise SystemExit(code)
