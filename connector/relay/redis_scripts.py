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
SCRIPT_SHAS = {
    script: hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
    for script in (SEND_SCRIPT, POP_BATCH_SCRIPT, GROUP_ADD_SCRIPT)
}


async def run_script(connection: Any, script: str, numkeys: int, *keys_and_args: Any) -> Any:
    """EVALSHA, so that the script's text is not sent (and hashed by Redis) with every
    message; EVAL when Redis does not have it yet (first use, or after a restart)."""
    try:
        return await connection.evalsha(SCRIPT_SHAS[script], numkeys, *keys_and_args)
    except redis.exceptions.NoScriptError:  # not run: safe to run now
        return await connection.eval(script, numkeys, *keys_and_args)
