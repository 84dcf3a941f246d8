"""MqttPublisher: the only place that talks to aiomqtt (2.x), so a later move to another client stays here.

Why it looks like this:
- The audio path never waits for the network: `handle()` only updates in-memory state and appends to a queue;
  one sender task publishes, one message at a time, so the broker sees events in the order they happened.
- aiomqtt does not reconnect, so `_run` loops with capped exponential backoff and jitter; the backoff starts
  again only after a connection has stayed up for a while, so a broker that accepts and then drops us (another
  client with our client id) is not hammered. After every connect:
  discovery, the retained state of every topic (the broker may have lost it), `online`, then the events held
  during the outage, in order. An event leaves the queue only once its QoS 1 publish was acknowledged.
- While connected every state change is sent in order. Across an outage retained topics are coalesced (the
  latest value wins), so a reconnect replays one state per topic, not a history of flip-flops. Events are
  bounded by `queue_size`; what the bound drops is counted and logged.
- A removed source's entities are removed from Home Assistant first; its retained topics are emptied only a while
  later, so no empty payload reaches templates of entities Home Assistant has not let go of yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt

from spkidd.config import MqttConfig
from spkidd.events import Identification, SourceStatus, SpeechActivity
from spkidd.mqtt.payloads import (
    OFFLINE,
    ONLINE,
    SpeakerState,
    Topics,
    discovery_messages,
    encode,
    event_payload,
    none_state,
    speaking_payload,
    state_from_identification,
    state_payload,
    stats_payload,
    status_payload,
)
from spkidd.mqtt.refusals import refusal_sentence

log = logging.getLogger(__name__)

Event = Identification | SpeechActivity | SourceStatus
StatsProvider = Callable[[], dict[str, dict[str, Any]]]
_DROP_LOG_INTERVAL_S = 10.0
_STABLE_S = 30.0
"""A connection that stayed up this long was healthy: the next loss starts the backoff from the beginning."""
_CLEAR_AFTER_REMOVAL_S = 2.0
"""How long a removed source's retained topics wait to be emptied after its entities' removal was acknowledged:
Home Assistant removes an entity in a task of its own, so an empty state sent at once still reaches the entity's
templates (`'value_json' is undefined`, `Erroneous JSON`). It takes milliseconds; this leaves a wide margin."""


@dataclass
class PublisherStats:
    connected: bool = False
    published: int = 0
    events_dropped: int = 0
    reconnects: int = 0
    connects: int = 0

    def to_dict(self, queued: int) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "published": self.published,
            "events_dropped": self.events_dropped,
            "reconnects": self.reconnects,
            "queued": queued,
        }


@dataclass(frozen=True)
class _Item:
    """A queued message: a retained state change or an event."""

    topic: str
    payload: bytes
    retain: bool


class MqttPublisher:
    """Publishes a daemon's events per the MQTT contract. `handle()` must be called on the event loop thread."""

    def __init__(
        self,
        settings: MqttConfig,
        node: str,
        sources: Sequence[str],
        speakers: Sequence[str],
        stats_provider: StatsProvider | None = None,
        page_url: str | None = None,
    ) -> None:
        self.settings = settings
        self.page_url = page_url
        self.topics = Topics(settings.topic_prefix, node, settings.discovery_prefix)
        self.stats = PublisherStats()
        self._sources = list(sources)
        self._speakers = list(speakers)
        self._stats_provider = stats_provider
        self._started = time.monotonic()
        self._retained: dict[str, bytes] = {}
        self._cleared: set[str] = set()
        """Retained topics of removed sources, deleted on the broker once their entities have been removed."""
        self._clear_due = 0.0
        """When `_cleared` may be sent: _CLEAR_AFTER_REMOVAL_S after the last entity removal was published."""
        self._session_open = False
        self._queue_retained = False
        self._queue: deque[_Item] = deque()
        self._events_queued = 0
        self._states: dict[str, SpeakerState] = {}
        self._clear_timers: dict[str, asyncio.TimerHandle] = {}
        self._announced: set[str] = set()
        self._discovery_pending = True
        self._rediscovery: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log = 0.0
        self._short_sessions = 0
        """Connections in a row that the broker dropped within _STABLE_S, with no refused connect in between."""
        for source in self._sources:
            self._init_source(source)

    # ----- the non-blocking side, called from pipelines -------------------------------------------------------

    def handle(self, event: Event) -> None:
        """The `emit` callback for pipelines: never blocks, never raises on network trouble."""
        if isinstance(event, Identification):
            self._on_identification(event)
        elif isinstance(event, SpeechActivity):
            self._on_activity(event)
        else:
            self._set_retained(self.topics.source_status(event.source), status_payload(event.online))

    def set_speakers(self, speakers: Sequence[str]) -> None:
        """Enrolled speakers changed (a reload, the web page): the enum options are republished, then every source's
        state with the new list in it (what Home Assistant's `speakers` attribute shows)."""
        if list(speakers) != self._speakers:
            self._speakers = list(speakers)
            self.request_discovery()
            for state in list(self._states.values()):
                self._set_state(state)

    def set_sources(self, sources: Sequence[str]) -> None:
        """The configured sources changed: new ones are announced, removed ones deleted from Home Assistant."""
        if list(sources) == self._sources:
            return
        for source in sources:
            if source not in self._sources:
                self._init_source(source)
        for source in self._sources:
            if source not in sources:
                timer = self._clear_timers.pop(source, None)
                if timer is not None:
                    timer.cancel()
                self._states.pop(source, None)
                topics = self.topics
                for topic in (topics.source_status(source), topics.speaking(source), topics.speaker(source)):
                    self._clear_retained(topic)
        self._sources = list(sources)
        self.request_discovery()

    def request_discovery(self) -> None:
        self._discovery_pending = True
        self._wake.set()

    @property
    def queued(self) -> int:
        return self._events_queued

    def stats_dict(self) -> dict[str, Any]:
        return self.stats.to_dict(self._events_queued)

    def _init_source(self, source: str) -> None:
        self._set_retained(self.topics.source_status(source), OFFLINE)
        self._set_retained(self.topics.speaking(source), speaking_payload(False))
        self._set_state(none_state(source))

    def _on_identification(self, event: Identification) -> None:
        self._enqueue_event(self.topics.event(event.source), encode(event_payload(event)))
        state = state_from_identification(event)
        current = self._states.get(event.source)
        if current is None or current.decision != state.decision:
            self._set_state(state)

    def _on_activity(self, event: SpeechActivity) -> None:
        self._set_retained(self.topics.speaking(event.source), speaking_payload(event.speaking))
        timer = self._clear_timers.pop(event.source, None)
        if timer is not None:
            timer.cancel()
        if not event.speaking and event.source in self._states:
            self._clear_timers[event.source] = asyncio.get_running_loop().call_later(
                self.settings.clear_after_s, self._clear, event.source
            )

    def _clear(self, source: str) -> None:
        """No speech for clear_after_s: the current speaker becomes `none`."""
        self._clear_timers.pop(source, None)
        current = self._states.get(source)
        if current is not None and current.state != "none":
            self._set_state(none_state(source, current.utterance_id))

    def _set_state(self, state: SpeakerState) -> None:
        self._states[state.source] = state
        self._set_retained(self.topics.speaker(state.source), encode(state_payload(state, self._speakers)))

    def _set_retained(self, topic: str, payload: bytes) -> None:
        """Remembers the latest value for the next (re)connect, and queues the change itself while connected
        (while disconnected the remembered value is enough)."""
        self._retained[topic] = payload
        self._cleared.discard(topic)
        if self._queue_retained:
            self._queue.append(_Item(topic, payload, retain=True))
            self._wake.set()

    def _clear_retained(self, topic: str) -> None:
        """Deletes a retained topic on the broker (an empty payload) and forgets it, so no reconnect resends it."""
        self._retained.pop(topic, None)
        self._queue = deque(item for item in self._queue if item.topic != topic)
        self._cleared.add(topic)
        self._wake.set()

    def _enqueue_event(self, topic: str, payload: bytes) -> None:
        if self._events_queued >= self.settings.queue_size:
            self._drop_oldest_event()
        self._queue.append(_Item(topic, payload, retain=False))
        self._events_queued += 1
        self._wake.set()

    def _drop_oldest_event(self) -> None:
        for item in self._queue:
            if not item.retain:
                self._queue.remove(item)
                self._events_queued -= 1
                self.stats.events_dropped += 1
                break
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL_S or self.stats.events_dropped == 1:
            self._last_drop_log = now
            log.warning(
                "MQTT queue full (%d events): dropping the oldest; %d dropped so far",
                self.settings.queue_size,
                self.stats.events_dropped,
            )

    # ----- the connection side ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt-publisher")

    async def close(self, timeout: float = 10.0) -> None:
        """Sends what is queued, then `offline`, then disconnects; gives up after `timeout` seconds and says how
        many events were lost. Without a connection and with no event queued there is nothing to wait for."""
        self._closing = True
        self._wake.set()
        for timer in self._clear_timers.values():
            timer.cancel()
        self._clear_timers.clear()
        if self._rediscovery is not None:
            self._rediscovery.cancel()
        if self._task is None:
            return
        try:
            if self._session_open or self._events_queued:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._task)
        except TimeoutError:
            pass
        if self._task.done():
            return
        if self._events_queued:
            log.error("MQTT: broker unreachable; %d queued events lost at shutdown", self._events_queued)
        else:
            log.warning("MQTT: not connected at shutdown; no events lost")
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        tls_params = None
        if s.tls.enabled:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=str(s.tls.ca) if s.tls.ca else None,
                certfile=str(s.tls.cert) if s.tls.cert else None,
                keyfile=str(s.tls.key) if s.tls.key else None,
            )
        return aiomqtt.Client(
            s.host,
            s.port,
            identifier=s.client_id or f"spkidd-{self.topics.node}",
            username=s.username,
            password=s.password,
            will=aiomqtt.Will(self.topics.status, OFFLINE, qos=1, retain=True),
            keepalive=s.keepalive,
            timeout=s.publish_timeout_s,
            tls_params=tls_params,
            tls_insecure=s.tls.insecure if s.tls.enabled else None,
            clean_session=True,
        )

    async def _run(self) -> None:
        attempt = 0
        s = self.settings
        while True:
            connected_at: float | None = None
            try:
                async with self._client() as client:
                    self._session_open = True
                    connected_at = time.monotonic()
                    self.stats.connects += 1
                    if self.stats.connects > 1:
                        self.stats.reconnects += 1
                    log.info("MQTT: connected to %s:%d", s.host, s.port)
                    await self._session(client)
                    return
            except aiomqtt.MqttError as exc:
                sentence = refusal_sentence(exc, s)
                if sentence is None:
                    log.warning("MQTT: connection to %s:%d lost or refused: %s", s.host, s.port, exc)
                else:
                    log.warning("MQTT: %s", sentence)
            except Exception:
                log.exception("MQTT: unexpected failure; reconnecting")
            finally:
                self._session_open = False
                self.stats.connected = False
                self._queue_retained = False
            attempt = self._next_attempt(attempt, connected_at)
            delay = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.info("MQTT: reconnecting in %.1f s (%d events queued)", delay, self._events_queued)
            await asyncio.sleep(delay)

    def _next_attempt(self, attempt: int, connected_at: float | None) -> int:
        """The backoff step after a failure: back to the first only after a connection that stayed up."""
        if connected_at is None:
            self._short_sessions = 0
            return min(attempt + 1, 30)
        up_s = time.monotonic() - connected_at
        if up_s >= _STABLE_S:
            self._short_sessions = 0
            return 1
        self._short_sessions += 1
        if self._short_sessions >= 2:
            self._warn_takeover(up_s)
        return min(attempt + 1, 30)

    def _warn_takeover(self, up_s: float) -> None:
        """Said only after two short connections in a row with no refused connect between them: a broker that
        restarted refuses us until it is back, one that hands our client id to another client never does."""
        log.warning(
            "MQTT: the broker dropped the connection %.1f s after it was made, %d times in a row; another client "
            "using the client id %r takes it over? Give each daemon its own [mqtt] client_id",
            up_s,
            self._short_sessions,
            self.settings.client_id or f"spkidd-{self.topics.node}",
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection's life: returns after a requested close, raises when the connection fails."""
        await client.subscribe(self.topics.ha_status, qos=1)
        self._queue_retained = True
        self._queue = deque(item for item in self._queue if not item.retain)
        await self._publish_discovery(client)
        for topic, payload in list(self._retained.items()):
            await self._publish(client, topic, payload, retain=True)
        await self._publish(client, self.topics.status, ONLINE, retain=True)
        self.stats.connected = True
        tasks = [
            asyncio.create_task(self._send(client), name="mqtt-send"),
            asyncio.create_task(self._receive(client), name="mqtt-receive"),
            asyncio.create_task(self._stats_loop(client), name="mqtt-stats"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc

    async def _publish(self, client: aiomqtt.Client, topic: str, payload: bytes, *, retain: bool) -> None:
        await client.publish(topic, payload, qos=1, retain=retain)
        self.stats.published += 1

    async def _publish_discovery(self, client: aiomqtt.Client) -> None:
        """Removed entities first (their sources' topics are emptied only _CLEAR_AFTER_REMOVAL_S later), then every
        entity's config."""
        self._discovery_pending = False
        messages = discovery_messages(self.topics, self._sources, self._speakers, self.page_url)
        removed = sorted(self._announced - set(messages))
        for topic in removed:
            await self._publish(client, topic, b"", retain=True)
            self._announced.discard(topic)
        if removed:
            self._clear_due = time.monotonic() + _CLEAR_AFTER_REMOVAL_S
        for topic, config in messages.items():
            await self._publish(client, topic, encode(config), retain=True)
            self._announced.add(topic)

    async def _send(self, client: aiomqtt.Client) -> None:
        """Drains the queue in order; returns only after a requested close has sent everything and `offline`."""
        while True:
            if self._discovery_pending:
                await self._publish_discovery(client)
                continue
            if self._cleared and time.monotonic() >= self._clear_due:
                topic = min(self._cleared)
                await self._publish(client, topic, b"", retain=True)
                self._cleared.discard(topic)
                continue
            if self._queue:
                item = self._queue.popleft()
                try:
                    await self._publish(client, item.topic, item.payload, retain=item.retain)
                except BaseException:
                    self._queue.appendleft(item)
                    raise
                if not item.retain:
                    self._events_queued -= 1
                continue
            if self._closing and not self._cleared:
                await self._publish(client, self.topics.status, OFFLINE, retain=True)
                log.info("MQTT: published offline, disconnecting")
                return
            self._wake.clear()
            await self._work_or_clear_due()

    async def _work_or_clear_due(self) -> None:
        """Sleeps until something is queued, or until the topics held back for `_clear_due` may be emptied.
        asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that comes as the wait
        ends, and the publisher would not stop."""
        timeout = max(0.0, self._clear_due - time.monotonic()) if self._cleared else None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.topic.matches(self.topics.ha_status) and message.payload == ONLINE:
                self._schedule_rediscovery()
        raise aiomqtt.MqttError("message stream ended")

    def _schedule_rediscovery(self) -> None:
        """Home Assistant restarted: it has forgotten discovery; answer after a random delay so a house full of
        devices does not answer all at once."""
        if self._rediscovery is not None and not self._rediscovery.done():
            return
        delay = random.uniform(0.0, self.settings.rediscovery_max_delay_s)
        log.info("MQTT: Home Assistant came online, rediscovery in %.1f s", delay)

        async def later() -> None:
            await asyncio.sleep(delay)
            self.request_discovery()

        self._rediscovery = asyncio.create_task(later(), name="mqtt-rediscovery")

    async def _stats_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_interval_s)
            sources = self._stats_provider() if self._stats_provider else {}
            payload = stats_payload(self.topics.node, time.monotonic() - self._started, sources, self.stats_dict())
            await client.publish(self.topics.stats, encode(payload), qos=0, retain=False)
