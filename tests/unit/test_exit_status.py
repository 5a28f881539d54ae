"""The exit statuses every command shares (gateway_kit.exit_status): the numbers tests and scripts rely on,
and the module's table, which is their documentation."""

from __future__ import annotations

import re

from gateway_kit import exit_status
from gateway_kit.exit_status import ExitStatus


def test_the_numbers_are_the_ones_the_commands_always_used():
    assert {s.name: int(s) for s in ExitStatus} == {
        "OK": 0,
        "FAILED": 1,
        "USAGE": 2,
        "UNREACHABLE": 3,
        "CONFIG": 78,
        "INTERRUPTED": 130,
    }


def test_the_documented_table_lists_every_status_once():
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", exit_status.__doc__, flags=re.MULTILINE)
    assert rows == [(str(int(s)), s.name) for s in ExitStatus]
