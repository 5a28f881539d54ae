#!/usr/bin/env python3
"""The earlier kit's `python analyze_costs.py ...`, unchanged: the cost report from usage records.

The code is gateway_kit/cli/costs.py, also installed as `gateway-costs`. Run with --help for the options.
"""

from gateway_kit.cli.costs import main

if __name__ == "__main__":
    raise SystemExit(main())
