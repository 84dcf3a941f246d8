"""What a running `spkidd run` keeps imported (T1 memory): the HTTP stack only when [health] or [web] is on, never
torch's symbolic-shape machinery. Checked inside a real daemon, after READY=1 and some audio."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HELD_OUT_SENTENCES
from tests.support.daemon import REPO, conversation, file_source, random_model, write_config
from tests.support.mosquitto import free_port

WATCHED = ("aiohttp", "prometheus_client", "spkidd.healthserver", "spkidd.web.server", "sympy", "torch._dynamo")

PROBE = """
import os, socket, sys, threading, time

def report_when_ready(sock):
    while b"READY=1" not in sock.recv(4096):
        pass
    time.sleep(3.0)  # some audio through the model
    print(sorted(m for m in {watched!r} if m in sys.modules), flush=True)
    os.kill(os.getpid(), 15)

sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind({notify!r})
os.environ["NOTIFY_SOCKET"] = {notify!r}
threading.Thread(target=report_when_ready, args=(sock,), daemon=True).start()
sys.argv = ["spkidd", "run", "--config", {config!r}]
from spkidd.cli import main
main()
"""


@pytest.mark.parametrize(
    ("extra", "imported"),
    [
        ("", []),
        ("[health]\nenabled = true\nport = {port}\n", ["aiohttp", "prometheus_client", "spkidd.healthserver"]),
        (
            "[web]\nenabled = true\nport = {port}\n",
            ["aiohttp", "prometheus_client", "spkidd.healthserver", "spkidd.web.server"],
        ),
    ],
    ids=["endpoints-off", "health", "web"],
)
def test_the_http_stack_is_imported_only_when_an_endpoint_is_on(
    tmp_path: Path, extra: str, imported: list[str]
) -> None:
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    wav = conversation(tmp_path, [("alice", HELD_OUT_SENTENCES[0])], lead_s=0.5)
    source = file_source(wav)
    mqtt = f'broker = "external"\nhost = "127.0.0.1"\nport = {free_port()}'
    config = write_config(tmp_path / "config.toml", model, source, mqtt, extra.format(port=free_port()))
    probe = PROBE.format(watched=WATCHED, notify=str(tmp_path / "notify.sock"), config=str(config))
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(imported)
