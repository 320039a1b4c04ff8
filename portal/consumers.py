"""The devices page kept current by push instead of polling (issue 17).

The page opens `/ws/portal/devices/` (signed in: the Django session cookie, read by
channels' AuthMiddlewareStack in portal.asgi) and says which devices are on screen:

    → {"watch": [12, 13, 14], "refresh": false}
    ← {"type": "watching", "devices": [12, 13, 14]}          the ids it will hear about
    ← {"type": "rows", "rows": {"13": "<tr id=\"device-13\" …>…</tr>"}}

A device outside the user's scope (or deleted) is left out of "watching" — not found and
forbidden read the same — and nothing is ever sent about it. `refresh` asks for every watched
row at once (a page that was disconnected for a while catches up).

Where changes come from: every presence change is sent after commit to the group of the
device's merchant (connector.groups.presence_group_merchant, written by connector.history),
as a `pos.event` naming the device's tsn. The socket joins the groups of the merchants of the
watched devices only, so that an aggregator's page hears of its 50 rows, not of its estate;
any `pos.event` for a watched tsn re-renders that row from the database (one query for all
the rows changed within COALESCE_SECONDS). An idle page costs nothing: no timer, no query.

Close codes: 4401 not signed in; 4403 a user with nothing to see (no merchant or aggregator
membership, or deactivated); 4400 a message that is not `{"watch": [ids]}` (with an `error`
message first saying why).
"""

from __future__ import annotations

import asyncio
import json
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth import get_user_model
from django.template.loader import render_to_string

from accounts.scope import Level, Principal, principal_for_user
from connector import groups
from connector.selectors import devices_in_scope
from portal.device_status import device_state, devices_for_portal

logger = logging.getLogger(__name__)

# How many devices one page may watch: a page shows 50 (portal.views.devices.PAGE_SIZE).
MAX_WATCH = 200
# Changes within this window are rendered together: a node going down takes hundreds of
# terminals offline in one commit, and each page then renders its rows once.
COALESCE_SECONDS = 0.05

CLOSE_BAD_MESSAGE = 4400
CLOSE_NOT_SIGNED_IN = 4401
CLOSE_NOTHING_TO_SEE = 4403


class BadMessage(ValueError):
    """A message the page would never send; its text is sent back before closing."""


def watch_ids(content: object) -> tuple[list[int], bool]:
    """The device ids and the refresh flag of a `watch` message, or BadMessage."""
    if not isinstance(content, dict) or not isinstance(content.get("watch"), list):
        raise BadMessage('Send {"watch": [device ids]}.')
    ids = content["watch"]
    if len(ids) > MAX_WATCH:
        raise BadMessage(f"Watch at most {MAX_WATCH} devices at a time.")
    if not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids):
        raise BadMessage("Device ids are positive integers.")
    refresh = content.get("refresh", False)
    if not isinstance(refresh, bool):
        raise BadMessage('"refresh" is true or false.')
    return list(dict.fromkeys(ids)), refresh


def watchable(*, principal: Principal, ids: list[int]) -> list[tuple[int, str, str, str, int]]:
    """(id, make, model, serial, merchant id) of the devices of `ids` in the principal's scope."""
    if not ids:
        return []
    return list(
        devices_in_scope(principal=principal)
        .filter(pk__in=ids)
        .order_by()
        .values_list("pk", "make", "model", "serial", "merchant_id")
    )


def rendered_rows(*, principal: Principal, ids: list[int]) -> dict[str, str]:
    """The table rows of the devices of `ids` in scope, as the list renders them."""
    show_merchant = principal.level < Level.MERCHANT
    devices = devices_for_portal(principal=principal).filter(pk__in=ids)
    return {
        str(device.pk): render_to_string(
            "portal/_device_row.html", {"state": device_state(device), "show_merchant": show_merchant}
        )
        for device in devices
    }


def current_principal(user_id: int) -> Principal | None:
    """The user's principal now, or None once the user is deactivated (or gone): a page left
    open must not outlive its user's access (the session cookie is checked only at connect)."""
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    return principal_for_user(user) if user is not None else None


class DevicePushConsumer(AsyncWebsocketConsumer):
    """One open devices page: its watched rows, re-rendered when their device changes."""

    async def connect(self) -> None:
        self.principal: Principal | None = None
        self.by_tsn: dict[str, int] = {}
        self.joined: set[str] = set()
        self.pending: set[int] = set()
        self.flush_task: asyncio.Task | None = None
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_NOT_SIGNED_IN)
            return
        principal = await database_sync_to_async(principal_for_user)(user)
        if principal.level > Level.MERCHANT:
            await self.close(code=CLOSE_NOTHING_TO_SEE)
            return
        self.user_id = user.pk
        self.principal = principal
        await self.accept()

    async def still_allowed(self) -> bool:
        """Read the user's access again (each watch and each batch of rows): a deactivated
        user's page closes with 4401, a changed membership narrows what it is sent."""
        principal = await database_sync_to_async(current_principal)(self.user_id)
        if principal is None or principal.level > Level.MERCHANT:
            await self.close(code=CLOSE_NOT_SIGNED_IN)
            return False
        self.principal = principal
        return True

    async def disconnect(self, code: int) -> None:
        if self.flush_task is not None:
            self.flush_task.cancel()
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.joined = set()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            content = json.loads(text_data) if text_data is not None else None
            ids, refresh = watch_ids(content)
        except (ValueError, BadMessage) as error:
            message = str(error) if isinstance(error, BadMessage) else "Messages are JSON text."
            await self.send(text_data=json.dumps({"type": "error", "message": message}))
            await self.close(code=CLOSE_BAD_MESSAGE)
            return
        await self.watch(ids, refresh=refresh)

    async def watch(self, ids: list[int], *, refresh: bool) -> None:
        if not await self.still_allowed():
            return
        rows = await database_sync_to_async(watchable)(principal=self.principal, ids=ids)
        self.by_tsn = {f"{make}-{model}-{serial}".lower(): pk for pk, make, model, serial, _ in rows}
        wanted = {groups.presence_group_merchant(merchant_id) for *_, merchant_id in rows}
        for group in wanted - self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
        for group in self.joined - wanted:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.joined = wanted
        watched = [pk for pk, *_ in rows]
        await self.send(text_data=json.dumps({"type": "watching", "devices": sorted(watched)}))
        if refresh and watched:
            self.pending.update(watched)
            self._schedule()

    async def pos_event(self, message: dict) -> None:
        """A device's presence (or, when connector sends them here, its claim) changed."""
        device_id = self.by_tsn.get(str(message.get("tsn", "")).lower())
        if device_id is None:
            return
        self.pending.add(device_id)
        self._schedule()

    def _schedule(self) -> None:
        if self.flush_task is None or self.flush_task.done():
            self.flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(COALESCE_SECONDS)
        ids, self.pending = sorted(self.pending), set()
        if not ids or not await self.still_allowed():
            return
        try:
            rows = await database_sync_to_async(rendered_rows)(principal=self.principal, ids=ids)
        except Exception:  # noqa: BLE001 - one failed render must not end the page's updates
            logger.exception("could not render %d device rows", len(ids))
            return
        if rows:
            await self.send(text_data=json.dumps({"type": "rows", "rows": rows}))
