"""Run a Python server variant in the foreground: ``python -m roombench.servers py --port 8000``.

This is what :func:`roombench.servers.start_server` runs in a subprocess; it is also handy by
hand. Bad arguments print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import json
import sys
from typing import NoReturn, Sequence

from roombench.servers import VARIANTS
from roombench.servers.variants import SERVER_TOKEN_ENV


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block), so callers can show it as is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _port(text: str) -> int:  # named "int" below, for argparse messages
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1..65535, got {value}")
    return value


_port.__name__ = "int"



def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m roombench.servers``."""
    runnable = sorted(name for name, spec in VARIANTS.items() if spec.app_factory)
    parser = _OneLineParser(prog="python -m roombench.servers", description=__doc__)
    parser.add_argument("variant", choices=runnable, help="server variant")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--token", default=os.environ.get(SERVER_TOKEN_ENV),
                        help=f"require this token (auth and REST); default ${SERVER_TOKEN_ENV}, "
                        "which keeps it off the command line")
    parser.add_argument("--faults", default="", metavar="JSON",
                        help='deliberate misbehaviour for tests, e.g. \'{"drop_live_every": 2}\' (see Faults)')
    parser.add_argument("--redis", default="", metavar="URL",
                        help="Redis URL, for the variants that share state through Redis (py-redis)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, build the variant's ASGI app and serve it until SIGINT/SIGTERM."""
    parser = build_parser()
    args = parser.parse_args(argv)
    spec = VARIANTS[args.variant]
    module_name, _, factory_name = (spec.app_factory or "").partition(":")
    module = importlib.import_module(module_name)
    factory = getattr(module, factory_name)
    if args.faults and not spec.supports_faults:
        parser.error(f"server variant {spec.name!r} does not support faults")
    if bool(args.redis) != spec.redis:
        parser.error(f"server variant {spec.name!r} {'needs' if spec.redis else 'does not take'} --redis")
    kwargs = {"redis_url": args.redis} if spec.redis else {}
    if spec.supports_faults:
        try:
            faults = module.Faults(**json.loads(args.faults or "{}"))
        except (ValueError, TypeError) as exc:
            parser.error(f"bad --faults {args.faults!r}: {exc}")
        app = factory(token=args.token, faults=faults)
    else:
        app = factory(token=args.token, **kwargs)

    import uvicorn  # late: keeps `--help` and argument errors fast

    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,  # as server.js: a connect burst queues while the loop is busy (uvicorn: 2,048)
        # open websockets must not hold a SIGTERM hostage; start_server SIGKILLs after 5 s anyway
        timeout_graceful_shutdown=1,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
