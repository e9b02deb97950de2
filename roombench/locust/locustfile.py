"""The locustfile `roombench run` hands to Locust (same as locustfiles/chat.py)."""

from roombench.locust.users import ChatUser  # noqa: F401
