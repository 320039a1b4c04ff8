"""The Lua scripts of connector.relay.redis_layer, and running them by their SHA1.

Each runs atomically in Redis: one round trip where channels_redis takes four (a send) or
takes one message per four round trips (a receive).
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis.exceptions

# Atomically: nothing if this send (KEYS[2], its id) queued the message already; else drop
# expired messages, refuse (0) at capacity, queue the message and remember the send's id.
SEND_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
    return 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('SET', KEYS[2], '1', 'EX', ARGV[6])
return 1
"""

# Atomically: unless the backup queue (KEYS[2]) holds the batch the receiver says it buffered
# (generation ARGV[2], as KEYS[3] records), put it back in the queue (KEYS[1]): its taker
# was cancelled. Then take up to ARGV[1] messages, oldest first, into the emptied backup
# as generation ARGV[3].
POP_BATCH_SCRIPT = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
    local backed_up = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = #backed_up, 1, -2 do
        redis.call('ZADD', KEYS[1], backed_up[i], backed_up[i - 1])
    end
end
redis.call('DEL', KEYS[2])
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
for i = 1, #popped, 2 do
    redis.call('ZADD', KEYS[2], popped[i + 1], popped[i])
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
return popped
"""
# channels_redis's group_add (ZADD with the time as score, then EXPIRE at the group expiry) in
# one command: every socket joins its groups on connect, a fleet coming back thousands a second.
GROUP_ADD_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
# channels_redis's group_send reads a group's members in two round trips (drop the expired
# ones, then read) per group. This reads several groups' members in one: KEYS the group keys,
# ARGV[1] the time before which a membership has expired; one list of members per group.
GROUP_MEMBERS_SCRIPT = """
local members = {}
for i = 1, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, ARGV[1])
    members[i] = redis.call('ZRANGE', KEYS[i], 0, -1)
end
return members
"""
# channels_redis's group_send queueing (drop expired messages, skip a channel at capacity,
# ZADD, EXPIRE) for the messages of several group sends at once, in order. KEYS the channel
# keys (a key may come back for another message); ARGV three per key (payload, capacity,
# score: strictly increasing, so that Redis keeps the order), then the time before which a
# message has expired, then the expiry. Returns how many were skipped at capacity.
GROUP_SEND_SCRIPT = """
local n = #KEYS
local cutoff = ARGV[3 * n + 1]
local expiry = ARGV[3 * n + 2]
local over = 0
for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, cutoff)
    if redis.call('ZCARD', KEYS[i]) < tonumber(ARGV[3 * i - 1]) then
        redis.call('ZADD', KEYS[i], ARGV[3 * i], ARGV[3 * i - 2])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        over = over + 1
    end
end
return over
"""
SCRIPT_SHAS = {
    script: hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
    for script in (SEND_SCRIPT, POP_BATCH_SCRIPT, GROUP_ADD_SCRIPT, GROUP_MEMBERS_SCRIPT, GROUP_SEND_SCRIPT)
}


async def run_script(connection: Any, script: str, numkeys: int, *keys_and_args: Any) -> Any:
    """EVALSHA, so that the script's text is not sent (and hashed by Redis) with every
    message; EVAL when Redis does not have it yet (first use, or after a restart)."""
    try:
        return await connection.evalsha(SCRIPT_SHAS[script], numkeys, *keys_and_args)
    except redis.exceptions.NoScriptError:  # not run: safe to run now
        return await connection.eval(script, numkeys, *keys_and_args)
