"""A daemon killed with SIGKILL leaves no child behind: its embedded Mosquitto (also one restarted by the
supervisor) and an ffmpeg waiting for a UDP stream both end, and the next `spkidd run` on the same port starts.
A taken port stops the start with a message naming the port and the setting that changes it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HELD_OUT_SENTENCES
from tests.support.browser import wait_until
from tests.support.daemon import DaemonProcess, conversation, file_source, random_model, write_config
from tests.support.mosquitto import free_port
from tests.support.procs import command, descendants

EXIT_DEADLINE_S = 10.0
"""Mosquitto and ffmpeg stop at once on SIGTERM; this leaves room for a machine busy with other tests."""
STALL_S = 5.0
"""The daemon itself stops an ffmpeg that wrote nothing for this long (FfmpegSource's default stall timeout)."""


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (field 3, the state, first); empty once the pid is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rindex(")") + 2 :].split()


def _running(pid: int) -> bool:
    """Not exited: a zombie has exited (and released its port); only its reaping is left."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def _parent(pid: int) -> int:
    return int(_stat(pid)[1])


def _age_s(pid: int) -> float:
    """How long ago `pid` started (field 22 is its start in clock ticks after boot)."""
    started = int(_stat(pid)[19]) / os.sysconf("SC_CLK_TCK")
    return float(Path("/proc/uptime").read_text().split()[0]) - started


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _broker_pids(log: str) -> list[int]:
    """The mosquitto pids a daemon's log reports, in order (one more per supervised restart)."""
    return [int(pid) for pid in re.findall(r"mosquitto \(pid (\d+)\) listening", log)]


class Children:
    """Every process a test started, directly or through a daemon; all killed at the end, however it ends."""

    def __init__(self) -> None:
        self.daemons: list[DaemonProcess] = []
        self.others: dict[int, str] = {}

    def note(self, pid: int) -> int:
        self.others.setdefault(pid, command(pid))
        return pid

    def kill_all(self) -> None:
        for daemon in self.daemons:
            if daemon.process.poll() is None:  # not reaped, so its pid is not someone else's yet
                for pid in descendants(daemon.process.pid):
                    self.note(pid)
            daemon.kill()
        for pid, cmdline in self.others.items():
            if _running(pid) and command(pid) == cmdline:  # the same process, not a reused pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def children() -> Iterator[Children]:
    started = Children()
    try:
        yield started
    finally:
        started.kill_all()


def _daemon(children: Children, config: Path, log: Path) -> DaemonProcess:
    daemon = DaemonProcess(config, log)
    children.daemons.append(daemon)
    return daemon


def _young_ffmpeg(daemon: DaemonProcess, children: Children) -> int | None:
    """The daemon's ffmpeg if it started less than half a stall timeout ago: the daemon cannot be about to stop
    it itself, so only the death signal can explain its end after the daemon is killed."""
    for pid in descendants(daemon.process.pid):
        if "udp://" in command(pid) and _age_s(pid) < STALL_S / 2:
            return children.note(pid)
    return None


def test_a_killed_daemon_leaves_no_broker_or_ffmpeg_and_restarts(tmp_path: Path, children: Children) -> None:
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    wav = conversation(tmp_path, [("alice", HELD_OUT_SENTENCES[3])], lead_s=0.5)
    port = free_port()
    sources = (
        file_source(wav)
        # A UDP stream nobody sends: its ffmpeg waits for input with no timeout and never writes to its stdout,
        # so a closed pipe would not stop it.
        + f'[[sources]]\nname = "hall"\nkind = "url"\nurl = "udp://127.0.0.1:{_free_udp_port()}"\n'
    )
    extra = f'[embedded_broker]\nport = {port}\nimplementation = "mosquitto"\n'
    config = write_config(tmp_path / "config.toml", model, sources, 'broker = "embedded"', extra)
    daemon = _daemon(children, config, tmp_path / "first.log")
    first = children.note(_broker_pids(daemon.wait_log(lambda text: len(_broker_pids(text)) == 1))[0])
    assert _parent(first) == daemon.process.pid
    # The supervisor's restart spawns the broker again, from a task: that one must die with the daemon too.
    os.kill(first, signal.SIGKILL)
    broker = children.note(_broker_pids(daemon.wait_log(lambda text: len(_broker_pids(text)) == 2))[1])
    assert _parent(broker) == daemon.process.pid and _running(broker)
    ffmpeg = wait_until(lambda: _young_ffmpeg(daemon, children), 60, "a freshly started ffmpeg")

    daemon.signal(signal.SIGKILL)
    daemon.wait()
    wait_until(lambda: not _running(broker), EXIT_DEADLINE_S, f"mosquitto {broker} to exit")
    wait_until(lambda: not _running(ffmpeg), EXIT_DEADLINE_S, f"ffmpeg {ffmpeg} to exit")

    again = _daemon(children, config, tmp_path / "second.log")
    again.wait_log(lambda text: f"listening on 127.0.0.1:{port}" in text)
    assert "cannot start" not in again.text()


@pytest.mark.parametrize("implementation", ["mosquitto", "amqtt"])
def test_a_taken_port_is_named_with_the_setting_that_changes_it(
    tmp_path: Path, children: Children, implementation: str
) -> None:
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    wav = conversation(tmp_path, [("alice", HELD_OUT_SENTENCES[3])], lead_s=0.5)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        sources = file_source(wav, loop=None)
        extra = f'[embedded_broker]\nport = {port}\nimplementation = "{implementation}"\n'
        config = write_config(tmp_path / "config.toml", model, sources, 'broker = "embedded"', extra)
        daemon = _daemon(children, config, tmp_path / "daemon.log")
        assert daemon.wait(90) == 1
    said = daemon.text()[-2000:]
    assert f"{implementation} on 127.0.0.1:{port}: port {port} is already in use by another process" in said, said
    assert "change [embedded_broker] port" in said, said
