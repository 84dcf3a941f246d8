"""MQTT output: the contract's payloads (pure) and the publisher (the only aiomqtt user)."""

from spkidd.mqtt.payloads import Topics, discovery_messages, event_payload, state_payload
from spkidd.mqtt.publisher import MqttPublisher, PublisherStats

__all__ = ["MqttPublisher", "PublisherStats", "Topics", "discovery_messages", "event_payload", "state_payload"]
