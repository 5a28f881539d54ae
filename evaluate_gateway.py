#!/usr/bin/env python3
"""The earlier kit's `python evaluate_gateway.py ...`, unchanged: evaluate and load-test a running gateway.

The code is gateway_kit/cli/evaluate.py, also installed as `gateway-evaluate`. Run with --help for the options.
"""

from gateway_kit.cli.evaluate import entry

if __name__ == "__main__":
    raise SystemExit(entry())
