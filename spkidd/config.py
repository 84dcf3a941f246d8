"""config.toml -> typed, frozen settings, refused at start with a message naming the key and the file.

Every table goes through one generic function, `from_table`, that maps a TOML table onto a dataclass by its
field types. So a setting that another module adds to its own settings dataclass (the speech gate's
GateSettings, the decider's DecisionSettings) is configurable at once, with the same validation.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import pwd
import re
import socket
import ssl
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from spkidd.audio.ffmpeg import redact_url
from spkidd.audio.sources import stream_url_problem

if TYPE_CHECKING:
    from spkidd.pipeline import PipelineSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_SEARCH = (Path("config.toml"), Path("/etc/spkidd/config.toml"))
"""Where `spkidd run` looks when no --config is given: the working directory, then the system location."""

_ID_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
_SECRET_KEYS = frozenset({"password"})
"""Keys whose values never appear in a message, even when they have the wrong type."""


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the file and the key."""


def sanitize_id(text: str) -> str:
    """Topic levels and Home Assistant ids must not contain '/', '+', '#', spaces or dots."""
    cleaned = _ID_UNSAFE.sub("_", text.strip())
    return cleaned or "spkidd"


def default_instance() -> str:
    return sanitize_id(socket.gethostname().split(".")[0])


@dataclass(frozen=True)
class SourceConfig:
    """One audio source. `kind` selects which of device (mic), url (ffmpeg) or path (file) is used."""

    name: str
    kind: Literal["mic", "url", "file"]
    device: str | int | None = None
    url: str | None = None
    path: Path | None = None
    realtime: bool = True
    loop: bool = False

    def __post_init__(self) -> None:
        if sanitize_id(self.name) != self.name:
            raise ValueError(f"name {self.name!r} may only contain letters, digits, '_' and '-'")
        if self.kind == "url" and not self.url:
            raise ValueError("kind = 'url' needs url")
        if self.kind == "url" and (problem := stream_url_problem(str(self.url))) is not None:
            raise ValueError(f"url {redact_url(str(self.url))!r} {problem}")
        if self.kind == "file" and self.path is None:
            raise ValueError("kind = 'file' needs path")


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the broker; `ca` None means the system's trust store."""

    enabled: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False


def check_port(port: int, *, any_free: bool = False) -> None:
    """A TCP port a listener or client can use; `any_free`: 0 asks the system for a free one (the web page)."""
    if not (0 if any_free else 1) <= port <= 65535:
        raise ValueError(f"port {port} out of range")


@dataclass(frozen=True)
class MqttConfig:
    """`broker = "embedded"` starts the embedded broker and connects to it; `"external"` uses host/port."""

    broker: Literal["embedded", "external"] = "embedded"
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None
    password_env: str | None = None
    tls: TlsConfig = TlsConfig()
    client_id: str | None = None
    keepalive: int = 30
    topic_prefix: str = "spkidd"
    discovery_prefix: str = "homeassistant"
    queue_size: int = 1000
    clear_after_s: float = 60.0
    stats_interval_s: float = 60.0
    rediscovery_max_delay_s: float = 5.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    publish_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_port(self.port)
        if self.queue_size < 1 or self.keepalive < 1:
            raise ValueError("queue_size and keepalive must be positive")
        if self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        for name in ("topic_prefix", "discovery_prefix"):
            value = getattr(self, name)
            if not value or any(c in value for c in "#+") or value.startswith("/") or value.endswith("/"):
                raise ValueError(f"{name} {value!r} is not a valid topic prefix")


@dataclass(frozen=True)
class EmbeddedBrokerConfig:
    """`implementation = "auto"` runs a private mosquitto when the binary is installed, else amqtt."""

    host: str = "127.0.0.1"
    port: int = 1883
    implementation: Literal["auto", "mosquitto", "amqtt"] = "auto"

    def __post_init__(self) -> None:
        check_port(self.port)


@dataclass(frozen=True)
class HealthConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9808

    def __post_init__(self) -> None:
        check_port(self.port)


@dataclass(frozen=True)
class WebConfig:
    """The household's page (live view, voices, unknown clips, enrollment) plus /healthz and /metrics.
    Changing the voices needs `token` (or `token_file`) when the page listens beyond loopback. `tls_cert` (and
    `tls_key` unless the certificate file holds the key) serve it over https: browsers give a page the microphone
    only there or on loopback, and the token then does not cross the network in plain text."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8730
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    public_url: str | None = None
    """The page's address as other devices open it (a page on 0.0.0.0 cannot know its own name): Home Assistant's
    device pages link to it."""
    max_upload_mb: float = 20.0
    max_connections: int = 128

    def __post_init__(self) -> None:
        check_port(self.port, any_free=True)
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key needs tls_cert")
        if self.public_url is not None and not re.match(r"https?://[^/\s]+", self.public_url):
            raise ValueError(f"public_url must be an http:// or https:// address, not {self.public_url!r}")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty")
        if self.max_upload_mb <= 0 or self.max_connections < 1:
            raise ValueError("max_upload_mb and max_connections must be positive")

    @property
    def loopback_only(self) -> bool:
        """True when only this machine can reach the page."""
        return is_loopback(self.host)

    @property
    def page_url(self) -> str | None:
        """Where other devices open the page: `public_url`, else the address it listens on when that is one
        machine's own (not loopback, which is every device's own, nor 0.0.0.0); None when the page is off."""
        if not self.enabled:
            return None
        if self.public_url is not None:
            return self.public_url
        if self.loopback_only or self.host in ("", "0.0.0.0", "::") or self.port == 0:
            return None
        return self.listen_url(self.port)

    def listen_url(self, port: int) -> str:
        """The page's address on the host it listens on."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls_cert is not None else 'http'}://{host}:{port}/"

    def tls_context(self) -> ssl.SSLContext | None:
        """The server's TLS context, None without `tls_cert`; OSError or ssl.SSLError for files it cannot use."""
        if self.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@dataclass(frozen=True)
class DaemonConfig:
    path: Path
    instance: str
    model: Path
    sources: tuple[SourceConfig, ...]
    pipeline: PipelineSettings
    mqtt: MqttConfig
    embedded_broker: EmbeddedBrokerConfig
    health: HealthConfig
    web: WebConfig
    logging: LoggingConfig


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a table"
    if tp is Path:
        return "a path string"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, file: Path) -> Any:
    """Checks one TOML value against a field type and converts it (path strings to Path, lists to tuples)."""

    def refuse() -> ConfigError:
        shown = "(value not shown)" if key.rsplit(".", 1)[-1] in _SECRET_KEYS else repr(value)
        return ConfigError(f"{file}: {key}: expected {_type_name(tp)}, got {type(value).__name__} {shown}")

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, file)
            except ConfigError:
                continue
        raise refuse()
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise refuse()
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise refuse()
        return from_table(typing.cast(type, tp), value, file=file, where=key)
    if origin in (list, tuple, dict):
        if not isinstance(value, dict if origin is dict else list):
            raise refuse()
        return _convert_items(value, origin, args, key, file)
    if tp not in (bool, int, float, str, Path):
        raise ConfigError(f"{file}: {key}: field type {tp!r} cannot be read from TOML")
    if not _is_scalar(value, tp):
        raise refuse()
    return float(value) if tp is float else Path(value) if tp is Path else value


def _convert_items(value: list[Any] | dict[str, Any], origin: Any, args: tuple[Any, ...], key: str, file: Path) -> Any:
    """A TOML array as a list or tuple, or a table as a dict, each item converted to the field's item type."""
    if isinstance(value, dict):
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, value_type, f"{key}.{k}", file) for k, v in value.items()}
    item_type = args[0] if args else Any
    items = [_convert(v, item_type, f"{key}[{i}]", file) for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _is_scalar(value: Any, tp: type) -> bool:
    """Whether a TOML value can stand for a field of scalar type `tp` (a bool is no number; a path is not empty)."""
    if tp is bool:
        return isinstance(value, bool)
    if tp in (int, float):
        return isinstance(value, int | float if tp is float else int) and not isinstance(value, bool)
    return isinstance(value, str) and (tp is str or bool(value))


def from_table(cls: type[T], table: dict[str, Any], *, file: Path, where: str) -> T:
    """Builds dataclass `cls` from a TOML table: unknown keys, wrong types and missing required values are
    refused with a ConfigError naming `file` and the key (`where` is the table's dotted name)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"[{where}] " if where else ""
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(f"{file}: {prefix}unknown key {unknown[0]!r} (known keys: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in table:
            kwargs[name] = _convert(table[name], hints[name], key, file)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{file}: {prefix}missing required key {name!r}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{file}: {prefix or where + ' '}{exc}") from exc


@dataclass(frozen=True)
class _TopLevel:
    """The file's shape: top-level keys and tables. Sub-tables stay raw here and are parsed one by one."""

    model: Path
    instance: str | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    vad: dict[str, Any] = field(default_factory=dict)
    decision: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)
    unknown_clips: dict[str, Any] = field(default_factory=dict)
    mqtt: dict[str, Any] = field(default_factory=dict)
    embedded_broker: dict[str, Any] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)
    web: dict[str, Any] = field(default_factory=dict)
    logging: dict[str, Any] = field(default_factory=dict)


def find_config(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    for candidate in DEFAULT_SEARCH:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no configuration file: give --config PATH or create one of {[str(p) for p in DEFAULT_SEARCH]}")


def _resolve(base: Path, path: Path | None) -> Path | None:
    """Relative paths in the file are relative to the file, so the daemon does not depend on its cwd."""
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() else base / path


def _resolve_password(mqtt: MqttConfig, file: Path, mode: int) -> MqttConfig:
    """Reads password_file or password_env into `password` (hidden from repr), so every reload re-reads them."""
    if sum(x is not None for x in (mqtt.password, mqtt.password_file, mqtt.password_env)) > 1:
        raise ConfigError(f"{file}: [mqtt] give only one of password, password_file, password_env")
    if mqtt.password is not None and mode & stat.S_IROTH:
        log.warning("%s holds an MQTT password and is readable by everyone; chmod o-r it", file)
    if mqtt.password_file is not None:
        return dataclasses.replace(mqtt, password=_read_password_file(mqtt.password_file, file))
    if mqtt.password_env is not None:
        secret_env = os.environ.get(mqtt.password_env)
        if secret_env is None:
            raise ConfigError(f"{file}: [mqtt] password_env: environment variable {mqtt.password_env} is not set")
        return dataclasses.replace(mqtt, password=secret_env)
    return mqtt


def _read_password_file(path: Path, file: Path) -> str:
    """The file's first line: what follows (a note, a second line an editor added) is no part of the password. An
    unreadable file names the user spkidd runs as, since the service's user is not the one who wrote the file."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(
            f"{file}: [mqtt] password_file: user {_user_name()} cannot read {path}: {exc.strerror}"
        ) from exc
    if not lines or not lines[0].strip():
        raise ConfigError(f"{file}: [mqtt] password_file: the first line of {path} is empty")
    return lines[0].strip()


def _user_name() -> str:
    """Who spkidd runs as; a container's user may have no name (no line in /etc/passwd)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"with uid {uid}"


def _check_broker_tls(tls: TlsConfig, file: Path) -> None:
    """A CA, certificate or key that cannot be used stops the start (or a reload) with the file named, instead of a
    reconnect loop that logs "[Errno 2] No such file or directory" for ever."""
    if not tls.enabled:
        return
    try:
        context = ssl.create_default_context(cafile=tls.ca)
    except OSError as exc:  # ssl.SSLError is one
        reason = "not a PEM CA certificate" if isinstance(exc, ssl.SSLError) else exc.strerror
        raise ConfigError(f"{file}: [mqtt.tls] cannot use ca {tls.ca}: {reason}") from exc
    if tls.cert is None:
        return
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except OSError as exc:
        files = f"cert {tls.cert}" + (f", key {tls.key}" if tls.key else "")
        raise ConfigError(f"{file}: [mqtt.tls] cannot use {files}: {_tls_reason(exc, 'key')}") from exc


def is_loopback(host: str) -> bool:
    """A name or address only this machine reaches (browsers resolve localhost and *.localhost to loopback)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_plaintext_password(mqtt: MqttConfig, file: Path) -> None:
    """A password sent to another host without TLS can be read by anyone on the network path."""
    if mqtt.broker == "external" and mqtt.password and not mqtt.tls.enabled and not is_loopback(mqtt.host):
        log.warning(
            "%s: [mqtt] the password goes to %s in plain text; enable [mqtt.tls] (and the broker's TLS listener)",
            file,
            mqtt.host,
        )


def _web_settings(top: _TopLevel, file: Path, mode: int) -> WebConfig:
    """[web], with `token_file` read into `token` (hidden from repr) so every reload re-reads it."""
    web = from_table(WebConfig, top.web, file=file, where="web")
    if web.token is not None and web.token_file is not None:
        raise ConfigError(f"{file}: [web] give only one of token, token_file")
    if web.token is not None and mode & stat.S_IROTH:
        log.warning("%s holds the web page's token and is readable by everyone; chmod o-r it", file)
    base = file.resolve().parent
    token_file = _resolve(base, web.token_file)
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{file}: [web] token_file: cannot read {token_file}: {exc.strerror}") from exc
        if not token:
            raise ConfigError(f"{file}: [web] token_file: {token_file} is empty")
        web = dataclasses.replace(web, token=token, token_file=token_file)
    web = dataclasses.replace(web, tls_cert=_resolve(base, web.tls_cert), tls_key=_resolve(base, web.tls_key))
    try:
        if web.enabled:
            web.tls_context()
    except OSError as exc:  # ssl.SSLError is one
        files = f"tls_cert {web.tls_cert}" + (f", tls_key {web.tls_key}" if web.tls_key else "")
        raise ConfigError(f"{file}: [web] cannot use {files}: {_tls_reason(exc, 'tls_key')}") from exc
    _warn_open_page(web, file)
    return web


def _tls_reason(exc: OSError, key_setting: str) -> str:
    """OpenSSL's reason in words a user can act on (its own say "[SSL] PEM lib (_ssl.c:3900)"); `key_setting` names
    the key file's setting in the table at hand."""
    if isinstance(exc, ssl.SSLError):
        if "KEY_VALUES_MISMATCH" in str(exc):
            return "the key does not belong to the certificate"
        return (
            f"not a PEM certificate and private key (without {key_setting} the certificate file must hold the key too)"
        )
    return exc.strerror or str(exc)


def _warn_open_page(web: WebConfig, file: Path) -> None:
    """A page beyond loopback is read-only without a token, and sends the token in plain text without TLS."""
    if not web.enabled or web.loopback_only:
        return
    if web.token is None:
        log.warning(
            "%s: [web] listens on %s without a token: the page is read-only (set token or token_file to enroll, "
            "forget or rename from it)",
            file,
            web.host,
        )
    elif web.tls_cert is None:
        log.warning(
            "%s: [web] listens on %s without tls_cert: the page's password crosses the network in plain text, and "
            "browsers on other devices give it no microphone (recording files can still be uploaded)",
            file,
            web.host,
        )


def _pipeline_settings(top: _TopLevel, file: Path) -> PipelineSettings:
    """[vad] -> the gate's settings; [decision] is checked against the decider's settings, but only the keys
    given are kept, as overrides of the thresholds calibrated into the model file; [unknown_clips] where the
    audio of unknown voices is kept; [pipeline] the rest."""
    from spkidd.decide import DecisionSettings
    from spkidd.pipeline import PipelineSettings
    from spkidd.unknown_clips import UnknownClipSettings
    from spkidd.vad import GateSettings

    for key, table in (("gate", "vad"), ("decision", "decision"), ("unknown_clips", "unknown_clips")):
        if key in top.pipeline:
            raise ConfigError(f"{file}: [pipeline] unknown key {key!r} (use the [{table}] table)")
    gate = from_table(GateSettings, top.vad, file=file, where="vad")
    checked = from_table(DecisionSettings, top.decision, file=file, where="decision")
    overrides = {key: float(getattr(checked, key)) for key in top.decision}
    clips = from_table(UnknownClipSettings, top.unknown_clips, file=file, where="unknown_clips")
    clips = dataclasses.replace(clips, folder=_resolve(file.resolve().parent, clips.folder))
    rest = from_table(PipelineSettings, top.pipeline, file=file, where="pipeline")
    return dataclasses.replace(rest, gate=gate, decision=overrides, unknown_clips=clips)


def _sources(top: _TopLevel, path: Path, base: Path) -> list[SourceConfig]:
    """At least one source, each named once, file paths relative to the config file's folder."""
    sources = []
    for i, table in enumerate(top.sources):
        source = from_table(SourceConfig, table, file=path, where=f"sources[{i}]")
        sources.append(dataclasses.replace(source, path=_resolve(base, source.path)))
    if not sources:
        raise ConfigError(f"{path}: no [[sources]]: configure at least one audio source")
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: [[sources]] name {duplicates[0]!r} is used more than once")
    return sources


def _mqtt_settings(top: _TopLevel, path: Path, base: Path, mode: int) -> MqttConfig:
    """File paths relative to the config file's folder, and the password read (and warned about) as configured."""
    mqtt = from_table(MqttConfig, top.mqtt, file=path, where="mqtt")
    tls = mqtt.tls
    mqtt = dataclasses.replace(
        mqtt,
        password_file=_resolve(base, mqtt.password_file),
        tls=dataclasses.replace(
            tls, ca=_resolve(base, tls.ca), cert=_resolve(base, tls.cert), key=_resolve(base, tls.key)
        ),
    )
    mqtt = _resolve_password(mqtt, path, mode)
    _check_broker_tls(mqtt.tls, path)
    _warn_plaintext_password(mqtt, path)
    return mqtt


def load_config(path: Path) -> DaemonConfig:
    """Reads and validates the whole file; raises ConfigError with the file and key on any problem."""
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(raw_bytes.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    top = from_table(_TopLevel, raw, file=path, where="")
    base = path.resolve().parent
    sources = _sources(top, path, base)
    mqtt = _mqtt_settings(top, path, base, mode)
    instance = sanitize_id(top.instance) if top.instance else default_instance()
    model = _resolve(base, top.model)
    assert model is not None
    return DaemonConfig(
        path=path,
        instance=instance,
        model=model,
        sources=tuple(sources),
        pipeline=_pipeline_settings(top, path),
        mqtt=mqtt,
        embedded_broker=from_table(EmbeddedBrokerConfig, top.embedded_broker, file=path, where="embedded_broker"),
        health=from_table(HealthConfig, top.health, file=path, where="health"),
        web=_web_settings(top, path, mode),
        logging=from_table(LoggingConfig, top.logging, file=path, where="logging"),
    )
