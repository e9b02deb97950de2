"""The chat scenario: `locust -f locustfiles/chat.py --host http://127.0.0.1:8000`.

Scenario options (room size, rate, ack mode, drops, transport...) appear in the web UI's
"Custom parameters" and as command-line flags; see `locust -f locustfiles/chat.py --help`.
"""

from roombench.locust.users import ChatUser  # noqa: F401  (Locust collects User classes from this module)
