"""The embedded MQTT broker of the zero-config default (127.0.0.1:1883): Home Assistant or mosquitto_sub can
connect to the daemon's host without installing a broker first.

Two implementations, chosen by `[embedded_broker] implementation`; "auto" prefers Mosquitto. The choice was
made on evidence (tests/test_broker.py runs both against the same tests):
- A private `mosquitto` child process (Debian's 2.0.11), supervised from the daemon's event loop and restarted
  with backoff if it dies. It passes every retained-message and ordering test: a late subscriber gets exactly
  one copy of each retained topic and a client that subscribed to nothing gets nothing. It never outlives the
  daemon, even one killed with SIGKILL (spkidd.lifetime): an orphan would hold the port, and the next start fail.
- amqtt 0.12.1 inside the daemon's loop, the fallback where no mosquitto binary exists. Ordered QoS 1 delivery
  works, but it replays retained messages on every CONNECT for every filter any client ever subscribed to:
  clients receive retained messages they never asked for, and subscribers get duplicates (the test
  `test_amqtt_retained_replay_bug` pins this down). Home Assistant tolerates duplicate retained states, so it is
  usable, but Mosquitto is the correct one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Protocol

from spkidd.config import EmbeddedBrokerConfig
from spkidd.lifetime import die_with_this_process

log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 10.0


class BrokerError(Exception):
    """The embedded broker could not start (port in use, binary missing); the message says why."""


class EmbeddedBroker(Protocol):
    host: str
    port: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _start_error(what: str, host: str, port: int, detail: str) -> BrokerError:
    """Why `what` could not start; a taken port is said plainly, without the broker's own noise: the fix is
    elsewhere (stop the other process, or choose another port)."""
    if "address already in use" in detail.lower():
        detail = f"port {port} is already in use by another process"
    return BrokerError(f"{what} on {host}:{port}: {detail}")


def _config_file(host: str, port: int) -> IO[bytes]:
    """The config in an unlinked temporary file that mosquitto opens as /proc/self/fd/N: nothing is left on disk
    however the daemon ends, and an unprivileged mosquitto can read it even inside a TMPDIR it cannot enter."""
    config = tempfile.TemporaryFile()  # noqa: SIM115 - open while the broker lives: every restart reads it
    config.write(
        f"listener {port} {host}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "log_dest stderr\n"
        "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n".encode()
    )
    config.flush()
    os.fchmod(config.fileno(), 0o644)
    return config


def _unprivileged() -> dict[str, Any]:
    """Popen's user, group and groups for mosquitto when the daemon runs as root: the account mosquitto would
    switch to by itself ("mosquitto", else "nobody"), set before it starts, because a switch after the start
    would clear its parent-death signal. Nothing when not root."""
    if os.geteuid() != 0:
        return {}
    for name in ("mosquitto", "nobody"):
        with contextlib.suppress(KeyError):
            account = pwd.getpwnam(name)
            return {
                "user": account.pw_uid,
                "group": account.pw_gid,
                "extra_groups": os.getgrouplist(name, account.pw_gid),
            }
    raise BrokerError("running as root, and neither a 'mosquitto' nor a 'nobody' account exists to run mosquitto as")


def _prepare(host: str, port: int) -> tuple[IO[bytes], dict[str, Any]]:
    """The config file and the account, off the event loop: account lookups may ask a directory server."""
    privileges = _unprivileged()
    return _config_file(host, port), privileges


async def _wait_listening(host: str, port: int, alive: Any, timeout: float) -> None:
    """Polls a TCP connect until the broker accepts; `alive()` False means it died while starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if not alive():
                raise BrokerError(f"broker exited while starting on {host}:{port}") from None
            if time.monotonic() > deadline:
                raise BrokerError(f"broker did not listen on {host}:{port} within {timeout:.0f} s") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


class MosquittoBroker:
    """A private mosquitto on host:port (no persistence: the publisher republishes retained state on every
    reconnect), restarted with capped backoff if it dies, and signalled to stop if the daemon dies.

    Start and stop it from the event loop's thread: that thread's end is what the child's death signal follows.
    """

    def __init__(self, host: str, port: int, binary: str = "mosquitto") -> None:
        self.host = host
        self.port = port
        self.binary = binary
        self.restarts = 0
        self._config: IO[bytes] | None = None
        self._privileges: dict[str, Any] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        config, self._privileges = await asyncio.to_thread(_prepare, self.host, self.port)
        self._config = config
        try:
            await self._spawn()
        except BaseException:
            config.close()
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name="mosquitto-supervisor")

    async def _spawn(self) -> None:
        assert self._config is not None
        config = self._config.fileno()
        try:
            process = await asyncio.create_subprocess_exec(
                self.binary,
                "-c",
                f"/proc/self/fd/{config}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(config,),
                # Its own process group: a Ctrl-C or `timeout` aimed at the daemon's group must not stop the
                # broker before the daemon has published `offline` through it.
                process_group=0,
                preexec_fn=die_with_this_process(),
                **self._privileges,
            )
        except OSError as exc:
            raise BrokerError(f"cannot run {self.binary}: {exc}") from exc
        self._process = process
        lines: list[str] = []
        running = asyncio.Event()
        logger = asyncio.create_task(self._forward_log(process, lines, running))
        try:
            # Its "running" line, not only a TCP connect: another program may hold the port.
            ended = asyncio.create_task(process.wait())
            ready = asyncio.create_task(running.wait())
            await asyncio.wait([ended, ready], timeout=_READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            ended.cancel()
            if not running.is_set() or process.returncode is not None:
                raise BrokerError("it exited or did not report running")
            await _wait_listening(self.host, self.port, lambda: process.returncode is None, _READY_TIMEOUT_S)
        except BrokerError as exc:
            await self._terminate(process)
            await logger
            raise _start_error("mosquitto", self.host, self.port, f"{exc}; {' '.join(lines[-3:])}") from None
        log.info("embedded broker: mosquitto (pid %d) listening on %s:%d", process.pid, self.host, self.port)

    @staticmethod
    async def _forward_log(process: asyncio.subprocess.Process, lines: list[str], running: asyncio.Event) -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            del lines[:-20]
            if line.endswith(" running"):
                running.set()
            message = line.split(": ", 1)[-1]
            level = logging.WARNING if message.startswith(("Error", "Warning")) else logging.DEBUG
            log.log(level, "mosquitto: %s", message)

    async def _supervise(self) -> None:
        attempt = 0
        while not self._stopping:
            process = self._process
            assert process is not None
            code = await process.wait()
            if self._stopping:
                return
            delay = min(30.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)
            attempt = min(attempt + 1, 10)
            log.error("embedded broker: mosquitto exited with %s; restarting in %.1f s", code, delay)
            await asyncio.sleep(delay)
            try:
                await self._spawn()
                self.restarts += 1
                attempt = 0
            except BrokerError as exc:
                log.error("embedded broker: restart failed: %s", exc)

    @staticmethod
    async def _terminate(process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(5.0):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._process is not None:
            await self._terminate(self._process)
            log.info("embedded broker: mosquitto stopped (exit %s)", self._process.returncode)
        if self._config is not None:
            self._config.close()


class AmqttBroker:
    """amqtt in the daemon's own loop, with only the anonymous-auth plugin (no $SYS or packet-logging plugins,
    which warn and log every packet). Being no child process, it cannot outlive the daemon."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._broker: Any = None

    async def start(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        try:
            await self._broker.start()
        except Exception as exc:
            raise _start_error("amqtt", self.host, self.port, str(exc)) from exc
        await _wait_listening(self.host, self.port, lambda: True, _READY_TIMEOUT_S)
        log.info("embedded broker: amqtt listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            log.info("embedded broker: amqtt stopped")


def make_broker(config: EmbeddedBrokerConfig) -> EmbeddedBroker:
    """Mosquitto when asked for or when "auto" finds the binary; amqtt otherwise."""
    binary = shutil.which("mosquitto") or next(
        (str(p) for p in (Path("/usr/sbin/mosquitto"), Path("/usr/local/sbin/mosquitto")) if p.is_file()), None
    )
    if config.implementation == "mosquitto" or (config.implementation == "auto" and binary):
        if binary is None:
            raise BrokerError("implementation = 'mosquitto' but no mosquitto binary is installed")
        return MosquittoBroker(config.host, config.port, binary)
    return AmqttBroker(config.host, config.port)
