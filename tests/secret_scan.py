"""Find secrets where they must never be: files a test run wrote, and what the tests printed.

conftest.py runs find_in_tree() over pytest's basetemp when the session ends (logs, ledgers, results files,
stack state directories) and find_in_text() over every test's captured output, for every sentinel in
conftest.SENTINEL_SECRETS. Files a test wrote on purpose to hand a key to the gateway (conftest.write_secret)
are the only exceptions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Finding:
    where: str  # a file path, or "Captured stdout call of <test id>"
    line: int
    secret_name: str

    def __str__(self) -> str:
        return f"{self.where}:{self.line}: the {self.secret_name} sentinel key"


def find_in_text(text: str, where: str, secrets: dict[str, str]) -> list[Finding]:
    found = []
    for name, value in secrets.items():
        if value and value in text:
            found += [Finding(where, n, name) for n, line in enumerate(text.splitlines(), 1) if value in line]
    return found


def find_in_tree(root: Path, secrets: dict[str, str], skip: set[Path] = frozenset()) -> list[Finding]:
    """Every line of every regular file under root holding a secret; symlinks are not followed."""
    needles = {name: value.encode() for name, value in secrets.items() if value}
    skip = {p.resolve() for p in skip}
    found: list[Finding] = []
    for folder, _dirs, files in os.walk(root):
        for file_name in sorted(files):
            path = Path(folder) / file_name
            if path.is_symlink() or not path.is_file() or path.resolve() in skip:
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            for name, needle in needles.items():
                if needle in data:
                    found += [
                        Finding(str(path), n, name) for n, line in enumerate(data.splitlines(), 1) if needle in line
                    ]
    return found
