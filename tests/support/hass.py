"""Test helpers: a real Home Assistant 2024.1.6 (scripts/install-hass.sh puts it in .hass-venv) on a free
127.0.0.1 port, onboarded and given the MQTT integration over its REST API, and a websocket recorder of its
state changes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.daemon import REPO
from tests.support.follower import Follower
from tests.support.mosquitto import free_port, kill_group

HASS_VENV = REPO / ".hass-venv"
HASS = HASS_VENV / "bin" / "hass"
HASS_PYTHON = HASS_VENV / "bin" / "python"
CLIENT_ID = "http://127.0.0.1/"
SCHEMA_CHECK = Path(__file__).with_name("hass_schema_check.py")

CONFIGURATION = """\
homeassistant:
  name: spkidd test home
  latitude: 52.52
  longitude: 13.40
  elevation: 34
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: DE
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
config:
onboarding:
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: debug
"""


def installed() -> bool:
    return HASS.is_file()


def check_discovery_schemas(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each discovery config run through the installed Home Assistant's own MQTT discovery schema: what it
    refuses (`error`) and which keys it drops without a word (`dropped`), by topic."""
    proc = subprocess.run(
        [str(HASS_PYTHON), str(SCHEMA_CHECK)], input=json.dumps(configs), capture_output=True, text=True, check=True
    )
    result: dict[str, dict[str, Any]] = json.loads(proc.stdout)
    return result


def assert_discovery_accepted(configs: dict[str, dict[str, Any]]) -> None:
    """No config refused by Home Assistant's schemas, and no key dropped but the "Current speaker" sensor's
    `options` (2024.1's MQTT sensor has none; the speaker list also travels as its `speakers` attribute)."""
    assert installed(), f"Home Assistant is not installed in {HASS_VENV}: run bash scripts/install-hass.sh"
    for topic, verdict in check_discovery_schemas(configs).items():
        assert verdict["error"] is None, (topic, verdict)
        assert verdict["dropped"] == (["options"] if topic.endswith("_speaker/config") else []), (topic, verdict)


@dataclass(frozen=True)
class StateChange:
    entity_id: str
    old: str | None
    new: str | None
    attributes: dict[str, Any]


class HomeAssistant:
    """`hass -c DIR` as a child process in its own session. `yaml` is appended to the minimal configuration
    (automations, helpers); the configuration directory, hence onboarding and the MQTT entry, survives
    restarts."""

    def __init__(self, directory: Path, yaml: str = "") -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "home-assistant.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.token = ""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "configuration.yaml").write_text(CONFIGURATION.format(port=self.port) + yaml)

    def start(self, timeout: float = 180.0) -> None:
        with (self.directory / "hass.out").open("ab") as out:
            self.process = subprocess.Popen(
                [str(HASS), "-c", str(self.directory)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"hass exited with {self.process.returncode}; see {self.directory}/hass.out")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Home Assistant did not answer on {self.url} within {timeout:.0f} s")
            time.sleep(0.5)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/api/onboarding", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process is not None:
            kill_group(self.process, timeout=60)
            self.process = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None, form: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with aiohttp.ClientSession() as session:
            kwargs: dict[str, Any] = {"data": body} if form else {"json": body}
            async with session.request(method, f"{self.url}{path}", headers=headers, **kwargs) as response:
                text = await response.text()
                if response.status >= 400:
                    raise AssertionError(f"{method} {path}: HTTP {response.status}: {text}")
                return json.loads(text) if text else None

    async def onboard(self) -> None:
        """The first user over the onboarding API, then a long-lived token (the login token lasts 30 min)."""
        user = {"client_id": CLIENT_ID, "name": "Test", "username": "test", "password": "test-pass", "language": "en"}
        code = (await self._request("POST", "/api/onboarding/users", user))["auth_code"]
        grant = {"grant_type": "authorization_code", "code": code, "client_id": CLIENT_ID}
        self.token = (await self._request("POST", "/auth/token", grant, form=True))["access_token"]
        self.token = await self._websocket_command(
            {"type": "auth/long_lived_access_token", "client_name": "spkidd tests", "lifespan": 365}
        )

    async def _websocket_command(self, command: dict[str, Any]) -> Any:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{self.url}/api/websocket") as ws:
            await _authenticate(ws, self.token)
            await ws.send_json({"id": 1, **command})
            reply = await ws.receive_json()
            if not reply.get("success"):
                raise AssertionError(f"websocket {command['type']}: {reply}")
            return reply["result"]

    async def add_mqtt(self, broker_port: int) -> None:
        flow = await self._request("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        result = await self._request(
            "POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {"broker": "127.0.0.1", "port": broker_port}
        )
        assert result["type"] == "create_entry", result

    async def call_service(self, domain: str, service: str, data: dict[str, Any] | None = None) -> None:
        await self._request("POST", f"/api/services/{domain}/{service}", data or {})

    async def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in await self._request("GET", "/api/states")}

    async def wait_states(
        self, predicate: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 60.0
    ) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            states = await self.states()
            if predicate(states):
                return states
            if time.monotonic() > deadline:
                raise AssertionError(f"Home Assistant's states never matched; last: {json.dumps(states)[-3000:]}")
            await asyncio.sleep(0.3)

    async def device_registry(self) -> list[dict[str, Any]]:
        devices: list[dict[str, Any]] = await self._websocket_command({"type": "config/device_registry/list"})
        return devices

    async def entity_registry(self) -> list[dict[str, Any]]:
        entities: list[dict[str, Any]] = await self._websocket_command({"type": "config/entity_registry/list"})
        return entities


async def _authenticate(ws: aiohttp.ClientWebSocketResponse, token: str) -> None:
    hello = await ws.receive_json()
    assert hello["type"] == "auth_required", hello
    await ws.send_json({"type": "auth", "access_token": token})
    answer = await ws.receive_json()
    assert answer["type"] == "auth_ok", answer


class StateRecorder(Follower):
    """Every `state_changed` Home Assistant reports over its websocket, across Home Assistant restarts (it
    reconnects), so a test sees transitions too quick for polling."""

    transient = (aiohttp.ClientError, OSError, AssertionError, TypeError, ValueError)
    retry_s = 0.5
    subscribe_timeout_s = 30.0

    def __init__(self, hass: HomeAssistant) -> None:
        super().__init__()
        self.hass = hass
        self.changes: list[StateChange] = []

    async def _follow(self) -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{self.hass.url}/api/websocket") as ws:
            await _authenticate(ws, self.hass.token)
            await ws.send_json({"id": 1, "type": "subscribe_events", "event_type": "state_changed"})
            async for message in ws:
                data = json.loads(message.data)
                if data.get("type") == "result":
                    self._subscribed.set()
                elif data.get("type") == "event":
                    self._record(data["event"]["data"])

    def _record(self, data: dict[str, Any]) -> None:
        old, new = data.get("old_state"), data.get("new_state")
        self.changes.append(
            StateChange(
                entity_id=data["entity_id"],
                old=None if old is None else old["state"],
                new=None if new is None else new["state"],
                attributes={} if new is None else new["attributes"],
            )
        )

    async def resubscribed(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self._subscribed.wait(), timeout)
