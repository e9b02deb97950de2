"""The server variants by name: each is data (a :class:`Variant`), not code.

Add a variant: one entry in :data:`VARIANTS` and, for a Python server, a module beside this
one with an ASGI app factory (``create_app(token=..., faults=...)``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from roombench.exceptions import ServerError
from roombench.wire.profile import Transport

@dataclass(frozen=True)
class Variant:
    """One way to run a server that speaks the contract.

    ``app_factory`` ("module:function") builds an ASGI app from ``token=`` and ``faults=``;
    ``python -m roombench.servers <name>`` serves it. ``command``, when given, replaces that:
    it gets (host, port, token) and returns the argv of a foreign server (never with the token
    in it: every local user can read a command line; the server reads $ROOMBENCH_SERVER_TOKEN). ``processes``: how
    many processes of it :func:`start_server` runs, one port each (the generator spreads
    users over their URLs). ``redis``: :func:`start_server` first starts a private
    ``redis-server`` and passes every process ``--redis redis://127.0.0.1:P/0``.
    ``transport``: the generator transport that speaks to it.
    """

    name: str
    description: str
    app_factory: str | None = None
    supports_faults: bool = False
    command: Callable[[str, int, str | None], list[str]] | None = None
    processes: int = 1
    redis: bool = False
    #: the generator transport that speaks to it ("ws" for the plain WebSocket variant)
    transport: Transport = "lean"


#: where a server we start reads its token: a command line is visible to every local user (ps)
SERVER_TOKEN_ENV = "ROOMBENCH_SERVER_TOKEN"

#: the node variant's package: server.js, package.json and (after `npm ci`) node_modules
NODE_DIR = Path(__file__).resolve().parent / "node"


def _node_command(host: str, port: int, token: str | None) -> list[str]:
    """argv of the node variant; raises :class:`ServerError` when node or its packages are missing."""
    node = shutil.which("node")
    if node is None:
        raise ServerError("server variant 'node' needs Node.js (>= 20) on PATH: `node` was not found")
    if not (NODE_DIR / "node_modules" / "socket.io").is_dir():
        raise ServerError(
            f"server variant 'node' has no node_modules in {NODE_DIR}; "
            "run: npm ci --prefix roombench/servers/node"
        )
    # the token goes by environment (SERVER_TOKEN_ENV, set by process._popen), never argv
    return [node, str(NODE_DIR / "server.js"), "--host", host, "--port", str(port)]


VARIANTS: dict[str, Variant] = {
    "py": Variant(
        name="py",
        description="python-socketio AsyncServer on uvicorn, one process, in memory",
        app_factory="roombench.servers.reference:create_app",
        supports_faults=True,
    ),
    "py-renamed": Variant(
        name="py-renamed",
        description="the py server under profiles/renamed-example.toml: other event and field names, "
        "path /rt/, namespace /chat, token in the query, wrapped backfill",
        app_factory="roombench.servers.renamed:create_app",
        supports_faults=True,
    ),
    "py-foreign": Variant(
        name="py-foreign",
        description="an independent server under profiles/foreign-example.toml: names users by socket id, "
        "string ids, ack before echo, X-Access-Token and cursor pages on REST",
        app_factory="roombench.servers.foreign:create_app",
    ),
    "py-redis": Variant(
        name="py-redis",
        description="the py app in 2 uvicorn processes sharing rooms (AsyncRedisManager) "
        "and messages (sorted sets) through one redis-server",
        app_factory="roombench.servers.redis_store:create_app",
        processes=2,
        redis=True,
    ),
    "node": Variant(
        name="node",
        description="Node's official socket.io server on node:http, one process, in memory",
        supports_faults=True,
        command=_node_command,
    ),
    "node-redis": Variant(
        name="node-redis",
        description="the node server in 2 processes sharing rooms (@socket.io/redis-adapter) "
        "and messages (sorted sets) through one redis-server",
        command=_node_command,
        processes=2,
        redis=True,
    ),
    "ws": Variant(
        name="ws",
        description="plain WebSocket (JSON envelope, no Socket.IO) on uvicorn, one process, in memory; "
        "needs --transport ws",
        app_factory="roombench.servers.wsserver:create_app",
        supports_faults=True,
        transport="ws",
    ),
}
