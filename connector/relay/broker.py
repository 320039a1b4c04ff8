"""What the relay needs from a channel layer that carries messages between processes: the
cross-node interface, in the spirit of centrifuge's `Broker` (a hub of local connections,
a broker for the others; connector.relay.registry is the hub).

A consumer talks to the layer through Channels' own API: a channel of its own
(`new_channel`, `receive`), a direct `send` to one peer's channel (frames and control
messages), and groups for the control events of a session or a credential
(`group_add`, `group_discard`, `group_send`). On top of that, what cross-process delivery
needs when the broker's server (Redis) restarts or loses its data, without closing a
socket:

- `send` raises `LayerUnavailable` (a `ChannelFull`) for a message it could not queue
  because the server is unreachable, as `ChannelFull` at capacity: the caller treats both
  as "not delivered" (a POS frame closes its socket with 4503, a device frame is dropped
  and counted, a control message is logged). A send is never delivered twice.
- `receive`, `group_add` and `group_discard` never raise for an outage: they wait, or
  leave the repair to the recovery below; `group_send` raises (its callers log it).
- `recovery_needed` is set by every failure; `when_back`, if set, is called (on the event
  loop, with the broker) once the server answers again while it is set, and
  `reachable()` returns once it answers.
- `state_lost(node)` says whether the server lost what it held since the last call (a
  marker key of the process's, found gone), and `restore_groups(memberships)` puts
  (group, channel) pairs back; connector.relay.recovery drives both.

The in-memory layer of the embedded default is not a `Broker` (there is no other process
and nothing to lose); connector.relay.redis_layer.RedisChannelLayer is the implementation,
on channels_redis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from channels.exceptions import ChannelFull


class LayerUnavailable(ChannelFull):
    """A message not queued because the broker's server is unreachable. A ChannelFull, so
    that callers treat it as the layer's other "not delivered": a POS frame closes its
    socket with 4503, a device frame is dropped and counted, a control message is logged."""


@runtime_checkable
class Broker(Protocol):
    """A channel layer that crosses processes and can tell the relay what it lost."""

    recovery_needed: bool
    when_back: Callable[[Broker], None] | None

    async def new_channel(self, prefix: str = "specific") -> str: ...

    async def send(self, channel: str, message: dict[str, Any]) -> None: ...

    async def receive(self, channel: str) -> dict[str, Any]: ...

    async def group_add(self, group: str, channel: str) -> None: ...

    async def group_discard(self, group: str, channel: str) -> None: ...

    async def group_send(self, group: str, message: dict[str, Any]) -> None: ...

    async def reachable(self) -> None:
        """Return once the server answers again."""

    async def state_lost(self, node: str) -> bool:
        """Whether the server lost what it held since this process's last call."""

    async def restore_groups(self, memberships: list[tuple[str, str]]) -> bool:
        """Add (group, channel) pairs as `group_add` does; False if the server failed."""

    async def discard_groups(self, memberships: list[tuple[str, str]]) -> bool:
        """Remove (group, channel) pairs as `group_discard` does, in as few round trips as it
        can (a process shutting down leaves all its groups at once); False if the server failed."""
