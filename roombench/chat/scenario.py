"""Scenario options: what each virtual user does, shared by the CLI and Locust's UI."""

from __future__ import annotations

import argparse
import os
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from roombench.exceptions import UsageError
from roombench.wire.profile import Transport

#: upper bound of every time option (seconds): a week is more than any run; inf and nan are refused
MAX_SECONDS = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Scenario:
    """One virtual user's behaviour. Every field is also a Locust custom argument."""

    room_size: int = 10
    rooms_per_user: int = 1
    rate: float = 1.0  # messages per second per user (open loop)
    window: int = 0  # closed loop: at most this many unconfirmed messages per user; 0 = open loop at rate
    size: int = 64  # bytes of message content
    ack: Literal["callback", "echo"] = "callback"
    drop_every: float = 0.0  # mean seconds between forced TCP aborts per user; 0 = never
    drop_for: float = 0.0  # seconds a forced drop stays down before the reconnect backoff; 0 = just the backoff
    recovery: Literal["rest", "csr", "auto"] = "rest"  # after a reconnect: REST backfill, Socket.IO recovery, or both
    transport: Transport = "lean"
    token: str = ""
    typing_every: int = 10  # every N-th message is preceded by a typing event; 0 = never
    read_every: int = 10  # every N-th message is followed by a read receipt; 0 = never
    ack_timeout: float = 10.0
    connect_timeout: float = 10.0  # TCP + WebSocket upgrade + session connect, per attempt
    reconnect_delay: float = 1.0  # first reconnect backoff (socket.io default), then x2
    reconnect_delay_max: float = 30.0
    drain: float = 10.0  # max seconds to wait for in-flight messages at the end
    warmup: float = 0.0  # seconds at the start whose latency samples are discarded
    interval: float = 1.0  # seconds per interval histogram (measure.intervals)

    def validate(self) -> Scenario:
        """Raise UsageError naming the first bad option."""
        for f in fields(self):  # nan passes no comparison below, but inf would pass ">= 0"
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        week = MAX_SECONDS
        checks = [
            (self.room_size >= 1, "--room-size must be >= 1"),
            (self.rooms_per_user >= 1, "--rooms-per-user must be >= 1"),
            (self.rate > 0, "--rate must be > 0 messages/s per user"),
            (self.window >= 0, "--window must be >= 0 (0 = open loop at --rate)"),
            (0 <= self.size <= 1_000_000, "--size must be between 0 and 1000000 bytes"),
            (self.ack in ("callback", "echo"), "--ack must be callback or echo"),
            (0 <= self.drop_every <= week, f"--drop-every must be between 0 and {week:.0f} seconds"),
            (self.transport in ("lean", "compat", "ws"), "--transport must be lean, compat or ws"),
            (0 <= self.drop_for <= week, f"--drop-for must be between 0 and {week:.0f} seconds"),
            (self.drop_for == 0 or self.transport == "lean", "--drop-for needs --transport lean"),
            (self.recovery in ("rest", "csr", "auto"), "--recovery must be rest, csr or auto"),
            (self.recovery == "rest" or self.transport == "lean",
             ("--recovery csr/auto needs --transport lean (python-socketio's client does not implement "
              "connection state recovery; a plain WebSocket has none)")),
            (self.typing_every >= 0 and self.read_every >= 0, "--typing-every/--read-every must be >= 0"),
            (0 < self.ack_timeout <= week, f"--ack-timeout must be > 0 and <= {week:.0f} seconds"),
            (0 < self.connect_timeout <= week, f"--connect-timeout must be > 0 and <= {week:.0f} seconds"),
            (0 < self.reconnect_delay <= self.reconnect_delay_max, "--reconnect-delay must be > 0 and <= --reconnect-delay-max"),
            (self.reconnect_delay_max <= week, f"--reconnect-delay-max must be <= {week:.0f} seconds"),
            (0 <= self.drain <= week, f"--drain must be between 0 and {week:.0f} seconds"),
            (0 <= self.warmup <= week, f"--warmup must be between 0 and {week:.0f} seconds"),
            (0.1 <= self.interval <= 3600, "--interval must be between 0.1 and 3600 seconds"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for summary.json metadata (the token is redacted)."""
        d = asdict(self)
        d["token"] = "***" if self.token else ""
        return d

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace | Any) -> Scenario:
        """Build from parsed options (Locust's or ours); missing attributes keep defaults."""
        kwargs = {f.name: getattr(ns, f.name) for f in fields(cls) if getattr(ns, f.name, None) is not None}
        return cls(**kwargs).validate()


#: option help texts; drive both argparse and Locust's web UI
OPTION_HELP: dict[str, str] = {
    "room_size": "members per room",
    "rooms_per_user": "rooms each user joins",
    "rate": "messages per second per user (open loop; latency counts from the intended send time)",
    "window": "closed loop instead of --rate: each user keeps at most N messages unconfirmed and sends the next "
    "as soon as one is confirmed; measures capacity, but latency then counts from the actual send and hides "
    "stalls (coordinated omission), so measure latency with the open loop; 0 = open loop",
    "size": "message content size in bytes",
    "ack": "confirmation: callback (Socket.IO ack) or echo (own new_message with the temp_id)",
    "drop_every": "abort each user's TCP connection every N s on average (0 = never) to measure reconnect -> backfill",
    "drop_for": "a forced drop stays down this many seconds before reconnecting (e.g. longer than the "
    "server's maxDisconnectionDuration, so recovery must fail); 0 = only the reconnect backoff",
    "recovery": "after a reconnect: rest = rejoin + REST backfill; csr = rely on Socket.IO connection state "
    "recovery, rejoin + backfill only when the server did not recover; auto = recovery plus rejoin + backfill "
    "as a safety net (measures what recovery missed)",
    "transport": "lean (fast own framing) or compat (python-socketio Client) for Socket.IO; ws for a plain WebSocket server",
    "token": "auth token sent in the Socket.IO auth payload and as Bearer on REST",
    "typing_every": "send a typing event before every N-th message (0 = never)",
    "read_every": "send a read receipt after every N-th message (0 = never)",
    "ack_timeout": "seconds before an unconfirmed message counts as an ack timeout",
    "connect_timeout": "seconds each connect attempt (TCP, WebSocket upgrade, session connect) may take before "
    "it counts as connect_failed and the reconnect backoff starts (socket.io-client waits 20)",
    "reconnect_delay": "first reconnect delay in seconds (doubles up to --reconnect-delay-max, +-50%% jitter)",
    "reconnect_delay_max": "longest reconnect delay in seconds",
    "drain": "at the end, seconds to wait at most for in-flight messages before counting them",
    "warmup": "seconds at the start whose latency samples are discarded (the ledger still counts them)",
    "interval": "seconds per interval of the over-time histograms (<metric>.hlog, intervals.json, live.json)",
}
_SECONDS = {"drop_every", "drop_for", "ack_timeout", "connect_timeout", "reconnect_delay", "reconnect_delay_max", "drain", "warmup"}
OPTION_HELP |= {  # every time option is bounded; say so where users look
    k: v + " (at most 604800 = 7 days)" for k, v in OPTION_HELP.items() if k in _SECONDS
}


_CHOICES = {"ack": ["callback", "echo"], "transport": ["lean", "compat", "ws"], "recovery": ["rest", "csr", "auto"]}

#: the environment variable a Locust process reads the token from (`roombench run` sets it)
TOKEN_ENV = "ROOMBENCH_TOKEN"


def add_arguments(parser: Any, *, include_locust_ui: bool = False) -> None:
    """Add every scenario option to an argparse (or Locust's configargparse) parser."""
    defaults = Scenario()
    for f in fields(Scenario):
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {"default": default, "help": OPTION_HELP[f.name]}
        if f.name in _CHOICES:
            kwargs["choices"] = _CHOICES[f.name]
        else:
            kwargs["type"] = type(default)
        if f.name == "token":
            # a token on a command line is visible to every local user (ps): prefer the environment
            kwargs["default"] = os.environ.get(TOKEN_ENV, "")
            kwargs["help"] += f" (default: ${TOKEN_ENV}, which keeps it off the command line)"
        if include_locust_ui:
            kwargs["include_in_web_ui"] = True
            if f.name == "token":
                kwargs["is_secret"] = True
                # how roombench run hands it to its Locust child: never on a command line (ps)
                kwargs["env_var"] = TOKEN_ENV
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
