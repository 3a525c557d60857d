"""Allure reports: finding the generator, running it bounded, and the environment file.

The HTML report comes from the Allure 3 generator (npm package ``allure``, a Node.js CLI also
named ``allure``). The older Java Allure 2 answers to the same name, so the version it prints
decides the command line. Allure 3 fails on Allure 2's ``--clean`` and, given a folder that
already holds a report, writes the new one into a subfolder and leaves the old index.html in
place; so a previous report is removed here before generating, whichever version runs.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: writers are not serialised
    fcntl = None  # type: ignore[assignment]

#: How to get the generator, for messages.
INSTALL_HINT = "npm install -g allure"
NODE_REQUIREMENT = "Node.js 20+"
#: A project-local ``npm install allure`` puts the CLI here (what ``npx allure`` runs).
LOCAL_ALLURE = Path("node_modules") / ".bin" / "allure"
RESULT_GLOB = "*-result.json"
ENVIRONMENT_FILE = "environment.properties"
#: Seconds for ``allure --version``: Allure 2 starts a JVM for it.
VERSION_TIMEOUT = 30.0

#: Distributions whose versions go into the report's environment, in this order.
REPORTED_PACKAGES = (
    "ota-hil",
    "amqtt",
    "aiomqtt",
    "pytest",
    "pytest-bdd",
    "allure-pytest-bdd",
    "simpy",
    "numpy",
)

_VERSION_LINE = re.compile(
    r"(?:allure[/ @]?)?v?(?P<version>\d+\.\d+(?:\.\d+)?(?:[-+][\w.]+)?)(?:\s.*)?"
)


# --- the generator ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AllureCli:
    """An ``allure`` executable and the version it reported (None if it would not say)."""

    executable: str
    version: str | None = None

    @property
    def major_version(self) -> int | None:
        if self.version is None:
            return None
        return int(self.version.split(".", 1)[0])

    def describe(self) -> str:
        return f"Allure {self.version or '(version unknown)'}"

    def generate_command(self, results: Path, output: Path) -> list[str]:
        """The command line that writes a static report of ``results`` into ``output``.

        Allure 3 fails on ``--clean`` ("Command not found"); Allure 2 needs it to overwrite.
        When the version is unknown only what both accept is used.
        """
        major = self.major_version
        if major is not None and major >= 3:
            return [self.executable, "generate", str(results), "--output", str(output)]
        if major is not None:
            return [self.executable, "generate", str(results), "-o", str(output), "--clean"]
        return [self.executable, "generate", str(results), "-o", str(output)]

    def open_command(self, report: Path) -> list[str]:
        """Serve ``report`` and open it in a browser (both versions; runs until Ctrl-C)."""
        return [self.executable, "open", str(report)]


def parse_allure_version(text: str) -> str | None:
    """The version in ``allure --version`` output: ``3.18.0`` (Allure 3), ``2.30.0`` (Allure 2).

    Line by line, so a path printed before it (early Allure 3 betas echoed the working
    directory) is not taken for a version.
    """
    for line in text.splitlines():
        if match := _VERSION_LINE.fullmatch(line.strip()):
            return match.group("version")
    return None


def allure_version(executable: str, timeout: float = VERSION_TIMEOUT) -> str | None:
    """What ``executable --version`` says, or None when it fails (e.g. Allure 2 without Java)."""
    try:
        finished = run_bounded([executable, "--version"], timeout)
    except OSError:
        return None
    if finished.returncode != 0:
        return None
    return parse_allure_version(finished.output)


def _executable(candidate: Path) -> bool:
    return candidate.is_file() and os.access(candidate, os.X_OK)


def _resolve(command: str, search_path: str | None) -> str | None:
    """``command`` as a path if it names a file or has a slash, else looked up on the PATH."""
    if os.sep in command or Path(command).is_file():
        return command if _executable(Path(command)) else None
    return shutil.which(command, path=search_path)


def find_allure(
    explicit: Path | str | None = None,
    *,
    cwd: Path | None = None,
    search_path: str | None = None,
) -> AllureCli | None:
    """The generator to use: ``explicit`` if given, else ``./node_modules/.bin/allure``, else
    ``allure`` on PATH (``search_path`` overrides PATH). None when there is none.

    The project-local one wins over PATH because that is the one installed on purpose (and the
    one ``npx allure`` would run), while PATH may hold the Java Allure 2.
    """
    if explicit is not None:
        found = _resolve(str(explicit), search_path)
    elif _executable((cwd or Path.cwd()) / LOCAL_ALLURE):
        found = str(LOCAL_ALLURE if cwd is None else cwd / LOCAL_ALLURE)
    else:
        found = shutil.which("allure", path=search_path)
    if found is None:
        return None
    return AllureCli(found, allure_version(found))


def allure3_command_line(results: Path, output: Path, *, npx: bool = False) -> str:
    """The Allure 3 command for a person to type, quoted for a POSIX shell."""
    argv = AllureCli("allure", "3").generate_command(results, output)
    return shlex.join(["npx", *argv] if npx else argv)


def missing_allure_message(results: Path, output: Path, explicit: Path | str | None) -> str:
    """Why nothing can be generated and exactly how to get going."""
    where = (
        f"--allure {explicit} is not an executable"
        if explicit is not None
        else f"no ./{LOCAL_ALLURE} here and no `allure` on PATH"
    )
    return (
        f"no Allure report generator: {where}.\n"
        f"Install Allure 3 (needs {NODE_REQUIREMENT}):  {INSTALL_HINT}\n"
        f"or run it once without installing:  {allure3_command_line(results, output, npx=True)}\n"
        f"ota-hil report would have run:  {allure3_command_line(results, output)}"
    )


# --- results and output ----------------------------------------------------------------------


def count_results(results_dir: Path) -> int:
    """Test results in ``results_dir`` (one ``*-result.json`` per test run; 0 if it is absent)."""
    if not results_dir.is_dir():
        return 0
    return sum(1 for _ in results_dir.glob(RESULT_GLOB))


def looks_like_report(folder: Path) -> bool:
    """True for a report Allure 2 or 3 generated (so removing it loses nothing of the user's)."""
    if not (folder / "index.html").is_file():
        return False
    return any((folder / name).exists() for name in ("summary.json", "data", "widgets"))


class OutputInUse(Exception):
    """The output folder holds something that is not a previous report."""


def clear_output(output: Path, results: Path) -> None:
    """Remove a previous report at ``output``; refuse to touch anything else.

    Allure 3 writes into a non-empty folder without replacing the old report (its index.html
    stays the stale one), and Allure 2's ``--clean`` would delete whatever is there.
    """
    out, res = output.resolve(), results.resolve()
    if out == res or out in res.parents:
        raise OutputInUse(f"{output} holds the results {results}; choose another --output")
    if not output.exists():
        return
    if not output.is_dir():
        raise OutputInUse(f"{output} is a file, not a report folder; choose another --output")
    if not any(output.iterdir()):
        return
    if not looks_like_report(output):
        raise OutputInUse(
            f"{output} is not empty and is not an Allure report; "
            "choose another --output or empty it"
        )
    shutil.rmtree(output)


# --- running bounded -------------------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """How a bounded run ended: exit code (None when stopped at the timeout) and its output."""

    returncode: int | None
    output: str
    timed_out: bool = False


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_bounded(argv: list[str], timeout: float) -> Finished:
    """Run ``argv`` with stdout and stderr captured together, stopping it after ``timeout`` s.

    The child gets its own process group so that whatever it started stops with it.
    """
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    ) as proc:
        try:
            raw, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            try:
                raw, _ = proc.communicate(timeout=5.0)
            except subprocess.TimeoutExpired:  # a grandchild left the group and holds the pipe
                raw = b""
            return Finished(None, raw.decode(errors="replace"), timed_out=True)
        except BaseException:
            _stop_group(proc)
            raise
    return Finished(proc.returncode, raw.decode(errors="replace"))


def tail(text: str, lines: int = 20) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


# --- environment.properties ------------------------------------------------------------------


def _escape(text: str, *, key: bool) -> str:
    """Java ``Properties.store`` escaping: ``\\``, control characters and non-ASCII always;
    separators, comment marks and spaces in keys; a leading space in values."""
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\t\n\r\f":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}[ch])
        elif key and ch in "=: #!":
            out.append("\\" + ch)
        elif ch == " " and i == 0:
            out.append("\\ ")
        elif not " " <= ch <= "~":
            out.extend(f"\\u{unit:04x}" for unit in _utf16_units(ch))
        else:
            out.append(ch)
    return "".join(out)


def _utf16_units(ch: str) -> Iterator[int]:
    data = ch.encode("utf-16-be")
    for i in range(0, len(data), 2):
        yield int.from_bytes(data[i : i + 2], "big")


def format_properties(properties: Mapping[str, str]) -> str:
    """``key = value`` lines, keys sorted, escaped so that Java (Allure 2) and Allure 3 read
    back exactly ``properties``."""
    return "".join(
        f"{_escape(k, key=True)} = {_escape(v, key=False)}\n" for k, v in sorted(properties.items())
    )


_UNESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch != "\\" or i + 1 == len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
        else:
            out.append(_UNESCAPES.get(nxt, nxt))
            i += 2
    return "".join(out).encode("utf-16", "surrogatepass").decode("utf-16")


def _logical_lines(text: str) -> Iterator[str]:
    """Lines with Java's continuations joined (a line ending in an odd number of ``\\``)."""
    pending = ""
    for raw in text.splitlines():
        line = raw.lstrip(" \t\f") if pending else raw
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:
            pending += line[:-1]
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def parse_properties(text: str) -> dict[str, str]:
    """Read a Java properties file (comments, ``=``/``:``/space separators, escapes,
    continuation lines), as Allure does with environment.properties."""
    result: dict[str, str] = {}
    for line in _logical_lines(text):
        stripped = line.lstrip(" \t\f")
        if not stripped or stripped[0] in "#!":
            continue
        i = 0
        while i < len(stripped) and stripped[i] not in "=: \t\f":
            i += 2 if stripped[i] == "\\" else 1
        key, rest = stripped[:i], stripped[i:].lstrip(" \t\f")
        if rest[:1] in ("=", ":"):
            rest = rest[1:].lstrip(" \t\f")
        result[_unescape(key)] = _unescape(rest)
    return result


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # what Java's Properties.load(InputStream) reads


def write_allure_environment(results_dir: Path, properties: Mapping[str, str]) -> Path:
    """Add ``properties`` to ``results_dir/environment.properties`` and return its path.

    Keys already there are kept (ours win on a clash), so each test process of a run can add
    its own; an exclusive lock on the file keeps concurrent writers from losing keys.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / ENVIRONMENT_FILE
    with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        handle.seek(0)
        merged = parse_properties(_decode(handle.read()))
        merged.update(properties)
        handle.seek(0)
        handle.truncate()
        handle.write(format_properties(merged).encode("ascii"))
        handle.flush()
    return path


def package_version(name: str) -> str:
    """The installed version of distribution ``name``, or "not installed"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_properties(target: str, brokers: list[str], seed: int | None) -> dict[str, str]:
    """What a report reader needs to reproduce a run: target, brokers, seed and versions."""
    props = {
        "target": target,
        "brokers": ", ".join(brokers) if brokers else "none",
        "seed": "not set" if seed is None else str(seed),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
    }
    props.update({name: package_version(name) for name in REPORTED_PACKAGES})
    return props
