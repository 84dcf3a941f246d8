"""Test helpers: a real Mosquitto on a free 127.0.0.1 port as a child process, and an MQTT collector."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from tests.support.follower import Follower


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost, made with the openssl CLI."""
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = directory / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=spkidd test CA",
        "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2",
        "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return ca, cert, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, alive: Callable[[], bool], timeout: float = 10.0) -> None:
    """Until something listens on `port`, read from the kernel's socket tables instead of connecting: a server that
    takes one client only (ffmpeg -listen 1) would spend it on the probe. Gives up as soon as `alive()` is false."""
    deadline = time.monotonic() + timeout
    while not _listening(port):
        if not alive():
            raise RuntimeError(f"process died before listening on {port}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listening on {port}")
        time.sleep(0.02)


def _listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
                    return True
    return False


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signals the child's whole process group (it was started with start_new_session) and reaps it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)


class Mosquitto:
    """Debian's mosquitto in the foreground. `persistence` keeps sessions and queued QoS 1 messages across a
    stop/start on the same port (saved at SIGTERM), so a test subscriber misses nothing during an outage."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        persistence: bool = False,
        users: dict[str, str] | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """`tls`: (CA certificate, server certificate, server key) for a TLS-only listener."""
        self.directory = directory
        self.port = port or free_port()
        self.persistence = persistence
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "mosquitto.log"
        conf = [f"listener {self.port} 127.0.0.1", "log_dest stderr"]
        if tls is not None:
            conf += [f"cafile {tls[0]}", f"certfile {tls[1]}", f"keyfile {tls[2]}"]
        if os.geteuid() == 0:
            conf.append("user root")  # else it switches to user mosquitto, which cannot read the test's 0700 dirs
        if users:
            passwords = directory / "passwords"
            for i, (user, password) in enumerate(users.items()):
                create = ["-c"] if i == 0 else []
                subprocess.run(["mosquitto_passwd", *create, "-b", str(passwords), user, password], check=True)
            conf += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            conf.append("allow_anonymous true")
        if persistence:
            conf += ["persistence true", f"persistence_location {directory}/", "autosave_interval 3600"]
        else:
            conf.append("persistence false")
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf)], stderr=log, stdout=log, start_new_session=True
            )
        process = self.process
        wait_port(self.port, lambda: process.poll() is None)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            kill_group(self.process, sig)
            self.process = None


@contextlib.contextmanager
def running_mosquitto(
    directory: Path,
    persistence: bool = False,
    users: dict[str, str] | None = None,
    tls: tuple[Path, Path, Path] | None = None,
) -> Iterator[Mosquitto]:
    broker = Mosquitto(directory, persistence=persistence, users=users, tls=tls)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    mid: int = 0


class Collector(Follower):
    """Subscribes to `filters` and records every message; reconnects after a broker outage with a persistent
    session (fixed client id, clean_session False) so QoS 1 messages queued by the broker are not lost."""

    transient = (aiomqtt.MqttError,)

    def __init__(self, port: int, filters: list[str], client_id: str | None = None) -> None:
        super().__init__()
        self.port = port
        self.filters = filters
        self.client_id = client_id
        self.messages: list[Received] = []
        self.connects = 0
        self._new = asyncio.Event()

    async def _follow(self) -> None:
        async with aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=self.client_id,
            clean_session=False if self.client_id else None,
            keepalive=5,
        ) as client:
            self.connects += 1
            for f in self.filters:
                await client.subscribe(f, qos=1)
            self._subscribed.set()
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                self.messages.append(Received(m.topic.value, payload, bool(m.retain), int(m.qos), int(m.mid)))
                self._new.set()

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    async def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 20.0) -> None:
        async def loop() -> None:
            while not predicate(self.messages):
                self._new.clear()
                await self._new.wait()

        await asyncio.wait_for(loop(), timeout)


async def publish_once(port: int, topic: str, payload: bytes, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.publish(topic, payload, qos=1, retain=retain)
