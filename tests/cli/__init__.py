"""Tests of the operator's commands (analyze_costs.py) as a user runs them, on files a test writes: no server."""
