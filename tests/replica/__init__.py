"""Tests that start one replica (entrypoint.sh, on a free port) or the fake upstream alone, never the stack."""
