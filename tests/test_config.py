"""config.toml loading: defaults, the generic table -> dataclass validation, and secrets."""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from spkidd.config import ConfigError, find_config, from_table, load_config, sanitize_id
from tests.support.mosquitto import make_certificates

REPO = Path(__file__).resolve().parents[1]
MINIMAL = """
model = "models/voices.safetensors"
[[sources]]
name = "kitchen"
kind = "mic"
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Inner:
    ratio: float
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    count: int
    mode: Literal["a", "b"] = "a"
    where: Path | None = None
    inner: Inner = Inner(1.0)
    extra: dict[str, float] = field(default_factory=dict)


def test_from_table_converts_and_validates_generic_dataclasses() -> None:
    f = Path("x.toml")
    value = from_table(
        Outer,
        {"count": 3, "mode": "b", "where": "/tmp", "inner": {"ratio": 2, "names": ["p", "q"]}, "extra": {"k": 1}},
        file=f,
        where="t",
    )
    assert value == Outer(3, "b", Path("/tmp"), Inner(2.0, ("p", "q")), {"k": 1.0})
    assert isinstance(value.inner.ratio, float)
    cases = {
        "x.toml: [t] unknown key 'cuont'": {"cuont": 3},
        "x.toml: [t] missing required key 'count'": {},
        "x.toml: t.count: expected int, got bool True": {"count": True},
        "x.toml: t.count: expected int, got float 1.5": {"count": 1.5},
        "x.toml: t.mode: expected 'a' or 'b', got str 'c'": {"count": 1, "mode": "c"},
        "x.toml: t.inner.ratio: expected float, got str 'x'": {"count": 1, "inner": {"ratio": "x"}},
        "x.toml: [t.inner] unknown key 'bad'": {"count": 1, "inner": {"ratio": 1, "bad": 0}},
        "x.toml: t.inner.names[1]: expected str, got int 2": {"count": 1, "inner": {"ratio": 1, "names": ["a", 2]}},
        "x.toml: t.where: expected a path string, got int 5": {"count": 1, "where": 5},
    }
    for message, table in cases.items():
        with pytest.raises(ConfigError) as info:
            from_table(Outer, table, file=f, where="t")
        assert str(info.value).startswith(message), str(info.value)


def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.model == tmp_path / "models/voices.safetensors"
    assert config.instance == sanitize_id(os.uname().nodename.split(".")[0])
    assert [s.name for s in config.sources] == ["kitchen"] and config.sources[0].kind == "mic"
    assert config.mqtt.broker == "embedded" and config.mqtt.topic_prefix == "spkidd"
    assert config.mqtt.discovery_prefix == "homeassistant" and config.mqtt.clear_after_s == 60.0
    assert (config.embedded_broker.host, config.embedded_broker.port) == ("127.0.0.1", 1883)
    assert config.health.enabled is False and config.health.host == "127.0.0.1"
    assert config.pipeline.decision == {} and config.pipeline.gate.aggressiveness == 2
    assert not config.pipeline.unknown_clips.enabled, "keeping unknown voices' audio is off by default"


def test_repository_config_toml_is_valid(tmp_path: Path) -> None:
    config = load_config(REPO / "config.toml")
    assert config.sources and config.mqtt.broker == "embedded"


def test_tables_reach_the_gate_decider_and_pipeline(tmp_path: Path) -> None:
    text = (
        'instance = "living room.1"\n'
        + MINIMAL
        + (
            "[vad]\naggressiveness = 3\nhangover_ms = 450\n"
            "[decision]\nmin_confidence = 0.7\nstable_steps = 4\n"
            "[pipeline]\nstep_ms = 300\n"
            '[unknown_clips]\nfolder = "unknown"\nmax_clips = 50\n'
        )
    )
    config = load_config(write(tmp_path, text))
    assert config.instance == "living_room_1"
    assert (config.pipeline.gate.aggressiveness, config.pipeline.gate.hangover_ms) == (3, 450)
    assert config.pipeline.decision == {"min_confidence": 0.7, "stable_steps": 4.0}
    assert config.pipeline.step_ms == 300
    clips = config.pipeline.unknown_clips
    assert clips.folder == tmp_path / "unknown" and clips.max_clips == 50 and clips.max_mb == 100.0


URL_SOURCE = '[[sources]]\nname = "hall"\nkind = "url"\nurl = '


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[vad]\naggresiveness = 3\n", "[vad] unknown key 'aggresiveness'"),
        ('[vad]\naggressiveness = "high"\n', "vad.aggressiveness: expected int, got str 'high'"),
        ("[vad]\naggressiveness = 7\n", "[vad] gate.aggressiveness must be 0-3, not 7"),
        ("[decision]\nmin_confidense = 0.7\n", "[decision] unknown key 'min_confidense'"),
        ("[decision]\nmin_confidence = 2.0\n", "decision.min_confidence is a probability"),
        ("[mqtt]\nport = 99999\n", "[mqtt] port 99999 out of range"),
        ("[embedded_broker]\nport = 0\n", "[embedded_broker] port 0 out of range"),
        ("[health]\nport = 70000\n", "[health] port 70000 out of range"),
        ("[web]\nport = -1\n", "[web] port -1 out of range"),
        ('[mqtt]\nbroker = "cloud"\n', "mqtt.broker: expected 'embedded' or 'external', got str 'cloud'"),
        ("[mqtt.tls]\nverify = true\n", "[mqtt.tls] unknown key 'verify'"),
        ("[health]\nenabled = 1\n", "health.enabled: expected bool, got int 1"),
        ('[logging]\nlevel = "LOUD"\n', "logging.level: expected"),
        ("[pipeline]\ngate = {}\n", "[pipeline] unknown key 'gate'"),
        ("[pipeline]\nunknown_clips = {}\n", "use the [unknown_clips] table"),
        ("[unknown_clips]\nmax_clips = 0\n", "unknown_clips.max_clips must be at least 1"),
        ("[unknown_clips]\nfolder = 3\n", "unknown_clips.folder: expected"),
        ('[[sources]]\nname = "hall"\nkind = "url"\n', "[sources[1]] kind = 'url' needs url"),
        (URL_SOURCE + '"rtsp//127.0.0.1:58353/spk"\n', "[sources[1]] url 'rtsp//127.0.0.1:58353/spk' is not a URL"),
        (URL_SOURCE + '"htp:/camera"\n', "[sources[1]] url 'htp:/camera' is not a URL of the form scheme://host/path"),
        (URL_SOURCE + '"htp://camera"\n', "[sources[1]] url 'htp://camera' has the unsupported scheme 'htp'"),
        (URL_SOURCE + '"rtsp:///spk"\n', "[sources[1]] url 'rtsp:///spk' names no host"),
        (URL_SOURCE + '"rtsp://me:secret@cam:99999/spk"\n', "url 'rtsp://me:***@cam:99999/spk' has a port that is not"),
        ('[[sources]]\nname = "kitchen"\nkind = "mic"\n', "name 'kitchen' is used more than once"),
        ('[[sources]]\nname = "a/b"\nkind = "mic"\n', "may only contain letters"),
        ('[[sources]]\nkind = "mic"\n', "[sources[1]] missing required key 'name'"),
        ("[whatever]\nx = 1\n", "unknown key 'whatever'"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, extra: str, message: str) -> None:
    path = write(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)


def test_missing_model_bad_toml_and_no_sources(tmp_path: Path) -> None:
    for text, message in [
        ('[[sources]]\nname = "k"\nkind = "mic"\n', "missing required key 'model'"),
        ('model = "m"\n', "no [[sources]]"),
        ("model = \n", "not valid TOML"),
    ]:
        path = write(tmp_path, text)
        with pytest.raises(ConfigError, match=r"config.toml: .*") as info:
            load_config(path)
        assert message in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_config_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "elsewhere.toml"
    assert find_config(explicit) == explicit
    monkeypatch.chdir(tmp_path)
    write(tmp_path, MINIMAL)
    assert find_config(None) == Path("config.toml")


def test_password_sources_and_secrecy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "hunter2-very-secret"
    (tmp_path / "mqtt.pass").write_text(secret + "\n")
    config = load_config(write(tmp_path, MINIMAL + '[mqtt]\nusername = "u"\npassword_file = "mqtt.pass"\n'))
    assert config.mqtt.password == secret and config.mqtt.password_file == tmp_path / "mqtt.pass"
    assert secret not in repr(config) and secret not in str(config)
    monkeypatch.setenv("SPKIDD_TEST_PW", secret)
    config = load_config(write(tmp_path, MINIMAL + '[mqtt]\npassword_env = "SPKIDD_TEST_PW"\n'))
    assert config.mqtt.password == secret
    with pytest.raises(ConfigError, match="password_env: environment variable NOPE_NOT_SET is not set"):
        load_config(write(tmp_path, MINIMAL + '[mqtt]\npassword_env = "NOPE_NOT_SET"\n'))
    with pytest.raises(ConfigError, match="give only one of password, password_file, password_env"):
        load_config(write(tmp_path, MINIMAL + f'[mqtt]\npassword = "{secret}"\npassword_env = "X"\n'))

    caplog.set_level(logging.DEBUG)
    private = write(tmp_path, MINIMAL + f'[mqtt]\npassword = "{secret}"\n')
    load_config(private)
    assert "readable by everyone" not in caplog.text
    private.chmod(0o644)
    config = load_config(private)
    assert config.mqtt.password == secret
    assert f"{private} holds an MQTT password and is readable by everyone" in caplog.text
    assert secret not in caplog.text


def test_a_password_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    """Issue 11 item 14: `password = 31415926535` was refused with its value in the message (and the journal)."""
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, MINIMAL + "[mqtt]\npassword = 31415926535\n"))
    assert "mqtt.password: expected str, got int" in str(refused.value)
    assert "31415926535" not in str(refused.value)


@pytest.mark.parametrize(
    ("mqtt", "warned"),
    [
        ('broker = "external"\nhost = "192.0.2.7"\n', True),
        ('broker = "external"\nhost = "192.0.2.7"\n[mqtt.tls]\nenabled = true\n', False),
        ('broker = "external"\nhost = "127.0.0.1"\n', False),
        ('broker = "embedded"\n', False),
    ],
)
def test_a_plaintext_password_to_another_host_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mqtt: str, warned: bool
) -> None:
    secret = "hunter2-very-secret"
    body = MINIMAL + f'[mqtt]\nusername = "u"\npassword = "{secret}"\n' + mqtt
    load_config(write(tmp_path, body))
    assert ("in plain text" in caplog.text) == warned and secret not in caplog.text


def test_password_file_is_its_first_line_and_a_bad_one_is_refused_in_words(tmp_path: Path) -> None:
    """The docs say the first line: an editor's second line or a note below it is no part of the password. A file
    the daemon cannot read names the user it runs as (the service's, not the one who wrote the file)."""
    secret = "hunter2-very-secret"
    password_file = tmp_path / "mqtt.pass"
    password_file.write_text(f"{secret}\n# the spkidd user of the Mosquitto add-on\n")
    body = MINIMAL + '[mqtt]\nusername = "u"\npassword_file = "mqtt.pass"\n'
    assert load_config(write(tmp_path, body)).mqtt.password == secret
    password_file.write_text("\n")
    with pytest.raises(ConfigError, match=r"password_file: the first line of .*mqtt.pass is empty$"):
        load_config(write(tmp_path, body))
    password_file.unlink()
    user = pwd.getpwuid(os.geteuid()).pw_name
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, body))
    assert str(refused.value).endswith(
        f"password_file: user {user} cannot read {password_file}: No such file or directory"
    )


def test_a_user_without_a_name_is_told_by_its_uid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A container's user may have no line in /etc/passwd: getpwuid's KeyError was a traceback, not the refusal."""

    def nameless(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", nameless)
    body = MINIMAL + '[mqtt]\nusername = "u"\npassword_file = "missing.pass"\n'
    with pytest.raises(ConfigError, match=rf"password_file: user with uid {os.geteuid()} cannot read .*missing.pass"):
        load_config(write(tmp_path, body))


def test_broker_tls_files_that_cannot_be_used_stop_the_start(tmp_path: Path) -> None:
    """A missing or wrong CA, certificate or key is a config error naming the file, not a reconnect loop logging
    "[Errno 2] No such file or directory" every 30 s."""
    ca, cert, key = make_certificates(tmp_path)
    tls = '[mqtt]\nbroker = "external"\n[mqtt.tls]\nenabled = true\n'
    load_config(write(tmp_path, MINIMAL + tls + f'ca = "{ca}"\ncert = "{cert}"\nkey = "{key}"\n'))
    refusals = {
        'ca = "missing.pem"': f"[mqtt.tls] cannot use ca {tmp_path / 'missing.pem'}: No such file or directory",
        f'ca = "{key}"': f"[mqtt.tls] cannot use ca {key}: not a PEM CA certificate",
        f'cert = "{cert}"': f"[mqtt.tls] cannot use cert {cert}: not a PEM certificate and private key (without key",
        f'cert = "{cert}"\nkey = "{ca}"': f"[mqtt.tls] cannot use cert {cert}, key {ca}: not a PEM certificate",
    }
    for line, message in refusals.items():
        with pytest.raises(ConfigError) as refused:
            load_config(write(tmp_path, MINIMAL + tls + line + "\n"))
        assert message in str(refused.value), line
