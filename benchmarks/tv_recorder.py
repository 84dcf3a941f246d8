"""Home Assistant's recorder under a TV: how much its database grows per hour of TV, with its defaults and with the
`recorder: exclude:` of docs/mqtt-and-home-assistant.md.

    nice -n 10 python benchmarks/tv_recorder.py [--out benchmarks/out]      (after benchmarks/tv_room.py)

For each household benchmarks/tv_room.py trained (its models and TV recordings in OUT/tv_room), twice: a real Home
Assistant 2024.1.6 (.hass-venv, scripts/install-hass.sh) with the MQTT integration and the recorder (SQLite, its
defaults, or the docs' YAML block), Mosquitto on 127.0.0.1, and `spkidd run` replaying the TV unpaced as instance
`livingroom`, source `kitchen` (the names in the docs' YAML), after a second of silence through the same daemon has
had Home Assistant make its entities. Once the TV has ended the daemon is stopped (its `offline` comes after every
other message); once Home Assistant has shown it offline, Home Assistant stops and the database is measured against
a copy taken before the TV, both vacuumed: bytes, and rows of the `states` table by entity, per hour of TV. Replayed
unpaced, the TV's quarter of an hour takes seconds, so statistics compiled every 5 minutes (the confidence sensor's)
are not in these figures. Writes OUT/tv_room/recorder.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sqlite3
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test helpers: Home Assistant, Mosquitto and the daemon as processes

from spkidd import SAMPLE_RATE  # noqa: E402
from tests.support import hass as ha  # noqa: E402
from tests.support.daemon import DaemonProcess, file_source, write_config  # noqa: E402
from tests.support.mosquitto import running_mosquitto  # noqa: E402
from tests.support.polling import until  # noqa: E402

DOCS = REPO / "docs" / "mqtt-and-home-assistant.md"
NODE, SOURCE = "livingroom", "kitchen"
HOUSEHOLDS = {"a FSDD six": ("a", "tv_8k.wav"), "b LibriSpeech six": ("b", "tv.wav")}
"""tv_room.py's households: the folder of each model, and the recording of the TV it hears."""
SPEAKER = f"sensor.spkidd_{NODE}_{SOURCE}_current_speaker"
STATUS = f"binary_sensor.spkidd_{NODE}_status"


@dataclass
class Growth:
    """The database's growth per hour of TV under one recorder configuration."""

    household: str
    recorder: str
    tv_minutes: float
    mb_per_h: float
    rows_per_h: dict[str, float]


def docs_recorder() -> str:
    """The YAML block of the docs' recorder section, as a user adds it to configuration.yaml."""
    text = DOCS.read_text()
    match = re.search(r"```yaml\n(.*?)```", text[text.index("## Home Assistant's recorder") :], re.DOTALL)
    if match is None:
        raise SystemExit(f"{DOCS}: no YAML block in the recorder section")
    return match.group(1)


def vacuumed_size(database: Path, work: Path, name: str) -> int:
    """Bytes of a vacuumed copy (SQLite's backup API, safe while Home Assistant writes), so free pages the
    recorder has not reused yet do not count."""
    copy = work / f"{name}.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    with sqlite3.connect(copy) as db:
        db.execute("VACUUM")
    return copy.stat().st_size


def spkidd_rows(database: Path) -> dict[str, int]:
    """Rows of the `states` table by entity id, spkidd's entities only."""
    query = (
        "SELECT m.entity_id, COUNT(*) FROM states s JOIN states_meta m USING (metadata_id) "
        "WHERE m.entity_id LIKE '%spkidd%' GROUP BY 1 ORDER BY 1"
    )
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return {entity_id: rows for entity_id, rows in db.execute(query)}


def _on_then_off(states: list[str | None]) -> bool:
    return "on" in states and "off" in states[states.index("on") :]


async def _run_daemon(config: Path, log: Path) -> None:
    """`spkidd run` until its file source's audio has ended, then stopped gracefully: every event is published
    before the daemon's `offline`."""
    daemon = DaemonProcess(config, log)
    try:
        await asyncio.to_thread(daemon.wait_log, lambda text: "audio ended" in text, 1800.0)
    finally:
        daemon.signal(signal.SIGTERM)
        await asyncio.to_thread(daemon.wait, 60)


async def _introduce(hass: ha.HomeAssistant, config: Path, log: Path) -> None:
    """The daemon's discovery, until Home Assistant has made the source's entities."""
    await _run_daemon(config, log)

    async def made() -> bool:
        return SPEAKER in await hass.states()

    await until(made, "spkidd's entities in Home Assistant", timeout_s=120, every_s=0.5)


async def _replay(hass: ha.HomeAssistant, config: Path, log: Path) -> None:
    """A recording through the daemon, until Home Assistant has shown the daemon online and then offline."""
    async with ha.StateRecorder(hass) as seen:
        await _run_daemon(config, log)

        def done() -> bool:
            return _on_then_off([c.new for c in seen.changes if c.entity_id == STATUS])

        await until(done, "the daemon online then offline in Home Assistant", timeout_s=300, every_s=1.0)


async def measure(model: Path, tv: Path, recorder: str, work: Path) -> tuple[int, int, dict[str, int]]:
    """Vacuumed bytes of the database before the TV and after Home Assistant stopped, and spkidd's rows. A second
    of silence goes first, so that Home Assistant has made spkidd's entities before the TV's first message."""
    silence = work / "silence.wav"
    sf.write(silence, np.zeros(SAMPLE_RATE, np.int16), SAMPLE_RATE, subtype="PCM_16")
    with running_mosquitto(work) as broker:
        hass = ha.HomeAssistant(work / "homeassistant", recorder)
        database = hass.directory / "home-assistant_v2.db"
        mqtt = f'broker = "external"\nhost = "127.0.0.1"\nport = {broker.port}\n'

        def config(name: str, recording: Path) -> Path:
            source = file_source(recording.resolve(), SOURCE, realtime=False, loop=False)
            return write_config(work / f"{name}.toml", model.resolve(), source, mqtt, instance=NODE)

        hass.start()
        try:
            await hass.onboard()
            await hass.add_mqtt(broker.port)
            await _introduce(hass, config("silence", silence), work / "silence.log")
            before = vacuumed_size(database, work, "before")
            await _replay(hass, config("tv", tv), work / "tv.log")
        finally:
            hass.stop()
    return before, vacuumed_size(database, work, "after"), spkidd_rows(database)


def growth(household: str, folder: Path, tv_name: str, recorder: str, label: str) -> Growth:
    hours = sf.info(folder.parent / tv_name).duration / 3600
    with tempfile.TemporaryDirectory(prefix="spkidd-recorder-") as tmp:
        before, after, rows = asyncio.run(
            measure(folder / "household.safetensors", folder.parent / tv_name, recorder, Path(tmp))
        )
    return Growth(
        household=household,
        recorder=label,
        tv_minutes=round(hours * 60, 2),
        mb_per_h=round((after - before) / hours / 1e6, 2),
        rows_per_h={entity: round(n / hours, 1) for entity, n in rows.items()},
    )


def print_table(results: list[Growth]) -> None:
    for r in results:
        print(f"{r.household}, recorder {r.recorder}: {r.mb_per_h:.2f} MB per hour of TV")
        for entity, rows in r.rows_per_h.items():
            print(f"  {entity:60s} {rows:6.0f} rows / h")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = parser.parse_args()
    if not ha.installed():
        sys.exit(f"Home Assistant is not installed in {ha.HASS_VENV}: run bash scripts/install-hass.sh")
    work: Path = args.out / "tv_room"
    recorders = {"defaults": "recorder:\n", "docs' exclude": docs_recorder()}
    results = []
    for household, (folder, tv_name) in HOUSEHOLDS.items():
        if not (work / folder / "household.safetensors").is_file():
            sys.exit(f"no model in {work / folder}: run benchmarks/tv_room.py first")
        for label, recorder in recorders.items():
            print(f"{household}: recorder {label}", flush=True)
            results.append(growth(household, work / folder, tv_name, recorder, label))
    print_table(results)
    (work / "recorder.json").write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")


if __name__ == "__main__":
    main()
