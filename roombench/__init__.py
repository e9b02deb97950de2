"""roombench: load generator and benchmark suite for real-time room servers.

The public API is small; everything else is internal and may change.
"""

from __future__ import annotations

from .exceptions import (
    BackfillError,
    ConnectFailed,
    ProtocolError,
    RoombenchError,
    ServerError,
    TransportError,
    UsageError,
)
from .protocol import DEFAULT_PROFILE, Profile
from .scenario import Scenario

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
