"""nginx.conf, checked without serving it: only directives current nginx allows, each where allowed; `nginx -t`."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import REPO


def nginx_directives(text: str) -> list[tuple[str, str]]:
    """(directive, enclosing block) for every directive in an nginx config; quotes and comments respected."""
    tokens, word, quote, comment = [], "", "", False
    for ch in text + "\n":
        if comment:
            comment = ch != "\n"
        elif quote:
            word += ch
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            word, quote = word + ch, ch
        elif ch == "#":
            comment = True
        elif ch.isspace() or ch in "{};":
            if word:
                tokens.append(word)
            word = ""
            if ch in "{};":
                tokens.append(ch)
        else:
            word += ch
    found, blocks, start, statement = [], ["main"], True, "main"
    for token in tokens:
        if token in ";{":
            start = True
            if token == "{":
                blocks.append(statement)
        elif token == "}":
            blocks.pop()
            start = True
        elif start:
            statement, start = token, False
            found.append((token, blocks[-1]))
    return found


def test_nginx_conf_uses_only_directives_current_nginx_allows_where_they_are():
    """The image runs a newer nginx than Debian's: no directive it dropped, none outside its contexts."""
    reference = json.loads((REPO / "tests/static/data/nginx-directives.json").read_text())["directives"]
    found = nginx_directives((REPO / "nginx.conf").read_text())
    assert ("proxy_pass", "location") in found and ("listen", "server") in found
    for directive, block in found:
        if block == "map":  # a map's lines are its entries, not directives
            continue
        assert directive in reference, f"{directive} is not an nginx directive any more"
        assert block in reference[directive], f"{directive} is not allowed in {block} (only {reference[directive]})"


def test_nginx_conf_passes_nginx_t(tmp_path):
    nginx = shutil.which("nginx") or pytest.fail("nginx is not installed: apt-get install nginx")
    result = subprocess.run(
        [
            nginx,
            "-t",
            "-c",
            str(REPO / "nginx.conf"),
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
            "-g",
            f"pid {tmp_path}/nginx.pid;",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
