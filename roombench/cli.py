"""`roombench <verb>`: run, serve. Exit codes: 0 ok, 1 a gate failed, 2 usage or input error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .exceptions import RoombenchError, UsageError
from .scenario import Scenario, add_arguments


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roombench", description="Load generator and benchmark for real-time room servers.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    r = sub.add_parser("run", help="one headless run (starts the embedded reference server unless --host)")
    r.add_argument("--host", help="server base URL, e.g. http://127.0.0.1:8000; several comma-separated URLs spread users over them (default: embedded reference server)")
    r.add_argument("--users", type=int, default=20, help="simulated app sessions (default 20)")
    r.add_argument("--spawn-rate", type=float, default=20.0, help="users started per second (default 20)")
    r.add_argument("--duration", type=float, default=10.0, help="seconds of sending (default 10)")
    r.add_argument("--out", type=Path, help="result folder (default results/<run-id>/)")
    r.add_argument("--slo", action="append", default=[], metavar="EXPR",
                   help="gate, repeatable: 'ack.p99<50' (ms), 'fanout.p999<=100', 'lost==0', 'errors==0'")
    r.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_arguments(r)

    s = sub.add_parser("serve", help="run a server variant in the foreground")
    s.add_argument("variant", choices=["py"], help="server variant")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--token", default=None, help="require this auth token")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    args = _parser().parse_args(argv)
    try:
        if args.verb == "run":
            return _run(args)
        if args.verb == "serve":
            return _serve(args)
    except KeyboardInterrupt:
        print("roombench: interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        print(f"roombench: error: {exc}", file=sys.stderr)
        return 2
    except RoombenchError as exc:
        print(f"roombench: error: {exc}", file=sys.stderr)
        return 2
    return 2


def _run(args: argparse.Namespace) -> int:
    from .run import RunOptions, run

    opts = RunOptions(host=args.host, users=args.users, spawn_rate=args.spawn_rate, duration=args.duration,
                      out=args.out, slos=args.slo, scenario=Scenario.from_namespace(args), quiet=args.quiet)
    return run(opts)


def _serve(args: argparse.Namespace) -> int:
    from .servers.__main__ import main as serve_main

    argv = [args.variant, "--host", args.host, "--port", str(args.port)]
    if args.token:
        argv += ["--token", args.token]
    return serve_main(argv)


if __name__ == "__main__":
    sys.exit(main())
