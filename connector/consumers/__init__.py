"""The four WebSocket routes of the Cloud Connector protocol (contract §3-§8). Thin: they
authenticate, call connector.sessions, translate domain errors through
connector.protocol.ERRORS, and relay frames through connector.relay.

- `base`: what every socket shares: `db` (database work and its events), the origin rule,
  groups, closing once, and the consumer's run loop.
- `device_listener`: §3, registration.
- `pos_listener`: §5, claim, release, devices and the POS events; `PosCaller`, the bearer
  token's caller shared with the POS session socket.
- `relay_sockets`: §4, §6, §7, the device and POS session sockets that carry frames.

Every refusal accepts the handshake first and then closes with the contract's code, so a
client always sees the code (a refused handshake would show it only an HTTP 403). The
order of the checks at connect is: origin (4403), credentials (4401, then scope 4403),
the URL's endpoint syntax (4404), then the session itself (4404 no such session or
endpoint, 4403 claim held by another credential, 4410 session already ended).

A socket joins its groups before it reads the database, so that an event committed
after the read reaches it and one committed before is seen by the read. Database work
runs in the database threads of accounts.db_threads (a pool on PostgreSQL, Channels' one
thread on SQLite), never on the frame path, through `db`: the work of one session (its
attaches and detaches) in the order it was asked for, and the events a call committed
sent before the consumer goes on (connector.groups). The one expensive step, a client
secret's hash check when it is not remembered, runs in a worker thread of its own without
the database. Handlers skip Channels' per-message `close_old_connections` hop: no handler
touches the database outside `db`, which closes stale connections around every call.

Decisions where the contract is silent:

- A device or POS session socket for a session that has ended is closed with 4410 (gone:
  register again / claim again); an unknown session id is 4404.
- A second POS session socket of the holder on the same endpoint replaces the first
  (4409), as for device sockets: one socket per side and endpoint receives the frames.
- `release` of a session outside the token's scope or unknown: 404 `unknown_session`; of
  a session the credential does not hold: 409 `not_claimed`; of an ended session it
  held: ok. `devices` rows also carry `session_id` (null without a live session).
- pos-listener checks its token again at every request: one that expired or was revoked
  meanwhile closes the socket with 4401. Open session sockets outlive their token's
  expiry (a payment must not be cut off at the hour); revocation closes them.
- device-listener answers credential failures of a bearer token (unknown, expired,
  without the `cloud-connector` scope) with 401 `invalid_client`, as §3's table says.
- Failed registrations are counted per client address (ASGI `client`: the TCP peer, or
  the forwarded address when the server is told to trust its proxy: daphne
  `--proxy-headers`, uvicorn `--forwarded-allow-ips`) in Django's cache (Redis when
  REDIS_URL is set, so shared by every process; per process otherwise). Every error
  answer counts; a limited address is answered 429 before its credentials are checked.
  4429 stays unused: every refusal on device-listener can answer.
- A registration that changes a live session's endpoints closes the sockets (both
  sides) of the endpoints it dropped with 4404.
- A socket opened while the process is shutting down is closed with 1001.
"""

from __future__ import annotations
