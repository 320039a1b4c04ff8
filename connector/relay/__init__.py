"""The relay: how frames and control events reach the sockets of a session.

The frame path (a POS frame to the device, a device frame to the POS) does no database
query and no thread hop. Channels 4.2+ runs `aclose_old_connections()` (a hop to a
thread) before every handler; the relay consumers' `dispatch` skips it for
`websocket.receive` and `relay.frame`, which touch no database (connector.consumers).

Where the peer is:

- Same process: the registry maps channel names to live consumers; a frame is handed
  straight to the peer consumer's ASGI `send` (one await, no queue, no copy).
- Another process: a direct `channel_layer.send` to the peer's channel name (never
  `group_send`); the receiving consumer writes it to its socket.
- Each consumer caches its peer's channel name. It learns it when it attaches (from the
  `SessionSocket` rows) and from the `peer.attached` / `peer.detached` events sent to
  it (straight to its channel, connector.session_sockets) by the socket on the other side
  of its endpoint, which follow every connect, reconnect, replacement, claim, release and
  takeover, because each of those attaches or detaches a socket. Attaches and detaches
  of a session take its row's lock in turn, so of two sockets the second reads the
  first one's row and sends it the event: either a socket reads its peer's row or it
  receives the peer's event, never neither. A socket that found no peer in the
  database remembers that until its peer changes (an event, or a frame from a peer on
  another process), so a device talking to nobody costs one query, not one per frame.

Ordering: frames of one socket are handled one at a time by its consumer and each is
sent before the next is read, so order holds per direction and endpoint on both paths
(the channel layer keeps the order of one sender to one channel). Frames in flight at
the instant a peer vanishes cannot be delivered; on the same process this is detected
and answered (4503 to the POS), across processes a frame sent in the few milliseconds
before the `peer.detached` event arrives is lost, as it would be on a dying TCP link.

The modules, one reason to change each:

- `registry`: the live sockets of this process, their frame counters, handing a control
  message to one socket, the per-process listener quota.
- `housekeeping`: the per-process background task: node heartbeat, session sweep, counter
  flush, the channel layer's health check.
- `broker`: what the relay needs from a channel layer that crosses processes (the
  interface); `redis_layer` (+ `redis_scripts`): its implementation on channels_redis,
  which rides out a Redis restart.
- `recovery`: putting this process's sockets back in their groups after Redis lost them,
  and replaying from the database what they missed.
- `servers`: what daphne and uvicorn need adjusted per socket (message limit, ping
  timeout, close codes, the bound on what a client leaves unread).
- `shutdown`: closing every socket with 1001 on SIGTERM/SIGINT before the server stops.
- `tasks`: the relay's background tasks, with a reference kept to each.
"""
