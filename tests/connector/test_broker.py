"""The relay's cross-process interface (connector.relay.broker): the Redis layer the settings
name implements it, so the relay's recovery drives it; the in-memory layer of the embedded
default does not, and is left alone. No Redis is needed: nothing here connects."""

from __future__ import annotations

from channels.layers import InMemoryChannelLayer

from connector.relay import recovery
from connector.relay.broker import Broker
from connector.relay.redis_layer import RedisChannelLayer


def test_the_redis_layer_is_a_broker_and_the_in_memory_layer_is_not():
    assert isinstance(RedisChannelLayer(hosts=["redis://127.0.0.1:1"]), Broker)
    assert not isinstance(InMemoryChannelLayer(), Broker)


def test_the_recovery_is_what_a_broker_calls_when_its_server_is_back():
    layer = RedisChannelLayer(hosts=["redis://127.0.0.1:1"])
    assert layer.when_back is None
    recovery.hook_into(layer)
    assert layer.when_back is recovery.schedule_recovery
    assert RedisChannelLayer.when_back is None  # per layer, not for every layer of the class


def test_the_in_memory_layer_gets_no_recovery_hook():
    layer = InMemoryChannelLayer()
    recovery.hook_into(layer)
    assert not hasattr(layer, "when_back")
