"""Provider keys: where they come from, and whether they look real.

A key named NAME (written `$NAME` in config.yaml) is read from, in order:
  1. the environment variable NAME,
  2. the file named by NAME_FILE,
  3. the file /run/secrets/<name in lower case> (Docker secrets; GATEWAY_SECRETS_DIR moves it).

A key value is never printed, logged or written to disk by the gateway (scripts/local_stack.sh keeps the keys
`up` had in its state directory, mode 600, for the replicas `scale` starts).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from gateway_kit import settings
from gateway_kit.launcher import current

# "sk-your-actual-key-here", "<your key>", "xxxx", "changeme", "..." and friends.
_PLACEHOLDER = re.compile(
    r"your|x{4,}|changeme|change[-_]me|placeholder|replace|<.*>|example|^\.\.\.|\.\.\.$|^todo$|^none$|^null$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class KeyLookup:
    name: str
    value: str | None  # None when missing or unusable
    problem: str | None  # why it cannot be used; never contains the value
    source: str  # "environment", "file <path>" or "" when missing


def secrets_dir() -> Path:
    """GATEWAY_SECRETS_DIR (gateway_kit.settings), default /run/secrets."""
    return Path(settings.read("GATEWAY_SECRETS_DIR"))


def variable_of(name: str) -> str:
    """The variable a key's problem is reported under: NAME_FILE when that names the file, else NAME."""
    return f"{name}_FILE" if f"{name}_FILE" in os.environ else name


def key_problem(value: str) -> str | None:
    """Why `value` cannot be a real API key, or None when it may be one."""
    if value == "":
        return "is empty"
    if value != value.strip():
        return f"has leading or trailing whitespace or a newline (check it in {current().keys_at})"
    if value[0] in "'\"" or value[-1] in "'\"":
        return f"is wrapped in quotes (write NAME=sk-... without quotes, in {current().keys_at})"
    if _PLACEHOLDER.search(value):
        return "is a placeholder, not a real key"
    return None


def lookup_key(name: str) -> KeyLookup:
    if name in os.environ:
        value, source = os.environ[name], "environment"
    else:
        file_name = os.environ.get(f"{name}_FILE") or str(secrets_dir() / name.lower())
        path = Path(file_name)
        if not path.is_file():
            if f"{name}_FILE" in os.environ:
                return KeyLookup(name, None, f"file {file_name} (from {name}_FILE) does not exist", "")
            return KeyLookup(name, None, "is not set", "")
        try:
            value = path.read_text()
        except OSError as e:
            return KeyLookup(name, None, f"file {file_name} cannot be read ({e.strerror})", "")
        # A secret file conventionally ends with one newline (echo key > file): not part of the key.
        value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
        source = f"file {file_name}"
    problem = key_problem(value)
    return KeyLookup(name, None if problem else value, problem, source)


def export_file_keys(names: list[str]) -> None:
    """Put keys that live in files into this process's environment, where MLflow resolves `$NAME`."""
    for name in names:
        if name not in os.environ:
            found = lookup_key(name)
            if found.value is not None:
                os.environ[name] = found.value


def let_mlflow_resolve_keys() -> None:
    """Tell MLflow to resolve `$NAME` keys from the environment or a file, as mlflow.gateway.app's
    create_app_from_path does (the kit builds the app from a config it read itself)."""
    from mlflow.environment_variables import (
        MLFLOW_GATEWAY_RESOLVE_API_KEY_FROM_ENV,
        MLFLOW_GATEWAY_RESOLVE_API_KEY_FROM_FILE,
    )

    os.environ[MLFLOW_GATEWAY_RESOLVE_API_KEY_FROM_ENV.name] = "true"
    os.environ[MLFLOW_GATEWAY_RESOLVE_API_KEY_FROM_FILE.name] = "true"


# ------------------------------------------------------------------------------------- redaction
# What a provider or client key looks like where the kit cannot know it: OpenAI and Anthropic keys
# (sk-..., sk-proj-..., sk-ant-...) and bearer tokens. Exact known keys are redacted too (redact_keys).
_KEY_LOOKING = re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}|(?i:bearer\s+)[A-Za-z0-9._~+/\-]{8,}=*")
REDACTED = "[redacted key]"
_known_keys: list[str] = []


def redact_keys(names: list[str]) -> None:
    """From now on, redact() also hides the values of these key variables (Azure keys look like any hex)."""
    for name in names:
        value = os.environ.get(name, "")
        if len(value) >= 8 and value not in _known_keys:
            _known_keys.append(value)


def redact(text: str) -> str:
    """`text` with every key this process knows, and anything that looks like a key, replaced."""
    for key in _known_keys:
        if key in text:
            text = text.replace(key, REDACTED)
    if "sk-" in text or "earer" in text:
        text = _KEY_LOOKING.sub(REDACTED, text)
    return text


class RedactingFilter:
    """A logging filter for handlers: no key reaches a log line, a traceback's text included.

    MLflow raises a provider's error with the provider's message (OpenAI's 401 names the key it got); when that
    happens mid-stream, uvicorn logs the traceback. The filter formats it early and redacts the text.
    """

    _formatter = None

    def filter(self, record) -> bool:
        import logging

        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            RedactingFilter._formatter = RedactingFilter._formatter or logging.Formatter()
            record.exc_text = RedactingFilter._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def redact_logs() -> None:
    """Put RedactingFilter on every log handler this process has (gunicorn's, uvicorn's, the kit's, root's)."""
    import logging

    loggers = [logging.getLogger()] + [
        v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
