"""What every benchmark shares: server processes, the demo data, the protocol steps of a
terminal and a POS, and the report's machine, versions and marked sections."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import secrets
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen import Pair  # noqa: E402

from portal.serve import worker_command  # noqa: E402

MAX_SIZE = 2**21
REPORT = ROOT / "docs" / "benchmarks.md"
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/cc_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def raise_fd_limit() -> int:
    """Thousands of sockets: the load generator and the servers it starts inherit this."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


# --- servers -------------------------------------------------------------------------------


BENCH_SECRET_KEY = secrets.token_urlsafe(48)
BENCH_JWT_KEY = secrets.token_urlsafe(48)
# The benchmark is one client on one address that fetches a token per session (tens a
# second): far beyond what the rate limits allow any real client, so they are lifted here.
BENCH_RATES = {
    name: "1000000/min"
    for name in ("TOKEN_RATE_PER_ADDRESS", "TOKEN_RATE_PER_CLIENT", "API_RATE_PER_ADDRESS", "API_RATE_PER_CREDENTIAL")
}


def server_env(settings: str = "portal.settings", *, port: int | None = None) -> dict[str, str]:
    """Cloud Connector on PostgreSQL and Redis in production mode, as docs/deploy.md runs
    it, except that no TLS proxy stands in front: plain ws:// and http:// on 127.0.0.1."""
    log_level = os.environ.get("BENCH_LOG_LEVEL", "WARNING")  # the servers' (INFO: lifecycle lines too)
    env = {**os.environ, "DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL, "LOG_LEVEL": log_level}
    env.setdefault("DB_CONN_MAX_AGE", "60")  # docs/deploy.md recommends persistent connections
    env.update(DEBUG="false", SECRET_KEY=BENCH_SECRET_KEY, ALLOWED_HOSTS="127.0.0.1", SECURE_SSL_REDIRECT="false")
    # Production refuses to start without dedicated device-token keys and a mail backend
    # that delivers (docs/deploy.md); the benchmark sends no mail.
    env.update(CC_JWT_KEYS=f"bench:{BENCH_JWT_KEY}", EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend")
    env.update(BENCH_RATES)
    # One POS credential stands for a whole estate's tills here: its session sockets and
    # pos-listeners would pass the per-credential quotas in the session figures (4429).
    env["CC_MAX_SESSION_SOCKETS_PER_CREDENTIAL"] = "1000000"
    env["CC_MAX_LISTENERS_PER_CREDENTIAL"] = "1000000"  # the session figures open one per session
    if port is not None:
        env["CC_PUBLIC_WS_URL"] = f"ws://127.0.0.1:{port}"
    env["DJANGO_SETTINGS_MODULE"] = settings
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench"), str(ROOT)])
    env.pop("SQLITE_PATH", None)
    return env


NODE = "/usr/bin/node"
NODE_RELAY = ROOT / "bench" / "node_relay"
# The plain relays: the same protocol (/device/<id>, /pos/<id>, frames forwarded untouched),
# each the simplest relay its library allows. "plain" is the name bench/scale.py starts too.
PLAIN_RELAYS = {
    "plain": "websockets, asyncio",
    "plain-uvloop": "websockets, uvloop",
    "picows": "picows, uvloop",
    "node": "Node ws",
}
# Cloud Connector under each ASGI server (portal.asgi:application).
ASGI_SERVERS = {
    "uvicorn": "Cloud Connector, uvicorn",
    "daphne": "Cloud Connector, daphne",
    "granian": "Cloud Connector, granian",
}


def server_command(kind: str, port: int) -> list[str]:
    """The command line of one server kind: a plain relay (PLAIN_RELAYS) or Cloud Connector
    under an ASGI server (ASGI_SERVERS), listening on 127.0.0.1:`port`."""
    bench = ROOT / "bench"
    if kind == "plain":
        return [sys.executable, str(bench / "plain_relay.py"), "--port", str(port)]
    if kind == "plain-uvloop":
        return [sys.executable, str(bench / "plain_relay.py"), "--port", str(port), "--loop", "uvloop"]
    if kind == "picows":
        return [sys.executable, str(bench / "plain_relay_picows.py"), "--port", str(port)]
    if kind == "node":
        return [NODE, str(NODE_RELAY / "relay.js"), "--port", str(port)]
    if kind == "daphne":
        daphne = [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port)]
        return [*daphne, "portal.asgi:application"]
    if kind == "granian":
        return granian_command(port)
    if kind == "uvicorn":
        # Exactly the worker `make serve` runs (portal/serve.py), without its access log.
        return [*worker_command("127.0.0.1", port), "--log-level", "warning", "--no-access-log"]
    raise ValueError(f"unknown server kind {kind!r}: one of {', '.join([*PLAIN_RELAYS, *ASGI_SERVERS])}")


def granian_command(port: int) -> list[str]:
    """Granian as a candidate for `make serve`: one worker on uvloop, WebSocket options at
    their defaults (granian has no permessage-deflate). `asginl` is granian's ASGI interface
    without the lifespan protocol, as uvicorn runs with `--lifespan off` (the application
    has no lifespan handler).

    Checked against the contract (2.8.9): registration, claim, text, binary and empty frames
    both ways, a 1 MiB message relayed and a larger one closed with 1009 (the application
    checks its limit itself, relay/servers.py) all work. Three differ from uvicorn: granian
    sends no pings (it has no option for them), so §8's "a socket that answers no ping within
    30 s is closed" does not hold; on SIGTERM its sockets drop without a close frame (clients
    see 1006, not §8's 1001); and its ASGI `send` exposes no transport, so the per-socket
    bound on what a slow client leaves unread (MAX_SOCKET_BUFFER) is not enforced."""
    return [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asginl",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--log-level",
        "warning",
        "--no-access-log",
        "portal.asgi:application",
    ]


def ensure_node_relay() -> None:
    """Install the Node relay's locked packages (`ws`, from the npm registry) when they are
    missing: `npm ci` installs exactly bench/node_relay/package-lock.json."""
    if (NODE_RELAY / "node_modules" / "ws" / "package.json").exists():
        return
    if not Path(NODE).exists():
        raise RuntimeError(f"the Node relay needs Node.js at {NODE}")
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_RELAY, check=True, stdout=subprocess.DEVNULL)


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (granian runs its worker as a child process), read
    from /proc: the pids whose CPU is the server's."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


@dataclass
class Server:
    process: subprocess.Popen
    port: int

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start(kind: str, settings: str = "portal.settings") -> Server:
    port = free_port()
    env = server_env(settings, port=port)
    process = subprocess.Popen(server_command(kind, port), cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    wait_listening(port, process)
    return Server(process, port)


# --- the backends' CPU ------------------------------------------------------------------------


def psql(sql: str) -> str:
    return subprocess.run(["psql", "-qAt", DATABASE_URL, "-c", sql], check=True, capture_output=True, text=True).stdout


def database_backends() -> list[int]:
    """The PostgreSQL backend processes serving the benchmark's database."""
    name = DATABASE_URL.rsplit("/", 1)[1]
    out = psql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()")
    return [int(line) for line in out.split() if line.strip()]


def redis_servers() -> list[int]:
    """The redis-server processes of this machine (the benchmark's Redis is local)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "redis-server":
                    pids.append(int(entry.name))
            except OSError:
                continue  # gone meanwhile
    return pids


class BackendsCpu:
    """CPU spent by PostgreSQL (the benchmark database's backends) and Redis between
    `start()` and `stop()`, in seconds: a backend that opened meanwhile counts whole."""

    def __init__(self) -> None:
        self.before: dict[int, float] = {}
        self.redis_before: dict[int, float] = {}
        self.database = 0.0
        self.redis = 0.0

    @staticmethod
    def _read(pids: list[int]) -> dict[int, float]:
        from cpu import cpu_seconds

        seconds = {}
        for pid in pids:
            try:
                seconds[pid] = cpu_seconds(pid)
            except OSError:
                continue  # gone meanwhile
        return seconds

    def start(self) -> BackendsCpu:
        self.before = self._read(database_backends())
        self.redis_before = self._read(redis_servers())
        return self

    def stop(self) -> BackendsCpu:
        after = self._read(sorted(set(self.before) | set(database_backends())))
        self.database = sum(seconds - self.before.get(pid, 0.0) for pid, seconds in after.items())
        redis_after = self._read(list(self.redis_before))
        self.redis = sum(redis_after[pid] - self.redis_before[pid] for pid in redis_after)
        return self


# --- data -----------------------------------------------------------------------------------


@dataclass
class Demo:
    domain: str
    client_id: str
    client_secret: str
    tsns: list[str]


def fresh_database(fill: str) -> dict:
    """Drop and create the benchmark's database, flush its Redis database, migrate, and run
    `fill` (Python, after django.setup()) on it; `fill` prints its result as JSON on its last
    line, which is returned."""
    name = DATABASE_URL.rsplit("/", 1)[1]
    admin = DATABASE_URL.rsplit("/", 1)[0] + "/postgres"
    subprocess.run(["psql", "-q", admin, "-c", f"DROP DATABASE IF EXISTS {name}"], check=True)
    subprocess.run(["psql", "-q", admin, "-c", f"CREATE DATABASE {name}"], check=True)
    db = REDIS_URL.rsplit("/", 1)[1]
    subprocess.run(
        ["redis-cli", "-u", REDIS_URL.rsplit("/", 1)[0], "-n", db, "flushdb"], check=True, capture_output=True
    )
    env = server_env()
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    script = "import json, django\ndjango.setup()\n" + fill
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def fresh_backends(devices: int) -> Demo:
    """A fresh database (fresh_database) filled through the service functions: one store with
    `devices` terminals and one POS."""
    data = fresh_database(f"""
from accounts import services as a
from accounts.scope import SYSTEM
from connector import services as c
tenant = a.tenant_create(domain="bench", name="Bench", actor=SYSTEM)
c.subscription_create(tenant=tenant, actor=SYSTEM)
ma = a.merchant_aggregator_create(tenant=tenant, name="MA", actor=SYSTEM)
merchant = a.merchant_create(merchant_aggregator=ma, name="Merchant", actor=SYSTEM)
store = a.store_create(merchant=merchant, name="Store", actor=SYSTEM)
tsns = [c.device_create(merchant=merchant, store=store, make="Bench", model="T1", serial=f"{{i:06d}}",
                        actor=SYSTEM).tsn for i in range({devices})]
c.service_activate(obj=ma, actor=SYSTEM)
c.service_activate(obj=merchant, actor=SYSTEM)
pos = a.pos_create(store=store, name="Bench POS", actor=SYSTEM)
print(json.dumps({{"client_id": pos.client_id, "client_secret": pos.client_secret, "tsns": tsns}}))
""")
    return Demo(domain="bench", client_id=data["client_id"], client_secret=data["client_secret"], tsns=data["tsns"])


class Tsns:
    """Hands out terminals of the demo, each once, across the parts of a run."""

    def __init__(self, demo: Demo) -> None:
        self.left = list(reversed(demo.tsns))

    def take(self, count: int) -> list[str]:
        if count > len(self.left):
            raise RuntimeError(f"the demo data has {len(self.left)} unused terminals left, {count} wanted")
        return [self.left.pop() for _ in range(count)]


# --- the protocol steps ------------------------------------------------------------------------


def fetch_token(http_url: str, demo: Demo) -> str:
    basic = b64encode(f"{demo.client_id}:{demo.client_secret}".encode()).decode()
    request = urllib.request.Request(
        f"{http_url}/oauth2/v1/{demo.domain}/token",
        data=urllib.parse.urlencode({"grant_type": "client_credentials"}).encode(),
        headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["access_token"]


class Control:
    """A control socket (device-listener or pos-listener) speaking the JSON envelope."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.flow = 0

    async def request(self, resource: dict) -> dict:
        self.flow += 1
        flow_id = str(self.flow)
        await self.ws.send(json.dumps({"request": {"flow_id": flow_id, "resource": resource}}))
        while True:
            message = json.loads(await self.ws.recv())
            response = message.get("response")
            if response and response.get("flow_id") == flow_id:
                return response["resource"]


async def register_device(ws_url: str, demo: Demo, tsn: str):
    """Register on device-listener and open the device socket; returns the socket."""
    async with connect(f"{ws_url}/cloud-connector/v1/device-listener", compression=None) as listener:
        answer = await Control(listener).request(
            {"tsn": tsn, "custom_registration_data": {"client_id": demo.client_id, "client_secret": demo.client_secret}}
        )
    if answer.get("status") != "ok":
        raise RuntimeError(f"registration refused: {answer}")
    return await connect(
        answer["connection_url"],
        additional_headers=answer["authorization_header"],
        compression=None,
        max_size=MAX_SIZE,
        ping_interval=None,
    )


async def open_listener(ws_url: str, token: str):
    return await connect(
        f"{ws_url}/cloud-connector/v1/pos-listener",
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
    )


async def claim_session(pos: Control, token: str, tsn: str):
    """Claim a terminal on a pos-listener and open the session socket the answer names."""
    answer = await pos.request({"action": "claim", "tsn": tsn, "force": True})
    if answer.get("status") != "ok":
        raise RuntimeError(f"claim refused: {answer}")
    return await connect(
        answer["session_url"],
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
        max_size=MAX_SIZE,
        ping_interval=None,
    )


async def cloud_connector_pairs(
    device_side: Server, pos_side: Server, demo: Demo, tsns: list[str]
) -> tuple[list[Pair], object]:
    """Terminals registered on `device_side`, claimed and opened through `pos_side` (the
    session URL names the server that answered the claim)."""
    token = await asyncio.to_thread(fetch_token, pos_side.http, demo)
    listener = await open_listener(pos_side.ws, token)
    pos = Control(listener)
    pairs = []
    for tsn in tsns:
        device = await register_device(device_side.ws, demo, tsn)
        pairs.append(Pair(pos=await claim_session(pos, token, tsn), device=device))
    return pairs, listener


async def plain_pairs(server: Server, count: int) -> tuple[list[Pair], None]:
    pairs = []
    for i in range(count):
        options = {"compression": None, "max_size": MAX_SIZE, "ping_interval": None}
        device = await connect(f"{server.ws}/device/{i}", **options)
        pos = await connect(f"{server.ws}/pos/{i}", **options)
        pairs.append(Pair(pos=pos, device=device))
    await asyncio.sleep(0.2)
    return pairs, None


async def close_pairs(pairs: list[Pair], extra=None) -> None:
    for pair in pairs:
        await pair.pos.close()
        await pair.device.close()
    if extra is not None:
        await extra.close()
    await asyncio.sleep(0.5)


# --- report ------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def versions() -> str:
    names = ["Django", "channels", "daphne", "uvicorn", "granian", "uvloop", "websockets", "picows"]
    names += ["channels-redis", "redis", "psycopg"]
    return ", ".join([*(f"{name} {version(name)}" for name in names), node_versions()])


def node_versions() -> str:
    """Node and the `ws` the Node relay runs (from its lock; "?" where they cannot be read)."""
    try:
        node = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        node = "?"
    try:
        lock = json.loads((NODE_RELAY / "package-lock.json").read_text())
        ws = lock["packages"]["node_modules/ws"]["version"]
    except (OSError, KeyError, ValueError):
        ws = "?"
    return f"Node {node.lstrip('v')}, ws {ws}"


def backends() -> str:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    postgres = run(["psql", "-tA", DATABASE_URL.rsplit("/", 1)[0] + "/postgres", "-c", "show server_version"])
    info = run(["redis-cli", "-u", REDIS_URL, "info", "server"]).splitlines()
    redis = next((line.split(":", 1)[1].strip() for line in info if line.startswith("redis_version:")), "?")
    return f"PostgreSQL {postgres.strip() or '?'} and Redis {redis}, on the same machine"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def publish(name: str, body: list[str], *, write: bool) -> None:
    """Print a benchmark's section and, unless told not to, record it in docs/benchmarks.md
    (what each bench/*.py run on its own does with its result)."""
    print("\n".join(body))
    if write:
        write_section(name, body)
        print("\nwritten to docs/benchmarks.md")


def write_section(name: str, body: list[str]) -> None:
    """Replace (or append) the section between `<!-- name:start -->` and `<!-- name:end -->`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = start + "\n" + "\n".join(body).strip() + "\n" + end
    text = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n\n"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    REPORT.write_text(text)
