"""`roombench sweep FILE.toml`: server variants x load steps x repeats -> results/<run-id>/.

A sweep file::

    name = "smoke"
    duration = 4          # measured seconds per step
    warmup = 1            # seconds before that whose latencies are discarded
    repeats = 1
    [defaults]            # scenario options for every step (see `roombench run --help`)
    room_size = 5
    [[variants]]
    name = "py"           # a built-in variant (roombench serve --help) ...
    stop_p99_ms = 100     # optional: stop stepping up once ack or fan-out p99 passes this
    [[variants]]
    name = "theirs"       # ... or an external server: a URL, or a start command
    url = "http://127.0.0.1:9000"
    profile = "their-profile.toml"
    [[steps]]
    users = 10
    rate = 1

Layout: ``run.json`` (machine, software, the plan, each step's status) and
``<variant>/s<step>-r<repeat>/summary.json`` (+ Locust CSVs). A finished step is never
redone: ``--resume DIR`` picks up an interrupted sweep where it stopped, redoing the steps
recorded ``interrupted`` (a SIGINT/SIGTERM cut them short) or ``failed``. ``chaos = "..."``
on a variant or a step (see bench.chaos) hurts the server the sweep started during it;
``impair = "..."`` (servers.proxy, `run --impair`) in [defaults], on a variant or a step puts
the impairment proxy between the load and the server (one per URL). A step's wins over its
variant's, a variant's over [defaults]'.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import signal
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roombench.exceptions import RoombenchError, UsageError
from roombench.measure.machine import machine_info
from roombench.bench.chaos import parse_chaos
from roombench.bench.run import Interrupted, RunOptions, interruptible, new_run_id, run
from roombench.chat.scenario import MAX_SECONDS, Scenario
from roombench.servers import VARIANTS, ServerProcess, start_external, start_server
from roombench.servers.process import check_command
from roombench.servers.proxy import parse_spec
from roombench.measure.summary import load_summary, write_json

RUN_SCHEMA = "roombench.run/1"
_SCENARIO_TYPES = {f.name: type(f.default) for f in dataclasses.fields(Scenario)}
_STEP_TYPES: dict[str, type] = {"users": int, "spawn_rate": float, "chaos": str, "impair": str, **_SCENARIO_TYPES}
#: step keys that are not the scenario's
_RUN_KEYS = ("users", "spawn_rate", "chaos", "impair")
#: ready_path is refused, not ignored: readiness of a command variant is GET /healthz
_VARIANT_TYPES: dict[str, type] = {"name": str, "url": str, "command": str, "profile": str, "token": str,
                                   "stop_p99_ms": float, "chaos": str, "impair": str}
_TOP_TYPES: dict[str, type] = {"name": str, "duration": float, "warmup": float, "repeats": int,
                               "defaults": dict, "variants": list, "steps": list}
_URL_SCHEMES = ("http://", "https://", "ws://", "wss://")


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read and check a sweep file, every key's type and range, before anything starts;
    UsageError names the file, the key and what was expected."""
    try:
        spec = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read sweep file {path}: {exc}") from None
    _check_table(path, "", spec, _TOP_TYPES)
    _check_range(path, "duration", spec.get("duration", 5.0), 0, MAX_SECONDS, low_open=True)
    _check_range(path, "warmup", spec.get("warmup", 0.0), 0, MAX_SECONDS)
    _check_range(path, "repeats", spec.get("repeats", 1), 1, 1000)
    variants, steps = spec.get("variants"), spec.get("steps")
    if not variants or not steps:
        raise UsageError(f"{path}: needs at least one [[variants]] and one [[steps]]")
    for i, v in enumerate(variants):
        _check_variant(path, f"variants[{i}]", v)
    for i, step in enumerate([spec.get("defaults", {}), *steps]):
        where = "defaults" if i == 0 else f"steps[{i - 1}]"
        _check_table(path, where + ".", step, _STEP_TYPES)
        _check_range(path, where + ".users", step.get("users", 10), 1, 1_000_000)
        _check_range(path, where + ".spawn_rate", step.get("spawn_rate", 100.0), 0, 1e6, low_open=True)
        _check_specs(path, where, step)
        try:
            _scenario(spec, step)  # the scenario's own ranges
        except UsageError as exc:
            raise UsageError(f"{path}: {where}: {exc}") from None
        if "chaos" in step and any("url" in v for v in variants):
            raise UsageError(f"{path}: {where}.chaos kills and pauses servers the sweep starts: "
                             "not one given by url (put chaos on the variants instead)")
    return spec


def _impair(spec: dict[str, Any], variant: dict[str, Any], step: dict[str, Any]) -> str | None:
    """The impairment SPEC of a step of a variant: the step's, else the variant's, else [defaults]'."""
    return step.get("impair", variant.get("impair", spec.get("defaults", {}).get("impair")))


def _check_variant(path: str | Path, where: str, v: Any) -> None:
    if not isinstance(v, dict):
        raise UsageError(f"{path}: {where} must be a table ([[variants]]), got {type(v).__name__}")
    _check_table(path, where + ".", v, _VARIANT_TYPES)
    if "name" not in v:
        raise UsageError(f"{path}: {where} needs a name")
    if "url" in v and "command" in v:
        raise UsageError(f"{path}: {where}.url and .command: give one of them, not both")
    if "url" not in v and "command" not in v and v["name"] not in VARIANTS:
        raise UsageError(f"{path}: variant {v['name']!r} is not built in ({', '.join(VARIANTS)}): give url or command")
    if "url" in v and not all(u.strip().startswith(_URL_SCHEMES) for u in v["url"].split(",")):
        raise UsageError(f"{path}: {where}.url must start with http://, https://, ws:// or wss://, got {v['url']!r}")
    if "command" in v:
        try:
            check_command(v["name"], v["command"])
        except UsageError as exc:
            raise UsageError(f"{path}: {where}.command: {exc}") from None
    _check_specs(path, where, v)
    if "chaos" in v and "url" in v:
        raise UsageError(f"{path}: {where}.chaos kills and pauses a server the sweep starts: not one given by url")
    if "stop_p99_ms" in v:
        _check_range(path, where + ".stop_p99_ms", v["stop_p99_ms"], 0, MAX_SECONDS * 1000, low_open=True)


#: the SPEC-valued keys and their parsers (each raises a one-line UsageError)
_SPECS: dict[str, Callable[[str], object]] = {"chaos": parse_chaos, "impair": parse_spec}


def _check_specs(path: str | Path, where: str, table: dict[str, Any]) -> None:
    """``chaos`` and ``impair`` of a variant, a step or [defaults] parse."""
    for key, parse in _SPECS.items():
        if key in table:
            try:
                parse(table[key])
            except UsageError as exc:
                raise UsageError(f"{path}: {where}.{key}: {exc}") from None


def _check_table(path: str | Path, where: str, table: Any, types: dict[str, type]) -> None:
    """Every key known and of its type (an int is a fine float; a bool is no number)."""
    if not isinstance(table, dict):
        raise UsageError(f"{path}: {where.rstrip('.') or 'top level'} must be a table, got {type(table).__name__}")
    for key, value in table.items():
        want = types.get(key)
        if want is None:
            raise UsageError(f"{path}: unknown key {where}{key} (unknown options are refused; known: "
                             f"{', '.join(sorted(types))})")
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if want is float
              else isinstance(value, want) and not (want is int and isinstance(value, bool)))
        if not ok:
            raise UsageError(f"{path}: {where}{key} must be {_TYPE_NAMES.get(want, want.__name__)}, got {value!r}")
        if want is list and not all(isinstance(item, dict) for item in value):
            raise UsageError(f"{path}: {where}{key} must be a list of tables ([[{key}]]), got {value!r}")


_TYPE_NAMES = {float: "a number", int: "an integer", str: "a string", dict: "a table", list: "a list of tables"}


def _check_range(path: str | Path, key: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    if not (math.isfinite(value) and (value > low if low_open else value >= low) and value <= high):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise UsageError(f"{path}: {key} must be {bound} and <= {high:g}, got {value!r}")


def _scenario(spec: dict[str, Any], step: dict[str, Any]) -> Scenario:
    opts = {**spec.get("defaults", {}), **step}
    opts.setdefault("warmup", spec.get("warmup", 0.0))
    return Scenario(**{k: v for k, v in opts.items() if k not in _RUN_KEYS}).validate()


def redacted(spec: dict[str, Any]) -> dict[str, Any]:
    """The sweep as run.json records it: every ``token`` (a variant's, a step's, the file's)
    replaced by "***", so a result folder can be shared."""
    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ("***" if k == "token" and v else scrub(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    return scrub(spec)


def plan(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (variant, step, repeat) in run order: variant by variant, stepping load up."""
    return [{"variant": v["name"], "step": i, "repeat": r, "dir": f"{v['name']}/s{i}-r{r}"}
            for v in spec["variants"] for i in range(len(spec["steps"])) for r in range(spec.get("repeats", 1))]


def sweep(path: str | Path, *, resume: Path | None = None, out_root: Path = Path("results"),
          progress: bool = True) -> Path:
    """Run (or resume) a sweep; returns its result folder. A SIGINT or SIGTERM stops the step
    that runs (what it measured is kept, the step is recorded ``interrupted``, not done), starts
    nothing more, writes run.json and raises :class:`Interrupted`; ``resume`` redoes every
    step not done (interrupted or failed), clearing what was recorded of it. ``progress``:
    each step's live status line (bench.progress)."""
    spec = load_sweep(path)
    out = resume or out_root / new_run_id()
    meta_path = out / "run.json"
    if resume is not None:
        if not meta_path.exists():
            raise UsageError(f"--resume {resume}: no run.json there")
        meta = load_run(out)
    else:
        meta = {"schema": RUN_SCHEMA, "sweep_file": str(path), "sweep": redacted(spec), "machine": machine_info(),
                "started": time.time(), "plan": plan(spec), "done": [], "capacity": {}}
    todo = [p for p in meta["plan"] if p["dir"] not in meta["done"]]
    progress = _Progress(len(todo), live=progress)
    with interruptible() as sig:
        try:
            for variant in spec["variants"]:
                items = [p for p in todo if p["variant"] == variant["name"]]
                if items:
                    _run_variant(spec, variant, items, out, meta, progress)
        finally:
            meta["finished"] = time.time()
            if sig.signum is not None:
                meta["interrupted_by"] = signal.Signals(sig.signum).name
                print(f"sweep interrupted by {meta['interrupted_by']}; finish it with: "
                      f"roombench sweep {path} --resume {out}", file=sys.stderr, flush=True)
            else:
                meta.pop("interrupted_by", None)
            write_json(meta_path, meta)
    return out


def _forget(meta: dict[str, Any], item: dict[str, Any], out: Path) -> None:
    """A step about to be (re)done: drop a stale failure or interruption and its old files."""
    for key in ("failed", "interrupted"):
        meta.get(key, {}).pop(item["dir"], None)
        if key in meta and not meta[key]:
            del meta[key]
    step_dir = out / item["dir"]
    if step_dir.is_dir():
        shutil.rmtree(step_dir)


def _run_variant(spec: dict[str, Any], variant: dict[str, Any], items: list[dict[str, Any]], out: Path,
                 meta: dict[str, Any], progress: _Progress) -> None:
    token = variant.get("token", "roombench")
    with _serve(variant, token, out) as server:
        url = server.url
        for item in items:
            step = spec["steps"][item["step"]]
            if item["step"] > meta["capacity"].get(variant["name"], {}).get("broke_at", 1 << 30):
                continue  # stop rule: this variant already broke at a lower step
            progress.show(item)
            _forget(meta, item, out)
            chaos = step.get("chaos", variant.get("chaos", spec.get("defaults", {}).get("chaos")))
            opts = RunOptions(host=url, users=step.get("users", 10), spawn_rate=step.get("spawn_rate", 100.0),
                              duration=spec.get("duration", 5.0), out=out / item["dir"], quiet=True,
                              profile=variant.get("profile"), chaos=chaos, target=server.server,
                              impair=_impair(spec, variant, step),
                              progress=progress.live, label=progress.label)
            given = {**spec.get("defaults", {}), **step}
            ack = opts.wire.ack_for(given.get("ack"))  # unset: the profile's
            scenario = _scenario(spec, step)  # a given transport is in it, validated
            transport = scenario.transport if given.get("transport") else (
                VARIANTS[variant["name"]].transport if variant["name"] in VARIANTS else "lean")
            opts.scenario = dataclasses.replace(scenario, token=token, ack=ack, transport=transport)
            try:
                code = run(opts)
            except RoombenchError as exc:  # one failed step is recorded, the sweep goes on
                meta.setdefault("failed", {})[item["dir"]] = str(exc)
            except Interrupted as exc:  # before Locust measured anything
                meta.setdefault("interrupted", {})[item["dir"]] = signal.Signals(exc.signum).name
                raise
            else:
                if code >= 128:  # a signal stopped it: kept, marked, not done; nothing more starts
                    meta.setdefault("interrupted", {})[item["dir"]] = signal.Signals(code - 128).name
                    write_json(out / "run.json", meta)
                    raise Interrupted(code - 128)
                meta["done"].append(item["dir"])
                _stop_rule(variant, item, out, meta)
            finally:
                write_json(out / "run.json", meta)


def _stop_rule(variant: dict[str, Any], item: dict[str, Any], out: Path, meta: dict[str, Any]) -> None:
    limit = variant.get("stop_p99_ms")
    if limit is None:
        return
    lat = load_summary(out / item["dir"] / "summary.json")["latency_ms"]
    p99 = max(lat[m]["p99"] or 0.0 for m in ("ack", "fanout"))
    cap = meta["capacity"].setdefault(variant["name"], {"held": None, "broke_at": 1 << 30, "limit_ms": limit})
    step = item["step"]
    if p99 > limit:  # one repeat over the limit is enough: that step did not hold
        cap["broke_at"] = min(cap["broke_at"], step)
        if cap["held"] is not None and cap["held"] >= step:
            cap["held"] = step - 1 if step > 0 else None
    elif step < cap["broke_at"]:
        cap["held"] = max(step, cap["held"] if cap["held"] is not None else -1)


class _Progress:
    """Step i of n, elapsed and an estimate of what is left."""

    def __init__(self, total: int, live: bool = True) -> None:
        self.total, self.i, self.t0, self.live = total, 0, time.monotonic(), live
        self.label = ""  # the live line's prefix (bench.progress): which step it is

    def show(self, item: dict[str, Any]) -> None:
        elapsed = time.monotonic() - self.t0
        left = f", ~{elapsed / self.i * (self.total - self.i):.0f} s left" if self.i else ""
        self.i += 1
        self.label = f"[{self.i}/{self.total}] {item['variant']} s{item['step']} "
        print(f"[{self.i}/{self.total}] {item['variant']} step {item['step']} repeat {item['repeat']} "
              f"(elapsed {elapsed:.0f} s{left})", flush=True)


class _serve:
    """Start a variant (built-in, command, or nothing for a URL); yields itself (``url``,
    ``server``: the ServerProcess, None for a URL)."""

    def __init__(self, variant: dict[str, Any], token: str, out: Path) -> None:
        self.variant, self.token, self.out = variant, token, out
        self.server: ServerProcess | None = None

    @property
    def url(self) -> str:
        return str(self.variant["url"]) if self.server is None else self.server.url

    def __enter__(self) -> _serve:
        v = self.variant
        if "url" in v:
            return self
        log = self.out / v["name"] / "server.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if "command" in v:
            self.server = start_external(v["name"], v["command"], token=self.token, log_path=str(log))
        else:
            self.server = start_server(v["name"], token=self.token, log_path=str(log))
        return self

    def __exit__(self, *_: Any) -> None:
        if self.server is not None:
            self.server.stop()


def load_run(folder: Path) -> dict[str, Any]:
    """run.json of a result folder (any readable schema version)."""
    from roombench.measure.summary import read_json

    meta = read_json(folder / "run.json")
    if meta.get("schema") != RUN_SCHEMA:
        raise UsageError(f"{folder}/run.json: unknown schema {meta.get('schema')!r}")
    return meta
