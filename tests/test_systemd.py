"""The systemd unit passes `systemd-analyze verify` cleanly, restarts only what a restart can mend, and sd_notify
reaches a real datagram socket."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

from spkidd.sdnotify import notify, watchdog_interval
from tests.support.daemon import REPO, SPKIDD

UNIT = REPO / "systemd" / "spkidd.service"
INSTALLED_EXEC = "/opt/spkidd/.venv/bin/spkidd"


def _local_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's spkidd, since verify checks that it exists."""
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_EXEC} run --config /etc/spkidd/config.toml" in text
    spkidd = Path(SPKIDD)
    assert spkidd.is_file()
    unit = tmp_path / "spkidd.service"
    unit.write_text(text.replace(INSTALLED_EXEC, str(spkidd)))
    return unit


def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(_local_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_unit_is_notify_with_watchdog_and_hardened(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for line in [
        "Type=notify",
        "WatchdogSec=30",
        "Restart=on-failure",
        "User=spkidd",
        "SupplementaryGroups=audio",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=spkidd",
        "ConfigurationDirectory=spkidd",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus=2",
        "StartLimitIntervalSec=300",
        "StartLimitBurst=10",
    ]:
        assert f"\n{line}\n" in text, line
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(_local_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    match = re.search(r"Overall exposure level for spkidd.service: ([0-9.]+)", plain)
    assert result.returncode == 0 and match is not None, plain[-500:]
    assert float(match.group(1)) <= 2.5, plain[-500:]


def test_sd_notify_to_a_path_and_an_abstract_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    abstract = f"spkidd-test-{os.getpid()}"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as at_path,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as at_abstract,
    ):
        at_path.bind(path)
        at_abstract.bind("\0" + abstract)
        at_path.settimeout(5)
        at_abstract.settimeout(5)
        assert notify("READY=1\nSTATUS=listening", {"NOTIFY_SOCKET": path})
        assert at_path.recv(4096) == b"READY=1\nSTATUS=listening"
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + abstract})
        assert at_abstract.recv(4096) == b"WATCHDOG=1"
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})


def test_watchdog_interval() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None


def test_a_configuration_error_exits_2_and_a_missing_model_exits_1(tmp_path: Path) -> None:
    """What the unit's RestartPreventExitStatus=2 rests on: a config error stays one until mended (no restart), while
    a daemon that cannot start for another reason (here a model file not there yet) exits 1 and is tried again."""
    spkidd = [SPKIDD, "run", "--config"]
    broken = tmp_path / "broken.toml"
    broken.write_text("[[sources]]\nname = 1\n")
    config_error = subprocess.run([*spkidd, str(broken)], capture_output=True, text=True, timeout=120)
    assert config_error.returncode == 2, config_error.stderr
    no_model = tmp_path / "config.toml"
    no_model.write_text(
        f'model = "{tmp_path / "absent.safetensors"}"\n[[sources]]\nname = "kitchen"\nkind = "file"\n'
        f'path = "{tmp_path / "absent.wav"}"\n[mqtt]\nbroker = "external"\nport = 1\n'
    )
    missing = subprocess.run([*spkidd, str(no_model)], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "cannot start" in missing.stderr, missing.stderr


def test_the_units_directory_modes_are_the_ones_the_docs_install() -> None:
    """systemd warns at every start when an existing StateDirectory or ConfigurationDirectory has another mode than
    the unit's (0755 by default), and the docs' install commands make both 0750."""
    text = UNIT.read_text()
    docs = (REPO / "docs" / "mqtt-and-home-assistant.md").read_text()
    for setting, folder in (("StateDirectory", "/var/lib/spkidd"), ("ConfigurationDirectory", "/etc/spkidd")):
        installed = re.search(rf"^install -d -m (0[0-7]{{3}}) .* {folder}$", docs, re.MULTILINE)
        assert installed is not None, folder
        assert f"\n{setting}=spkidd\n" in text and f"\n{setting}Mode={installed.group(1)}\n" in text, setting
