"""A publisher in its own process, for the last-will test: prints ONLINE once connected, then idles until
killed. Usage: python -m tests.support.publisher_child PORT NODE"""

from __future__ import annotations

import asyncio
import sys

from spkidd.mqtt import MqttPublisher
from tests.support.mqtt_events import mqtt_settings


async def main(port: int, node: str) -> None:
    publisher = MqttPublisher(mqtt_settings(port), node, ["kitchen"], ["alice"])
    publisher.start()
    while not publisher.stats.connected:
        await asyncio.sleep(0.02)
    print("ONLINE", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
