"""Server variants under test: start one as a subprocess, wait until it is ready, stop it by pid.

Every variant speaks the contract of docs/PROTOCOL.md. A variant is data in :data:`VARIANTS`;
Python variants name an ASGI app factory that ``python -m roombench.servers <name>`` serves
with uvicorn, foreign ones (node, …) will give a ``command`` of their own.

Servers always run in their own process: the generator's gevent loop and the server's asyncio
loop must never share a core's time slice by accident, and a stop must leave nothing behind.
"""

from __future__ import annotations

from roombench.servers.process import READY_TIMEOUT, ServerProcess, free_port, start_external, start_server
from roombench.servers.variants import VARIANTS, Variant

__all__ = ["VARIANTS", "Variant", "ServerProcess", "start_server", "start_external", "free_port", "READY_TIMEOUT"]
