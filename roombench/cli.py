"""`roombench <verb>`: run, sweep, compare, plot, check, serve. Exit codes: 0 ok, 1 a gate failed, 2 usage or input error."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from roombench.exceptions import RoombenchError, UsageError
from roombench.wire.profile import DEFAULT_PROFILE, Profile, ack_follows_profile, load_profile
from roombench.chat.scenario import MAX_SECONDS, Scenario, add_arguments

_PROFILE_HELP = ("profile TOML naming the server's events, fields, path, namespace, token placement and backfill "
                 "URL (a path, or a shipped profile's name: default, renamed-example); default: the contract's names")


class _Parser(argparse.ArgumentParser):
    """One error line and a pointer to --help instead of argparse's full usage block.
    Subparsers inherit the class, so ``roombench run: error: ...`` names the verb."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="roombench", description="Load generator and benchmark for real-time room servers.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    r = sub.add_parser("run", help="one headless run (starts the embedded reference server unless --host)")
    r.add_argument("--host", help="server base URL, e.g. http://127.0.0.1:8000; several comma-separated URLs spread users over them (default: embedded reference server)")
    r.add_argument("--users", type=int, default=20, help="simulated app sessions (default 20, at least 1)")
    r.add_argument("--spawn-rate", type=float, default=20.0, help="users started per second (default 20, > 0)")
    r.add_argument("--processes", type=int, default=1,
                   help="generator processes (Locust master + N workers, at least 1); results are merged")
    r.add_argument("--duration", type=float, default=10.0,
                   help=f"seconds of sending (default 10; > 0 and at most {MAX_SECONDS:.0f} = 7 days)")
    r.add_argument("--out", type=Path, help="result folder, created if missing (default results/<run-id>/)")
    r.add_argument("--slo", action="append", default=[], metavar="EXPR",
                   help="gate, repeatable: 'ack.p99<50' (ms), 'fanout.p999<=100', 'lost==0', 'errors==0'")
    r.add_argument("--quiet", action="store_true", help="print nothing but errors (no progress line either)")
    r.add_argument("--profile", metavar="FILE", help=_PROFILE_HELP)
    _gate_arguments(r)
    _add_fault_arguments(r)
    add_arguments(r)
    ack_follows_profile(r)
    _add_impair_argument(r)

    c = sub.add_parser("check", help="conformance probe: which contract points does a server get wrong?")
    c.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000")
    c.add_argument("--profile", metavar="FILE", help=_PROFILE_HELP)
    c.add_argument("--token", default=None, help="auth token (the check also tries a wrong one)")
    c.add_argument("--transport", choices=["lean", "ws"], default="lean",
                   help="lean for a Socket.IO server (default), ws for the plain WebSocket envelope")
    c.add_argument("--timeout", type=float, default=3.0,
                   help="seconds each contract point may take (default 3, at most 3600; the whole check at most 5 times that)")
    c.add_argument("--suggest-profile", action="store_true",
                   help="send one message and print a profile whose field names match what came back "
                   "(event names from --profile, else the contract's)")

    w = sub.add_parser("sweep", help="server variants x load steps from a TOML file -> results/<run-id>/")
    w.add_argument("file", type=Path, help="sweep file, e.g. bench/sweeps/smoke.toml")
    w.add_argument("--resume", type=Path, metavar="DIR", help="finish an interrupted sweep in DIR")
    w.add_argument("--plot", action="store_true", help="also write the figures and report.md when done")
    w.add_argument("--quiet", action="store_true", help="no live progress line")
    _ci_arguments(w)

    cp = sub.add_parser("compare", help="base vs new (summary.json or result folders): ratios, verdicts, gates")
    cp.add_argument("base", type=Path, help="baseline: a summary.json, a run folder or a sweep folder")
    cp.add_argument("new", type=Path, help="the run to judge: same kinds")
    cp.add_argument("--fail-on", action="append", default=[], metavar="EXPR",
                    help="regression gate, repeatable: exit 1 when true, e.g. 'ack.p99>+30%%' (significant "
                    "and more than 30%% over the base), 'fanout.p99>+5ms', 'lost>0', 'ack.p99>50'")
    cp.add_argument("--min-effect", type=float, default=25.0, metavar="PCT",
                    help="changes smaller than this (%%) are 'not significant' (default 25: what two single "
                    "runs of one server differ by on a shared machine; lower it with repeats)")
    _ci_arguments(cp)

    pl = sub.add_parser("plot", help="PNG figures from a run's result folder, or figures and report.md from a sweep's")
    pl.add_argument("folder", type=Path, help="results/<run-id> (a run or a sweep)")
    pl.add_argument("--step", type=int, help="step for the spectra and phases (default: highest all variants ran)")

    _add_proxy_parser(sub)

    s = sub.add_parser("serve", help="run a server variant in the foreground")
    from roombench.servers import VARIANTS

    s.add_argument("variant", choices=sorted(VARIANTS), help="server variant")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--token", default=None, help="require this auth token")
    return p


def _ci_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML: one testcase per SLO / gate / step")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="write a Markdown summary (for a CI job summary page)")


def _gate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", type=Path, metavar="FILE",
                   help="compare the run against this summary.json or result folder at the end")
    p.add_argument("--fail-on", action="append", default=[], metavar="EXPR",
                   help="regression gate against --baseline, repeatable: 'ack.p99>+10%%', 'lost>0' (see compare)")
    p.add_argument("--abort-on-fail", action="store_true",
                   help="stop early once an --slo can no longer be met (still writes what was measured)")
    _ci_arguments(p)


def _add_fault_arguments(r: argparse.ArgumentParser) -> None:
    from roombench.servers import VARIANTS

    r.add_argument("--server", choices=sorted(VARIANTS), metavar="VARIANT",
                   help="start this server variant instead of the embedded py (not with --host): "
                   + ", ".join(sorted(VARIANTS)))
    r.add_argument("--chaos", metavar="SPEC",
                   help="kill / restart / pause the server roombench started, e.g. 'kill-every=4s,down=1s', "
                   "'pause-every=5s,for=2s', 'kill@8s,restart@11s' (times since the run started; "
                   "redis-server of a *-redis variant stays up)")


def _interrupted(exc: BaseException) -> int:
    """Exit code of a run or sweep a signal stopped: 130 (SIGINT) / 143 (SIGTERM)."""
    code = getattr(exc, "exit_code", 130)
    print(f"roombench: interrupted ({exc or 'SIGINT'})", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        # the check runs the generator's transport: gevent first, before ssl & co. are imported
        from gevent import monkey

        monkey.patch_all()
    args = _parser().parse_args(argv)
    from roombench.bench.run import Interrupted

    try:
        if args.verb == "run":
            return _run(args)
        if args.verb == "serve":
            return _serve(args)
        if args.verb == "check":
            return _check(args)
        if args.verb == "sweep":
            return _sweep(args)
        if args.verb == "plot":
            return _plot(args)
        if args.verb == "proxy":
            return _proxy(args)
        if args.verb == "compare":
            return _compare(args)
    except (KeyboardInterrupt, Interrupted) as exc:
        return _interrupted(exc)
    except RoombenchError as exc:  # UsageError included
        print(f"roombench: error: {exc}", file=sys.stderr)
        return 2
    return 2


def _sweep(args: argparse.Namespace) -> int:
    from roombench.bench.sweep import sweep

    out = sweep(args.file, resume=args.resume, progress=not args.quiet)
    if args.plot:
        from roombench.bench.plot import plot_all

        plot_all(out)
    _sweep_outputs(args, out)
    print(out)  # last line: the run folder, for scripts
    return 0


def _sweep_outputs(args: argparse.Namespace, out: Path) -> None:
    """--junit / --markdown of a finished sweep (a failed step is a failed testcase)."""
    from roombench.bench.ciout import junit_xml, step_checks, sweep_markdown, write_text
    from roombench.bench.sweep import load_run

    checks = step_checks(load_run(out))
    if args.junit:
        write_text(args.junit, junit_xml(checks, suite="roombench-sweep"))
    if args.markdown:
        write_text(args.markdown, sweep_markdown(out))


def _compare(args: argparse.Namespace) -> int:
    from roombench.bench.ciout import compare_markdown, gate_checks, junit_xml, write_text
    from roombench.bench.compare import compare, format_table, parse_gate

    if not (math.isfinite(args.min_effect) and 0 <= args.min_effect < 1000):
        raise UsageError(f"--min-effect must be a percentage >= 0, got {args.min_effect}")
    gates = [parse_gate(g) for g in args.fail_on]
    c = compare(args.base, args.new, gates, min_effect=args.min_effect / 100)
    print(format_table(c))
    if args.junit:
        write_text(args.junit, junit_xml(gate_checks(c), suite="roombench-compare"))
    if args.markdown:
        write_text(args.markdown, compare_markdown(c))
    return 0 if c.ok else 1


def _plot(args: argparse.Namespace) -> int:
    from roombench.bench.plot import plot_all

    for path in plot_all(args.folder, args.step):
        print(path)
    return 0


def _run(args: argparse.Namespace) -> int:
    from roombench.bench.run import RunOptions, run

    _check_run_options(args)
    profile = load_profile(args.profile) if args.profile else DEFAULT_PROFILE
    args.ack = profile.ack_for(args.ack)
    opts = RunOptions(host=args.host, users=args.users, spawn_rate=args.spawn_rate, processes=args.processes, duration=args.duration,
                      out=args.out, slos=args.slo, scenario=Scenario.from_namespace(args), quiet=args.quiet,
                      profile=profile, server=args.server, chaos=args.chaos, abort_on_fail=args.abort_on_fail,
                      ci=_run_ci(args))
    opts.impair = _impair_option(args)
    return run(opts)


def _run_ci(args: argparse.Namespace) -> object:
    from roombench.bench.ciout import CiOutputs

    if args.abort_on_fail and not args.slo:
        raise UsageError("--abort-on-fail needs an --slo to watch (e.g. --slo 'ack.p99<250')")
    if not (args.baseline or args.fail_on or args.junit or args.markdown):
        return None
    return CiOutputs(baseline=args.baseline, fail_on=tuple(args.fail_on), junit=args.junit, markdown=args.markdown)


def _check_run_options(args: argparse.Namespace) -> None:
    """The run's own options, before anything starts (the scenario validates its own)."""
    if args.users < 1:
        raise UsageError(f"--users must be at least 1, got {args.users}")
    if args.processes < 1:
        raise UsageError(f"--processes must be at least 1, got {args.processes}")
    if not (math.isfinite(args.spawn_rate) and args.spawn_rate > 0):
        raise UsageError(f"--spawn-rate must be a finite number > 0 users/s, got {args.spawn_rate}")
    if not (math.isfinite(args.duration) and 0 < args.duration <= MAX_SECONDS):
        raise UsageError(f"--duration must be > 0 and at most {MAX_SECONDS:.0f} seconds (7 days), got {args.duration}")
    if args.out is not None:
        _check_out_dir(args.out)


def _check_out_dir(out: Path) -> None:
    """--out must be a directory we can write: found now, not after the run. Creating it is
    the only reliable test (os.access says yes to root under /proc)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is not a directory; give a result folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create that directory ({exc.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: directory is not writable")


_IMPAIR_HELP = ("network impairment between the load and the server, by a TCP proxy (times from the first "
                "connection): latency=50ms,jitter=10ms,bandwidth=1mbit,reset-every=10s[:25%%],reset-all@5s,stall@8s:2s")


def _add_impair_argument(r: argparse.ArgumentParser) -> None:
    r.add_argument("--impair", metavar="SPEC", help=_IMPAIR_HELP)


def _impair_option(args: argparse.Namespace) -> str | None:
    """--impair checked before anything starts: a bad SPEC is one line and exit 2."""
    if not args.impair:
        return None
    from roombench.servers.proxy import parse_spec

    parse_spec(args.impair)
    return str(args.impair)


def _add_proxy_parser(sub: Any) -> None:
    x = sub.add_parser("proxy", help="a TCP proxy that impairs the network (latency, bandwidth, resets, stalls)")
    x.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="where to listen (default 127.0.0.1:0, a free port; the port is printed)")
    x.add_argument("--to", required=True, metavar="URL", help="the server, e.g. http://127.0.0.1:8000")
    x.add_argument("--impair", metavar="SPEC", default="", help=_IMPAIR_HELP)


def _proxy(args: argparse.Namespace) -> int:
    from roombench.servers.proxy import parse_address, parse_spec, serve

    parse_spec(args.impair) if args.impair else None  # bad input: one line before anything listens
    parse_address(args.to, "--to")
    parse_address(args.listen, "--listen")
    return serve(args.listen, args.to, args.impair)


def _check(args: argparse.Namespace) -> int:
    from roombench.check.points import check, format_results
    from roombench.transport.probe import check_url

    profile = load_profile(args.profile) if args.profile else DEFAULT_PROFILE
    for url in args.url.split(","):
        check_url(url.strip())  # a malformed URL is a usage error, not a failed check
    if not (math.isfinite(args.timeout) and 0 < args.timeout <= 3600):
        raise UsageError(f"--timeout must be > 0 and at most 3600 seconds, got {args.timeout}")
    if args.suggest_profile:
        return _suggest(args, profile)
    results = check(args.url, profile, args.token, args.timeout, args.transport)
    print(format_results(results, args.url, profile), flush=True)
    return 0 if all(r.ok for r in results) else 1


def _suggest(args: argparse.Namespace, profile: Profile) -> int:
    from roombench.check.client import Failed
    from roombench.check.suggest import suggest, to_toml

    try:
        print(to_toml(suggest(args.url, profile, args.token, args.timeout, args.transport)), end="", flush=True)
    except Failed as exc:
        print(f"roombench check --suggest-profile: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve(args: argparse.Namespace) -> int:
    from roombench.servers import VARIANTS
    from roombench.servers.__main__ import main as serve_main

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    spec = VARIANTS[args.variant]
    if not spec.app_factory or spec.processes > 1 or spec.redis:
        return _serve_managed(args)
    argv = [args.variant, "--host", args.host, "--port", str(args.port)]
    if args.token:
        argv += ["--token", args.token]
    return serve_main(argv)


def _serve_managed(args: argparse.Namespace) -> int:
    """A variant of several processes (or a foreign one): start it, print its URL(s) and
    wait for Ctrl-C or SIGTERM. Several processes get the ports --port, --port + 1, …"""
    import signal
    import time

    from roombench.servers import start_server

    def stop(*_: object) -> None:
        raise KeyboardInterrupt  # so a SIGTERM, too, stops every child before we exit

    signal.signal(signal.SIGTERM, stop)
    with start_server(args.variant, host=args.host, port=args.port, token=args.token) as server:
        print(f"roombench: {args.variant} serving at {server.url} (Ctrl-C stops it)", flush=True)
        try:
            while server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
        print(f"roombench: error: {args.variant} exited; log tail:\n{server.log_tail()}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
