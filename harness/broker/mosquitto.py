"""The system mosquitto binary as a throwaway broker: the fast, reference-grade backend."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import weakref
from pathlib import Path

from ..mqtt import BrokerUrl
from .base import Broker, BrokerUnavailable, free_port, wait_until_listening

log = logging.getLogger("ota_hil.broker")

# Debian installs mosquitto in /usr/sbin, which is not on a normal user's PATH.
_FALLBACK_BINARY = "/usr/sbin/mosquitto"
_BIND_ATTEMPTS = 3


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.access(_FALLBACK_BINARY, os.X_OK):
        return _FALLBACK_BINARY
    return None


class MosquittoBroker(Broker):
    """A private mosquitto process: own config, own free port, own log, no persistence."""

    kind = "mosquitto"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        binary: str | None = None,
    ) -> None:
        super().__init__()
        self.host = host
        #: 0: a free port.
        self.port = port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._reaper: weakref.finalize[..., None] | None = None

    @property
    def log_path(self) -> Path | None:
        """mosquitto's own log (kept until :meth:`stop`), for post-mortems."""
        return Path(self._tmp.name, "mosquitto.log") if self._tmp else None

    async def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("mosquitto broker already started")
        binary = self.binary or find_mosquitto()
        if binary is None:
            raise BrokerUnavailable(
                "mosquitto backend: no 'mosquitto' binary on PATH or in /usr/sbin;"
                " install it (Debian: apt-get install mosquitto)"
            )
        self._tmp = tempfile.TemporaryDirectory(prefix="ota-hil-mosquitto-")
        try:
            attempts = _BIND_ATTEMPTS if self.port == 0 else 1
            for attempt in range(1, attempts + 1):
                port = self.port or free_port(self.host)
                proc = self._proc = self._spawn(binary, port)
                if await wait_until_listening(
                    self.host,
                    port,
                    self.start_timeout,
                    alive=lambda proc=proc: proc.poll() is None,
                ):
                    self._url = BrokerUrl(self.host, port)
                    log.debug("mosquitto (pid %d) listening on %s", proc.pid, self._url)
                    return
                code = proc.poll()
                tail = self._log_tail()
                await self._terminate()
                # free_port() cannot reserve the port; someone may have taken it meanwhile.
                if "Address already in use" in tail and attempt < attempts:
                    continue
                what = (
                    f"exited with code {code}"
                    if code is not None
                    else f"did not accept connections within {self.start_timeout:g} s"
                )
                raise BrokerUnavailable(
                    f"mosquitto ({binary}, port {port}) {what}; its log ends with:\n{tail}"
                )
        except BaseException:
            await self.stop()
            raise

    def _spawn(self, binary: str, port: int) -> subprocess.Popen[bytes]:
        assert self._tmp is not None
        tmp = Path(self._tmp.name)
        lines = [
            f"listener {port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            # The default (1000) silently drops QoS 1 messages queued for a slow subscriber;
            # a test broker must not lose what the protocol promises to deliver.
            "max_queued_messages 0",
            f"log_dest file {tmp / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if os.geteuid() == 0:
            # As root mosquitto drops privileges to user "mosquitto", which then
            # cannot write the log in our private (0700, root-owned) temp dir.
            lines.append("user root")
        conf = tmp / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        # Errors from before the config is read (bad option, etc.) only reach stderr.
        with open(tmp / "stderr.log", "ab") as err:
            try:
                proc = subprocess.Popen(
                    [binary, "-c", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=subprocess.STDOUT,
                )
            except OSError as exc:
                raise BrokerUnavailable(f"mosquitto backend: cannot run {binary} ({exc})") from None
        # Never outlive the harness, even if nobody calls stop() (crash, forgotten fixture).
        self._reaper = weakref.finalize(self, proc.kill)
        return proc

    def _log_tail(self, lines: int = 15) -> str:
        if self._tmp is None:
            return ""
        text = []
        for name in ("stderr.log", "mosquitto.log"):
            path = Path(self._tmp.name, name)
            if path.exists():
                text += path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty)"

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if self._reaper is not None:
            self._reaper.detach()
            self._reaper = None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("mosquitto (pid %d) ignored SIGTERM; killing it", proc.pid)
            proc.kill()
            await asyncio.to_thread(proc.wait)

    async def stop(self) -> None:
        try:
            await self._terminate()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
