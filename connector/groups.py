"""Channel-layer group names and after-commit delivery for the relay's control events.

Groups carry control events only (session ended, claim changed, a peer socket attached or
left, revocations, POS events); relayed frames never use a group, they go straight to a
socket (see connector.relay).

- `session_group(session_id)`: every device socket and POS session socket of a session.
- `credential_group(application_id)`: the POS session sockets of a credential.
- `listener_group(application_id)`: the pos-listener sockets of a credential (the events
  of §5 for the sessions it claims).
- `presence_group_store(store_id)`, `presence_group_ma(ma_id)`: the pos-listener sockets
  subscribed to presence (v1.1 §12) whose scope is that store or merchant aggregator;
  `presence_group_merchant(merchant_id)`: the portal's open device pages of a merchant's users
  (an MA's users' pages join the MA's group).

Revocations go to a credential's two groups (connector.events): `credential.revoked` closes
them all; `token.revoked` names the token's checksum and closes the sockets that
authenticated with that token. One group per token would cost every POS socket one more
membership to add and drop in the channel layer.

Delivery after commit, two ways:

- Work the relay runs through `collecting` (connector.consumers runs all its database
  work so): the events a call committed are kept, in order, and the caller sends them on
  the event loop when the call is back (`deliver`), before it goes on. The database thread
  is free meanwhile, and a socket is still announced before it is accepted (a peer on
  another process hears of it before its first frame: one channel, first in first out).
- Anything else (the portal, the REST API, the relay's housekeeping, management
  commands): sent at commit, the committing thread waiting for the channel layer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)


def session_group(session_id: str) -> str:
    return f"cc.session.{session_id}"


def credential_group(application_id: int) -> str:
    return f"cc.credential.{application_id}"


def listener_group(application_id: int) -> str:
    return f"cc.listener.{application_id}"


def presence_group_store(store_id: int) -> str:
    return f"cc.presence.store.{store_id}"


def presence_group_ma(ma_id: int) -> str:
    return f"cc.presence.ma.{ma_id}"


def presence_group_merchant(merchant_id: int) -> str:
    return f"cc.presence.merchant.{merchant_id}"


def presence_groups(*, store_id: int, merchant_id: int, ma_id: int) -> tuple[str, str, str]:
    """The groups that hear of a device's presence: the listeners subscribed to it (§12
    `subscribe`: a store POS's scope is its store, a Cloud API application's its merchant
    aggregator) and the portal's open device pages (a merchant's users: its merchant; an MA's:
    its merchant aggregator)."""
    return presence_group_store(store_id), presence_group_merchant(merchant_id), presence_group_ma(ma_id)


class Channel(str):
    """One socket's channel name as the target of an event, in place of a group: an event
    only one socket acts on (a peer attached or left) costs one `send`, where a group send
    costs a read of the group's members and a delivery to each, the sender included."""

    __slots__ = ()


async def _send(layer: Any, target: str, message: dict) -> None:
    if isinstance(target, Channel):
        await layer.send(target, message)
    else:
        await layer.group_send(target, message)


def send_now(group: str, message: dict) -> None:
    """Send `message` to a group (or a `Channel`) now, or keep it for the caller's `deliver`."""
    send_all_now([(group, message)])


def send_all_now(events: list[tuple[str, dict]]) -> None:
    """Several (group or Channel, message) events now, in order, in one trip to the event
    loop; or kept for the caller's `deliver` when it collects (see `collecting`)."""
    outbox = getattr(_collecting, "outbox", None)
    if outbox is not None:
        outbox.extend(events)
        return
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(deliver)(events)
    except Exception:  # noqa: BLE001 - a committed change must not fail because a layer hiccuped
        logger.exception("could not deliver %d events", len(events))


def send_after_commit(group: str | tuple[str, ...], message: dict) -> None:
    """Send `message` to a group, or to each of several, once the transaction commits."""
    names = (group,) if isinstance(group, str) else group

    def send() -> None:
        for name in names:
            send_now(name, message)

    transaction.on_commit(send)


def credential_groups(application_id: int) -> tuple[str, str]:
    """Every socket of a credential: its POS session sockets and its pos-listeners."""
    return (credential_group(application_id), listener_group(application_id))


# --- events of a call, sent by its caller --------------------------------------------------

_collecting = threading.local()


@dataclass
class Outcome:
    """What a call run through `collecting` returned or raised, and the events it committed."""

    result: Any = None
    error: BaseException | None = None
    events: list[tuple[str, dict]] = field(default_factory=list)

    async def unwrap(self) -> Any:
        """Send the events (in order, after the commits that made them), then return the
        result or raise the error."""
        await deliver(self.events)
        if self.error is not None:
            raise self.error
        return self.result


def collecting(fn: Callable) -> Callable[..., Outcome]:
    """`fn` made to keep the events its commits send, for its caller to deliver; it never
    raises (the error is in the Outcome, with the events committed before it)."""

    def run(*args: Any, **kwargs: Any) -> Outcome:
        outcome = Outcome()
        previous = getattr(_collecting, "outbox", None)
        _collecting.outbox = outcome.events
        try:
            outcome.result = fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - handed to the caller with the events
            outcome.error = error
        finally:
            _collecting.outbox = previous
        return outcome

    return run


async def deliver(events: list[tuple[str, dict]]) -> None:
    if not events:
        return
    layer = get_channel_layer()
    if layer is None:
        return
    many = getattr(layer, "group_send_many", None)
    position = 0
    while position < len(events):
        group, message = events[position]
        run = 1
        if many is not None and not isinstance(group, Channel):
            # Consecutive group sends go together (connector.relay.redis_layer: two Redis
            # round trips for all of them, in order, instead of two to four per group).
            while position + run < len(events) and not isinstance(events[position + run][0], Channel):
                run += 1
        if run > 1:
            try:
                await many(events[position : position + run])
            except Exception:  # noqa: BLE001 - sent again one by one below, each on its own
                logger.warning("could not deliver %d group events together; one by one", run, exc_info=True)
                for one_group, one_message in events[position : position + run]:
                    await _send_logged(layer, one_group, one_message)
        else:
            await _send_logged(layer, group, message)
        position += run


async def _send_logged(layer: Any, target: str, message: dict) -> None:
    try:
        await _send(layer, target, message)
    except Exception:  # noqa: BLE001 - the change is committed; a layer hiccup must not undo the caller
        logger.exception("could not deliver %s to %s", message.get("type"), target)


def pos_event_message(
    *,
    event: str,
    session_id: str,
    tsn: str,
    event_id: str | None = None,
    occurred_at: str | None = None,
    fields: dict | None = None,
) -> dict:
    """A listener event as it travels (the listener socket adds its `seq`): `event_id` and
    `occurred_at` of the recorded fact (connector.history), `fields` the event's own
    (`endpoint` of device_replaced, `reason` of device_offline)."""
    message = {"type": "pos.event", "event": event, "session_id": session_id, "tsn": tsn}
    if event_id is not None:
        message["event_id"] = event_id
        message["occurred_at"] = occurred_at
    if fields:
        message["fields"] = fields
    return message


def pos_event(*, application_id: int, event: str, session_id: str, tsn: str, **envelope) -> tuple[str, dict]:
    """One of §5's events for the pos-listener sockets of a credential: (group, message)."""
    return listener_group(application_id), pos_event_message(event=event, session_id=session_id, tsn=tsn, **envelope)


def pos_event_after_commit(*, application_id: int | None, event: str, session_id: str, tsn: str, **envelope) -> None:
    """One of §5's events for the pos-listener sockets of the credential holding a claim."""
    if application_id is None:
        return
    send_after_commit(
        *pos_event(application_id=application_id, event=event, session_id=session_id, tsn=tsn, **envelope)
    )


def send_all_after_commit(events: list[tuple[str, dict]]) -> None:
    """Several (group or Channel, message) events once the transaction commits, in order, in
    one trip to the event loop (a commit that ends or forgets thousands of sessions would
    otherwise wait for the channel layer once per event)."""
    if not events:
        return
    transaction.on_commit(lambda: send_all_now(events))
