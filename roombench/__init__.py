"""roombench: load generator and benchmark suite for real-time room servers.

The public API is small; everything else is internal and may change.
"""

from __future__ import annotations

from roombench.exceptions import (
    BackfillError,
    ConnectFailed,
    ProtocolError,
    RoombenchError,
    ServerError,
    TransportError,
    UsageError,
)
from roombench.wire.profile import DEFAULT_PROFILE, Profile
from roombench.chat.scenario import Scenario

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PROFILE",
    "BackfillError",
    "ConnectFailed",
    "Profile",
    "ProtocolError",
    "RoombenchError",
    "Scenario",
    "ServerError",
    "TransportError",
    "UsageError",
    "__version__",
]
