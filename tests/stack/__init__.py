"""Tests through the local stack (nginx, replicas, Redis, the fake upstream): the shared one, or one of their own."""
