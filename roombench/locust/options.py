"""roombench's options in Locust: the scenario as custom arguments (the web UI's "Custom
parameters", also command-line flags), registered when this module is imported."""

from __future__ import annotations

import argparse
from typing import Any

from locust import events
from locust.env import Environment

from roombench.chat.scenario import Scenario, add_arguments
from roombench.wire.profile import DEFAULT_PROFILE, Profile, ack_follows_profile, load_profile


@events.init_command_line_parser.add_listener
def add_options(parser: Any, **_: Any) -> None:
    """Locust's ``init_command_line_parser`` listener: the scenario, profile and output options."""
    # Locust's web UI only shows options added to the parser itself, not to a group.
    add_arguments(parser, include_locust_ui=True)
    ack_follows_profile(parser)
    # not --profile: Locust has its own (a label that groups test runs)
    parser.add_argument("--server-profile", default="", include_in_web_ui=True, metavar="FILE",
                        help="profile TOML naming the server's events, fields, path, namespace, token placement "
                        "and backfill URL (a path or a shipped profile's name); empty: the contract's names")
    parser.add_argument("--summary-out", default="", help="write roombench's summary.json here at test stop "
                        "(and beside it the interval histograms: <metric>.hlog, intervals.json); the 2nd test "
                        "of one Locust process goes to test-2/NAME beside it, and so on: no overwrite")
    parser.add_argument("--live-out", default="", help="rewrite this live.json (progress) every interval")


def scenario_and_profile(environment: Environment) -> tuple[Scenario, Profile]:
    """The scenario and profile the environment's options (flags or the UI's form) say."""
    options = environment.parsed_options
    path = getattr(options, "server_profile", "")
    profile = load_profile(path) if path else DEFAULT_PROFILE
    # --ack "profile" (the default) means: confirm the way the profile's ack_mode says
    given = vars(options) if options is not None else {}
    resolved = argparse.Namespace(**{**given, "ack": profile.ack_for(given.get("ack"))})
    return Scenario.from_namespace(resolved), profile


def print_options_help() -> None:
    """The options this locustfile adds to Locust's (``python locustfiles/chat.py --help``)."""
    from locust.argument_parser import LocustArgumentParser

    parser = LocustArgumentParser(prog="locust -f locustfiles/chat.py", add_help=False, add_config_file_help=False,
                                  add_env_var_help=False, description="roombench's options, besides Locust's own "
                                  "(`locust --help`); in the web UI under Custom parameters.")
    add_options(parser)
    parser.print_help()
