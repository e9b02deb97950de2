"""The chat scenario: `locust -f locustfiles/chat.py --host http://127.0.0.1:8000`.

Scenario options (room size, rate, ack mode, drops, transport...) appear in the web UI's
"Custom parameters" and work as command-line flags. Locust prints its ``--help`` before it
loads a locustfile, so it cannot list them: `python locustfiles/chat.py --help` does.
The web UI gets a "roombench" tab (see README.md, "Web UI"); distributed runs:
docs/distributed.md.
"""

from roombench.locust.users import ChatUser  # noqa: F401  (Locust collects User classes from this module)

if __name__ == "__main__":
    from roombench.locust.options import print_options_help

    print_options_help()
