"""``ota-hil report`` and the Allure environment file.

The real generator (npm package ``allure``) cannot be installed on this machine at test time,
so the found-generator paths run fake ``allure`` executables: small shell scripts that stand in
for the npm package (and for the Java Allure 2), answer ``--version`` like the real ones and
log the arguments they were given. The not-found path runs for real.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from harness import reporting
from harness.cli.report import report_command
from harness.reporting import (
    AllureCli,
    environment_properties,
    find_allure,
    format_properties,
    parse_allure_version,
    parse_properties,
    write_allure_environment,
)

REPORT = [sys.executable, "-c", "from harness.cli.report import report_command; report_command()"]

#: Writes a placeholder report into the folder after -o/--output, as the real one would.
WRITE_REPORT = """
out=""; prev=""
for a in "$@"; do
  case "$prev" in -o|--output) out="$a";; esac
  prev="$a"
done
mkdir -p "$out" && echo '<html>fake</html>' > "$out/index.html" && echo '{}' > "$out/summary.json"
"""
FAIL_30_LINES = """
i=1
while [ $i -le 30 ]; do printf 'line %02d\\n' $i; i=$((i + 1)); done
exit 3
"""


def fake_allure(path: Path, version: str, generate: str = WRITE_REPORT) -> Path:
    """An ``allure`` stand-in at ``path``; each call's argv goes to ``<path>.<command>``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""#!/bin/sh
PATH=/usr/bin:/bin
log='{path}'
case "$1" in
  --version) echo '{version}'; exit 0;;
  generate)
    printf '%s\\n' "$@" > "$log.generate"
    {generate}
    exit $?;;
  open) printf '%s\\n' "$@" > "$log.open"; exit 0;;
esac
echo "unexpected: $*" >&2
exit 64
"""
    )
    path.chmod(0o755)
    return path


def calls(fake: Path, command: str) -> list[str] | None:
    """The argv the fake got for ``command`` (None if it was not called)."""
    log = Path(f"{fake}.{command}")
    return log.read_text().splitlines() if log.exists() else None


def make_results(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"0000000{i}-aaaa-bbbb-cccc-dddddddddddd-result.json").write_text("{}")
    (folder / "11111111-aaaa-bbbb-cccc-dddddddddddd-container.json").write_text("{}")
    return folder


def invoke(*args: str) -> Result:
    return CliRunner().invoke(report_command, list(args))


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """PATH with no ``allure`` on it (the fakes set their own PATH)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return str(empty)


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    """A results folder with two results, and where the report should go."""
    return make_results(tmp_path / "res"), tmp_path / "out"


# --- the command line ------------------------------------------------------------------------


def test_help_explains_generator_options_and_exit_codes() -> None:
    result = CliRunner().invoke(report_command, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for needle in (
        "npm install -g allure",
        "Node.js 20+",
        "./node_modules/.bin/allure",
        "allure generate RESULTS --output OUTPUT",
        "allure generate RESULTS -o OUTPUT --clean",
        "ota-hil run",
        "last 20 lines",
        "--timeout",
        "--open",
        "--allure",
        "reports/allure-results",
        "reports/allure-report",
    ):
        assert needle in text, needle


def test_no_generator_says_how_to_get_it(tmp_path: Path) -> None:
    make_results(tmp_path / "reports" / "allure-results")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = subprocess.run(
        REPORT,
        cwd=tmp_path,
        env={**os.environ, "PATH": str(empty)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "npm install -g allure" in proc.stderr
    assert "Node.js 20+" in proc.stderr
    assert "npx allure generate reports/allure-results --output reports/allure-report" in (
        proc.stderr
    )
    would = "would have run:  allure generate reports/allure-results --output reports/allure-report"
    assert would in proc.stderr
    assert not (tmp_path / "reports" / "allure-report").exists()


def test_explicit_generator_that_is_not_there(tmp_path: Path, paths: tuple[Path, Path]) -> None:
    results, output = paths
    result = invoke("--results", str(results), "--output", str(output), "--allure", "/no/allure")
    assert result.exit_code == 1
    assert "--allure /no/allure is not an executable" in result.stderr
    assert "npm install -g allure" in result.stderr
    assert f"allure generate {results} --output {output}" in result.stderr


@pytest.mark.parametrize("make", ["absent", "empty", "containers only"])
def test_no_results_says_run_first(tmp_path: Path, make: str) -> None:
    results = tmp_path / "res"
    if make != "absent":
        results.mkdir()
    if make == "containers only":
        (results / "x-container.json").write_text("{}")
    fake = fake_allure(tmp_path / "bin" / "allure", "3.0.0")
    result = invoke("--results", str(results), "--allure", str(fake))
    assert result.exit_code == 1
    assert str(results) in result.stderr
    assert "run `ota-hil run` first" in result.stderr
    assert calls(fake, "generate") is None


# --- with a (fake) generator -----------------------------------------------------------------


def test_allure3_gets_output_option_and_no_clean(tmp_path: Path, paths: tuple[Path, Path]) -> None:
    results, output = paths
    fake = fake_allure(tmp_path / "bin" / "allure", "3.0.0")
    result = invoke("--results", str(results), "--output", str(output), "--allure", str(fake))
    assert result.exit_code == 0, result.output
    assert calls(fake, "generate") == ["generate", str(results), "--output", str(output)]
    assert f"Report: {output / 'index.html'} (2 test results)" in result.stdout
    assert "Allure 3.0.0" in result.stdout
    assert (output / "index.html").is_file()
    assert calls(fake, "open") is None


def test_allure2_on_path_gets_its_own_syntax(
    tmp_path: Path, paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    results, output = paths
    fake = fake_allure(tmp_path / "bin" / "allure", "2.30.0")
    monkeypatch.setenv("PATH", str(fake.parent))
    result = invoke("--results", str(results), "--output", str(output))
    assert result.exit_code == 0, result.output
    assert calls(fake, "generate") == ["generate", str(results), "-o", str(output), "--clean"]
    assert "Allure 2.30.0" in result.stdout


def test_node_modules_allure_wins_over_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_results(tmp_path / "reports" / "allure-results", count=3)
    local = fake_allure(tmp_path / "node_modules" / ".bin" / "allure", "3.18.0")
    on_path = fake_allure(tmp_path / "bin" / "allure", "2.30.0")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.chdir(tmp_path)
    result = invoke()
    assert result.exit_code == 0, result.output
    assert calls(local, "generate") == [
        "generate",
        "reports/allure-results",
        "--output",
        "reports/allure-report",
    ]
    assert calls(on_path, "generate") is None
    assert "Report: reports/allure-report/index.html (3 test results)" in result.stdout
    assert (tmp_path / "reports" / "allure-report" / "index.html").is_file()


def test_failing_generator_exit_code_and_last_20_lines(
    tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    results, output = paths
    fake = fake_allure(tmp_path / "bin" / "allure", "3.0.0", generate=FAIL_30_LINES)
    result = invoke("--results", str(results), "--output", str(output), "--allure", str(fake))
    assert result.exit_code == 3
    assert "exit code 3" in result.stderr
    shown = re.findall(r"^line (\d\d)$", result.stderr, re.MULTILINE)
    assert shown == [f"{i:02d}" for i in range(11, 31)]
    assert "Traceback" not in result.output


def test_generator_that_writes_nothing_is_a_failure(
    tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    results, output = paths
    fake = fake_allure(tmp_path / "bin" / "allure", "3.0.0", generate="echo done; exit 0")
    result = invoke("--results", str(results), "--output", str(output), "--allure", str(fake))
    assert result.exit_code == 1
    assert "wrote no" in result.stderr
    assert "done" in result.stderr


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" in status.read_text()


def test_hanging_generator_is_stopped_at_the_timeout(
    tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    results, output = paths
    pidfile = tmp_path / "sleep.pid"
    hang = f"echo started; sleep 30 & echo $! > '{pidfile}'; wait"
    fake = fake_allure(tmp_path / "bin" / "allure", "3.0.0", generate=hang)
    began = time.monotonic()
    result = invoke(
        "--results",
        str(results),
        "--output",
        str(output),
        "--allure",
        str(fake),
        "--timeout",
        "0.5",
    )
    assert time.monotonic() - began < 5
    assert result.exit_code == 1
    assert "did not finish within 0.5 s (--timeout)" in result.stderr
    assert "started" in result.stderr
    sleeper = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while not _gone(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(sleeper), "the generator's own child outlived the timeout"


def test_open_serves_the_report_only_when_asked(tmp_path: Path, paths: tuple[Path, Path]) -> None:
    results, output = paths
    fake = fake_allure(tmp_path / "bin" / "allure", "3.0.0")
    result = invoke(
        "--results", str(results), "--output", str(output), "--allure", str(fake), "--open"
    )
    assert result.exit_code == 0, result.output
    assert calls(fake, "open") == ["open", str(output)]


def test_previous_report_is_replaced(tmp_path: Path, paths: tuple[Path, Path]) -> None:
    results, output = paths
    output.mkdir()
    for name in ("index.html", "summary.json", "stale.js"):
        (output / name).write_text("old")
    fake = fake_allure(tmp_path / "bin" / "allure", "3.0.0")
    result = invoke("--results", str(results), "--output", str(output), "--allure", str(fake))
    assert result.exit_code == 0, result.output
    assert not (output / "stale.js").exists()
    assert "fake" in (output / "index.html").read_text()


@pytest.mark.parametrize("where", ["other folder", "results folder", "parent of results"])
def test_output_that_is_not_a_report_is_refused(
    tmp_path: Path, paths: tuple[Path, Path], where: str
) -> None:
    results, output = paths
    if where == "other folder":
        output.mkdir()
        (output / "notes.txt").write_text("mine")
    else:
        output = results if where == "results folder" else results.parent
    fake = fake_allure(tmp_path / "bin" / "allure", "3.0.0")
    result = invoke("--results", str(results), "--output", str(output), "--allure", str(fake))
    assert result.exit_code == 1
    assert "choose another --output" in result.stderr
    assert calls(fake, "generate") is None
    assert len(list(results.glob("*-result.json"))) == 2
    if where == "other folder":
        assert (output / "notes.txt").read_text() == "mine"


# --- the library -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("printed", "version"),
    [
        ("3.18.0\n", "3.18.0"),
        ("2.30.0\n", "2.30.0"),
        ("/home/me/proj2.1\nallure/3.0.0-beta.17 linux-x64 node-v20.11.0\n", "3.0.0-beta.17"),
        ("ERROR: JAVA_HOME is not set\n", None),
    ],
)
def test_version_parsing(printed: str, version: str | None) -> None:
    assert parse_allure_version(printed) == version


def test_command_lines_per_version() -> None:
    res, out = Path("r"), Path("o")
    assert AllureCli("a", "3.18.0").generate_command(res, out) == [
        "a",
        "generate",
        "r",
        "--output",
        "o",
    ]
    assert AllureCli("a", "2.30.0").generate_command(res, out)[-3:] == ["-o", "o", "--clean"]
    assert AllureCli("a", None).generate_command(res, out) == ["a", "generate", "r", "-o", "o"]
    assert AllureCli("a", "3.0.0").major_version == 3
    assert AllureCli("a", None).major_version is None
    assert AllureCli("a", "3.0.0").open_command(out) == ["a", "open", "o"]


def test_find_allure_with_unanswered_version(tmp_path: Path, empty_path: str) -> None:
    """An ``allure`` that cannot say its version (Allure 2 without Java) is still used."""
    broken = tmp_path / "bin" / "allure"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'JAVA_HOME is not set' >&2\nexit 1\n")
    broken.chmod(0o755)
    found = find_allure(search_path=str(broken.parent), cwd=tmp_path)
    assert found == AllureCli(str(broken), None)
    assert find_allure(cwd=tmp_path) is None


# --- environment.properties ------------------------------------------------------------------


def _unescape(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code.startswith("u") and len(code) == 5:
            return chr(int(code[1:], 16))
        return {"n": "\n", "t": "\t", "r": "\r", "f": "\f"}.get(code, code)

    joined = re.sub(r"\\(u[0-9a-fA-F]{4}|.)", one, text)
    return joined.encode("utf-16", "surrogatepass").decode("utf-16")


def read_back(path: Path) -> list[tuple[str, str]]:
    """``key = value`` lines in file order, unescaped (a small reader of our own format)."""
    pairs = []
    for line in path.read_text(encoding="ascii").splitlines():
        match = re.fullmatch(r"((?:[^\\ ]|\\.)+) = (.*)", line)
        assert match, line
        pairs.append((_unescape(match.group(1)), _unescape(match.group(2))))
    return pairs


def test_environment_file_format_is_pinned(tmp_path: Path) -> None:
    path = write_allure_environment(tmp_path, {"b": "2", "a key": "x=y", "c:d": " lead"})
    assert path == tmp_path / "environment.properties"
    assert path.read_text() == "a\\ key = x=y\nb = 2\nc\\:d = \\ lead\n"


def test_environment_escaping_round_trips(tmp_path: Path) -> None:
    tricky = {
        "with space": "plain",
        "eq=and:colon": "v=1:2",
        "#hash!bang": "x",
        "back\\slash": "C:\\temp\\new",
        "lines": "one\ntwo\r\nthree\tfour",
        "leading": "  two spaces",
        "unicode": "café 😀",
        "empty": "",
    }
    path = write_allure_environment(tmp_path / "results", tricky)
    pairs = read_back(path)
    assert [k for k, _ in pairs] == sorted(tricky)
    assert dict(pairs) == tricky
    assert parse_properties(path.read_text()) == tricky


def test_environment_merges_with_what_others_wrote(tmp_path: Path) -> None:
    (tmp_path / "environment.properties").write_text(
        "# written by another process\n"
        "zeta = from-other\n"
        "target: rig\n"
        "long = first \\\n"
        "       second\n"
        "! another comment\n"
        "spaced\\ key   value with spaces\n"
    )
    write_allure_environment(tmp_path, {"target": "sim", "alpha": "1"})
    pairs = read_back(tmp_path / "environment.properties")
    assert pairs == [
        ("alpha", "1"),
        ("long", "first second"),
        ("spaced key", "value with spaces"),
        ("target", "sim"),
        ("zeta", "from-other"),
    ]


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    def add(i: int) -> None:
        for j in range(5):
            write_allure_environment(tmp_path, {f"worker{i}.{j}": str(i)})

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    written = dict(read_back(tmp_path / "environment.properties"))
    assert len(written) == 40


def test_environment_properties_names_the_run_and_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        reporting, "REPORTED_PACKAGES", (*reporting.REPORTED_PACKAGES, "no-such-dist-xyz")
    )
    props = environment_properties("rig", ["embedded", "mosquitto"], 7)
    assert props["target"] == "rig"
    assert props["brokers"] == "embedded, mosquitto"
    assert props["seed"] == "7"
    assert props["no-such-dist-xyz"] == "not installed"
    for name in (
        "python",
        "ota-hil",
        "amqtt",
        "aiomqtt",
        "pytest",
        "pytest-bdd",
        "allure-pytest-bdd",
        "simpy",
        "numpy",
    ):
        assert props[name] and props[name] != "not installed", name
    assert props["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    assert os.uname().machine in props["platform"]
    assert environment_properties("sim", [], None)["seed"] == "not set"
    assert "\n" in format_properties(props)
