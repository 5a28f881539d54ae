"""Unit tests: the kit's logic with scripted fakes and injected clocks; no root, no server, no network."""
