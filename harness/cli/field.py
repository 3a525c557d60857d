"""``ota-hil reproduce``, ``replay`` and ``import``: from a field incident (or a recorded
run) to a run that ends the same way, and from there to a scenario."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .common import LOG_LEVELS, PhaseBars, setup_logging

if TYPE_CHECKING:
    from rich.console import Console

    from sims.fieldfile import FieldSpec
    from sims.reproduce import Reproduction


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def writable(path: Path, what: str) -> None:
    """Fail now, with the option's name, if ``path`` cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise click.ClickException(f"{what} {path}: cannot write there: {exc}") from None


def write(path: Path, text: str, what: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"{what} {path}: cannot write there: {exc}") from None


def escape(text: str) -> str:
    """Text from a field file or a run, shown as it is (``[errno 5]`` is no markup)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", text).strip("-")[:80] or "field"


# -- reproduce -------------------------------------------------------------------------------


@click.command("reproduce")
@click.argument("field_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--broker",
    default="embedded",
    show_default=True,
    help="Broker backend: embedded, mosquitto or mqtt://host:port.",
)
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the run's trace goes [default: reports/traces/reproduce-<name>.jsonl].",
)
@click.option(
    "--emit-feature",
    "feature_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a Gherkin scenario of this run, stating each node's end as observed.",
)
@click.option("--all", "show_all", is_flag=True, help="List every node, not only those failed.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON, no progress.")
@click.option("--no-progress", is_flag=True, help="No progress bars (none without a terminal).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds to wait for every node's record to end.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="warning",
    show_default=True,
)
def reproduce_command(
    field_file: Path,
    broker: str,
    trace_path: Path | None,
    feature_path: Path | None,
    show_all: bool,
    as_json: bool,
    no_progress: bool,
    timeout: float,
    log_level: str,
) -> None:
    """Run a field description (sims/fields/*.yaml) and summarise each node's end.

    On a terminal a progress bar per phase (download, first broadcast, records ended)
    shows how far it is; a table of the nodes that did not succeed ends it.

    The harness's broker, platform and reference gateway run with the field's fleet
    behind it; its faults happen on their schedule (times are seconds of radio time since
    the broadcast session began); one push; every record is awaited. The same file gives
    the same run. When the file has `observed` outcomes, the exit code says whether the run
    reproduced them (0) or not (1); a record that has not ended within --timeout is a 1
    too. See docs/reproduction.md.
    """
    from sims.fieldfile import FieldFileError, load_field

    setup_logging(log_level)
    try:
        spec = load_field(field_file)
    except FieldFileError as exc:
        raise click.ClickException(str(exc)) from None
    trace_path = trace_path or Path("reports/traces") / f"reproduce-{_slug(spec.name)}.jsonl"
    for path, what in ((trace_path, "--trace"), (feature_path, "--emit-feature")):
        if path is not None:
            writable(path, what)  # before the run, not after it
    source = {"kind": "field", "path": str(field_file), "broker": broker}
    progress = not (as_json or no_progress) and _console().is_terminal
    result = _reproduce(spec, broker, trace_path, source, timeout, progress)
    differences = result.differences()
    if feature_path is not None:
        from sims.feature_writer import feature_for

        write(feature_path, feature_for(spec, result, str(field_file)), "--emit-feature")
    if as_json:
        click.echo(json.dumps(_result_json(result, trace_path, differences), indent=2))
    else:
        console = _console()
        _summary(console, result, show_all)
        console.print(f"trace: {escape(str(trace_path))}")
        if feature_path is not None:
            console.print(f"scenario: {escape(str(feature_path))}")
        if result.timed_out:
            console.print(
                f"[bold red]not every record ended within --timeout {timeout:g} s[/]: "
                "the table shows them as they were"
            )
        if spec.observed:
            if differences:
                console.print("[bold red]does not reproduce what the field observed:[/]")
                for line in differences:
                    console.print(f"  {escape(line)}")
            else:
                console.print("[bold green]reproduces what the field observed[/]")
    if differences or result.timed_out:
        raise SystemExit(1)


def _reproduce(
    spec: FieldSpec,
    broker: str,
    trace_path: Path,
    source: dict[str, Any],
    timeout: float,
    progress: bool,
) -> Reproduction:
    from harness.broker import BrokerUnavailable
    from harness.trace import TraceRecorder
    from sims.reproduce import reproduce

    with TraceRecorder(trace_path, source=source, seed=spec.seed, config=spec.to_dict()) as trace:
        try:
            if not progress:
                return asyncio.run(reproduce(spec, broker=broker, trace=trace, timeout=timeout))
            with PushBars(_console()) as bars:
                return asyncio.run(
                    reproduce(
                        spec, broker=broker, trace=trace, on_progress=bars.update, timeout=timeout
                    )
                )
        except (BrokerUnavailable, ConnectionError) as exc:
            raise click.ClickException(str(exc)) from None


class PushBars(PhaseBars):
    """A bar per phase of a push: the download, the first broadcast of every block, the
    nodes whose records ended."""

    def __init__(self, console: Console) -> None:
        super().__init__(console, width=22)
        self.download = self.phase("download", unit="bytes")
        self.broadcast = self.phase("broadcast (1st pass)", unit="blocks")
        self.finished = self.phase("records ended", unit="nodes")

    def update(self, snapshot: Any) -> None:
        self.progress.update(self.download, completed=snapshot.downloaded, total=snapshot.size)
        self.progress.update(
            self.broadcast, completed=snapshot.blocks_sent, total=snapshot.blocks or None
        )
        self.progress.update(self.finished, completed=snapshot.finished, total=snapshot.nodes)


def _summary(console: Console, result: Reproduction, show_all: bool) -> None:
    from rich.table import Table

    outcomes = result.outcomes
    shown = outcomes.values() if show_all else result.failed.values()
    table = Table(title=f"{escape(result.field.name)}: {len(outcomes)} nodes", title_justify="left")
    for column in ("node", "end", "reason", "version", "blocks stored", "power cuts"):
        table.add_column(column, overflow="fold")
    for o in shown:
        style = "green" if o.state == "success" else "red"
        table.add_row(
            escape(o.node),
            f"[{style}]{escape(o.state)}[/]",
            escape(o.reason or ""),
            f"{o.version_before} -> {o.version_after}",
            str(o.blocks),
            str(o.power_cuts),
        )
    ok = len(outcomes) - len(result.failed)
    table.caption = (
        f"{ok} succeeded, {len(result.failed)} did not"
        + ("" if show_all or not ok else " (--all lists every node)")
        + f"; {result.radio_seconds:.1f} s of radio time in {result.seconds:.1f} s"
    )
    console.print(table)
    if result.schedule:
        schedule = Table(title="schedule", title_justify="left")
        schedule.add_column("fault")
        schedule.add_column("ran at (radio time)")
        for what, at in result.schedule:
            schedule.add_row(escape(what), "never" if at is None else f"{at:.1f} s")
        console.print(schedule)


def _result_json(result: Reproduction, trace: Path, differences: list[str]) -> dict[str, Any]:
    return {
        "field": result.field.name,
        "trace": str(trace),
        "seconds": round(result.seconds, 3),
        "radio_seconds": round(result.radio_seconds, 3),
        "nodes": {
            n: {
                "state": o.state,
                "reason": o.reason,
                "version_before": o.version_before,
                "version_after": o.version_after,
                "blocks": o.blocks,
                "power_cuts": o.power_cuts,
            }
            for n, o in result.outcomes.items()
        },
        "schedule": [{"fault": w, "at": at} for w, at in result.schedule],
        "observed_differences": differences,
        "timed_out": result.timed_out,
    }


# -- replay ----------------------------------------------------------------------------------


@click.command("replay")
@click.argument("trace_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/replays"),
    show_default=True,
    help="Where the replay's own trace (and logs) go.",
)
def replay_command(trace_file: Path, output: Path) -> None:
    """Run a recorded scenario or reproduction again from its trace's configuration and
    seed, and say whether it ends the same way.

    A scenario's trace (reports/traces/*.jsonl) is rerun with pytest with the same target,
    broker and seed; a reproduction's trace is rerun from the field description it holds.
    Compared: every record's end and reason, every device's version; the exit code is 0
    when they match, 1 when they differ. Whether the whole normalised trace matched is
    said too.
    """
    from harness.trace import TraceError, outcome_differences, read_trace

    try:
        recorded = read_trace(trace_file)
    except TraceError as exc:
        raise click.ClickException(str(exc)) from None
    source = recorded.header.get("source")
    kind = source.get("kind") if isinstance(source, dict) else None
    needs = {"pytest": ("nodeid", "rootdir"), "field": ()}
    if kind not in needs:
        raise click.ClickException(
            f"{trace_file}: the trace does not say how it was made (source kind {kind!r}); "
            "replay knows 'pytest' and 'field'"
        )
    assert isinstance(source, dict)
    missing = [k for k in needs[kind] if not isinstance(source.get(k), str)]
    if missing:
        raise click.ClickException(
            f"{trace_file}, line 1: the header's source has no {', '.join(missing)}"
        )
    if recorded.outcome is None:
        click.echo(
            f"{trace_file}: the recorded run was cut short (no outcome line); "
            "replaying it all the same, but there is nothing to compare the end with"
        )
    writable(output / ".replay", "--output")
    if kind == "pytest":
        replayed_path = _replay_pytest(recorded.header, output)
    else:
        replayed_path = _replay_field(recorded.header, output)
    try:
        replayed = read_trace(replayed_path)
    except TraceError as exc:
        raise click.ClickException(f"the replay left no usable trace: {exc}") from None
    if kind == "pytest":
        was, now = (
            (t.header["source"].get("feature"), t.header["source"].get("scenario"))
            for t in (recorded, replayed)
        )
        if was != now:
            raise click.ClickException(
                f"the test id {source['nodeid']} now runs another scenario: recorded "
                f"{was[1]!r} of {was[0]}, replayed {now[1]!r} of {now[0]}"
            )
    _report_replay(trace_file, recorded, replayed)
    if outcome_differences(recorded.outcome, replayed.outcome):
        raise SystemExit(1)


#: A replayed scenario gets this long before it is stopped.
REPLAY_TIMEOUT = 3600.0


def _replay_pytest(header: dict[str, Any], output: Path) -> Path:
    from harness.pytest_plugin import file_stem

    source = header["source"]
    rootdir = Path(source["rootdir"])
    if not rootdir.is_dir():
        raise click.ClickException(f"the scenario's folder {rootdir} is not here")
    traces = output / "traces"
    path = traces / f"{file_stem(source['nodeid'])}.jsonl"
    path.unlink(missing_ok=True)
    args = [
        sys.executable,
        "-m",
        "pytest",
        source["nodeid"],
        f"--rootdir={rootdir}",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rs",
        f"--target={source.get('target', 'sim')}",
        f"--broker={source.get('broker', 'embedded')}",
        f"--ota-seed={header.get('seed') or 0}",
        f"--ota-traces={traces.resolve()}",
        f"--ota-logs={(output / 'logs').resolve()}",
    ]
    if source.get("rig"):
        args.append(f"--rig={source['rig']}")
    if source.get("check_interval"):
        args.append(f"--ota-check-interval={source['check_interval']}")
    click.echo(f"replaying {source['nodeid']} (seed {header.get('seed')})")
    try:
        run = subprocess.run(
            args, cwd=rootdir, check=False, capture_output=True, text=True, timeout=REPLAY_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise click.ClickException(
            f"the replay did not end within {REPLAY_TIMEOUT:g} s; see {output / 'logs'}"
        ) from None
    summary = run.stdout.strip().splitlines()[-1:] or ["(no output)"]
    click.echo(f"pytest: {summary[0]}")
    if not path.exists():
        why = "skipped" if "skipped" in run.stdout else "renamed or removed, or not collected"
        raise click.ClickException(
            f"the replay wrote no trace at {path}: the scenario was {why}\n{run.stdout[-1500:]}"
        )
    return path


def _replay_field(header: dict[str, Any], output: Path) -> Path:
    from sims.fieldfile import FieldFileError, field_from_dict

    try:
        spec = field_from_dict(header.get("config"), "the trace's field description")
    except FieldFileError as exc:
        raise click.ClickException(str(exc)) from None
    source = header["source"]
    path = output / f"reproduce-{_slug(spec.name)}.jsonl"
    click.echo(f"replaying the field description {spec.name!r} (seed {spec.seed})")
    _reproduce(spec, source.get("broker", "embedded"), path, source, 300.0, progress=False)
    return path


def _report_replay(trace_file: Path, recorded: Any, replayed: Any) -> None:
    from rich.table import Table

    from harness.trace import first_difference, normalise, outcome_differences

    console = _console()
    differences = outcome_differences(recorded.outcome, replayed.outcome)
    records = (recorded.outcome or {}).get("records", {})
    table = Table(title=f"replay of {escape(trace_file.name)}", title_justify="left")
    table.add_column("records")
    table.add_column("recorded")
    table.add_column("replayed")
    states = [r.get("state") for r in records.values()]
    again = [r.get("state") for r in (replayed.outcome or {}).get("records", {}).values()]
    for state in sorted(set(states) | set(again), key=str):
        table.add_row(escape(str(state)), str(states.count(state)), str(again.count(state)))
    console.print(table)
    console.print(f"replay trace: {escape(str(replayed.path))}")
    part = first_difference(normalise(recorded.all), normalise(replayed.all))
    console.print(
        "normalised traces: identical"
        if part is None
        else f"normalised traces part: {escape(part)}"
    )
    if differences:
        console.print("[bold red]the outcome differs:[/]")
        for line in differences[:50]:
            console.print(f"  {escape(line)}")
        if len(differences) > 50:
            console.print(f"  ... and {len(differences) - 50} more")
    else:
        console.print("[bold green]the outcome matches[/]")


# -- import ----------------------------------------------------------------------------------


@click.command("import")
@click.argument("transcript", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The field file to write [default: print it].",
)
@click.option("--name", default=None, help="The incident's name in the field file.")
def import_command(transcript: Path, output: Path | None, name: str | None) -> None:
    """Turn a platform-side MQTT transcript into a field description.

    TRANSCRIPT is an ota-hil trace or `mosquitto_sub -v` output (one `topic payload`
    line per message; subscribe to '/+/+/child/+/firmware/#'). The field file gets the
    nodes, the firmware, each node's version before, its end and its timeline; what a
    transcript cannot tell (the radio, loss, node faults, outages) is said in its notes,
    to be completed by hand before `ota-hil reproduce`.
    """
    from sims.transcript import TranscriptError, field_from_transcript, read_transcript

    try:
        spec = field_from_transcript(read_transcript(transcript), name)
    except TranscriptError as exc:
        raise click.ClickException(str(exc)) from None
    text = (
        "# A field description imported by `ota-hil import`; complete what the notes say\n"
        "# is missing, then run `ota-hil reproduce` on it.\n" + spec.to_yaml()
    )
    if output is None:
        click.echo(text, nl=False)
        return
    write(output, text, "--output")
    failed = sum(o.state != "success" for o in spec.observed.values())
    click.echo(f"{output}: {len(spec.observed)} nodes, {failed} not successful in the field")
