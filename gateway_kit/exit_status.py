"""The exit statuses of every command of the kit, in one table (as httpie's status.py).

| status | name | meaning |
| --- | --- | --- |
| 0 | `OK` | done: every check passed, the report or the key was written |
| 1 | `FAILED` | the command ran and its verdict is no: a request or a threshold failed (evaluate_gateway.py), the total cost is above `--budget` (analyze_costs.py), nothing to revoke (gateway_keys), the fake upstream cannot listen; or evaluate_gateway.py could not finish (an unexpected error, the results file not written) |
| 2 | `USAGE` | something the user can fix: a bad flag, an invalid test file, an unreadable source or keys file, Docker not reachable for `--container`; nothing was sent |
| 3 | `UNREACHABLE` | the gateway did not answer its health check (evaluate_gateway.py) |
| 78 | `CONFIG` | sysexits.h's EX_CONFIG: config.yaml, pricing.yaml or a setting is broken, or no endpoint has a usable key (gateway_kit.preflight, so `entrypoint.sh` and `entrypoint.sh --check`) |
| 130 | `INTERRUPTED` | 128 + SIGINT: Ctrl-C (evaluate_gateway.py saves the requests that finished) |

The shell scripts keep the same numbers: 2 for a usage error, 78 from entrypoint.sh.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    CONFIG = 78
    INTERRUPTED = 130
