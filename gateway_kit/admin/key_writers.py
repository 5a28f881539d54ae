"""Where the admin page reads and writes the client keys: the keys file, or a Kubernetes Secret.

- KeysFile: the keys file the replicas reread once a second (GATEWAY_KEYS_FILE), changed with gateway_kit.keys'
  own add and revoke (the same lock and atomic rename as scripts/gateway_keys.sh).
- SecretKeys (GATEWAY_ADMIN_KEYS_SECRET, the Helm chart): the Secret whose keys.json every replica mounts
  read-only. The page reads it through the Kubernetes API with its service account (the chart's Role allows get,
  update and patch of that one Secret), applies the change gateway_kit.keys makes to a file (new_key, without),
  and writes it back with the resourceVersion it read: when someone else wrote in between (409 Conflict), it
  reads again and retries, a bounded number of times. The replicas follow when the kubelet refreshes the
  mounted Secret: about a minute, not a second.

Both raise gateway_kit.keys.KeysFileError, worded for the user, when the keys cannot be read or written.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import requests

from gateway_kit import keys

T = TypeVar("T")
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")  # where Kubernetes mounts the token
DATA_KEY = "keys.json"  # the Secret's key the replicas mount as GATEWAY_KEYS_FILE
ATTEMPTS = 5  # writes lost to another writer (409) before the page gives up


@dataclass(frozen=True)
class KeysFile:
    """The keys file (GATEWAY_KEYS_FILE)."""

    path: Path
    follows = "about a second"  # each replica's workers look at the file once a second

    @property
    def where(self) -> str:
        return f"the keys file {self.path}"

    def entries(self) -> list[dict]:
        return keys.read_entries(self.path)

    def add(self, client: str) -> str:
        return keys.add(self.path, client)

    def revoke(self, client: str, prefix: str | None = None) -> int:
        return keys.revoke(self.path, client, prefix)


class Conflict(Exception):
    """The Secret changed since it was read (HTTP 409)."""


@dataclass(frozen=True)
class SecretKeys:
    """The keys.json of one Secret, through the Kubernetes API (GATEWAY_ADMIN_KEYS_SECRET)."""

    name: str
    namespace: str
    api: str  # https://host:port of the API server
    token_file: Path  # read before each call: Kubernetes rotates a projected token
    ca_file: Path
    timeout: float = 10.0
    follows = "about a minute (when the kubelet refreshes the Secret each replica mounts)"

    @classmethod
    def in_cluster(cls, name: str, environ: Mapping[str, str], account: Path | None = None) -> SecretKeys:
        """The Secret `name` in the pod's own namespace, reached as every in-cluster client does: the API server
        at KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT, the service account's token and CA."""
        account = account or SERVICE_ACCOUNT
        host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "443")
        try:
            namespace = (account / "namespace").read_text().strip()
        except OSError as e:
            raise keys.KeysFileError(
                f"GATEWAY_ADMIN_KEYS_SECRET={name}: no service account at {account} ({e.strerror}): the page "
                "writes the Secret with its pod's service account (the chart's admin.enabled gives it one)"
            ) from None
        if not host:
            raise keys.KeysFileError(
                f"GATEWAY_ADMIN_KEYS_SECRET={name}: KUBERNETES_SERVICE_HOST is not set: this is not a pod"
            )
        api = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        return cls(name, namespace, api, account / "token", account / "ca.crt")

    @property
    def where(self) -> str:
        return f"the Secret {self.namespace}/{self.name}"

    def _url(self) -> str:
        return f"{self.api}/api/v1/namespaces/{quote(self.namespace)}/secrets/{quote(self.name)}"

    def _call(self, method: str, body: dict | None = None) -> dict:
        try:
            token = self.token_file.read_text().strip()
            with requests.Session() as session:
                session.trust_env = False  # straight to the API server: no HTTPS_PROXY, no .netrc
                answer = session.request(
                    method,
                    self._url(),
                    json=body,
                    headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                    verify=str(self.ca_file),
                    timeout=self.timeout,
                )
        except OSError as e:  # requests' errors are OSErrors too
            raise keys.KeysFileError(f"{self.where}: the Kubernetes API did not answer ({type(e).__name__})") from None
        if answer.status_code == 409:
            raise Conflict
        if answer.status_code == 404:
            raise keys.KeysFileError(
                f"{self.where} does not exist: create it once, e.g. kubectl -n {self.namespace} create secret "
                f"generic {self.name} --from-literal={DATA_KEY}='{{\"keys\": []}}' (docs/kubernetes.md)"
            )
        if answer.status_code in (401, 403):
            raise keys.KeysFileError(
                f"{self.where}: the Kubernetes API refused the page's service account (HTTP {answer.status_code}): "
                "its Role must allow get and update of this Secret (the chart's admin Role does)"
            )
        if answer.status_code != 200:
            raise keys.KeysFileError(f"{self.where}: the Kubernetes API answered HTTP {answer.status_code}")
        try:
            return answer.json()
        except ValueError:
            raise keys.KeysFileError(f"{self.where}: the Kubernetes API's answer is not JSON") from None

    def _read(self) -> tuple[dict, list[dict]]:
        secret = self._call("GET")
        encoded = (secret.get("data") or {}).get(DATA_KEY, "")
        try:
            text = base64.b64decode(encoded, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise keys.KeysFileError(f"{self.where}: {DATA_KEY} is not base64 of UTF-8 text") from None
        return secret, keys.parse_entries(text, f"{self.where}, {DATA_KEY}")

    def entries(self) -> list[dict]:
        return self._read()[1]

    def _change(self, change: Callable[[list[dict]], tuple[list[dict] | None, T]]) -> T:
        """Read, change (None: nothing to write), write with the resourceVersion read; on a 409, again."""
        for _ in range(ATTEMPTS):
            secret, entries = self._read()
            changed, result = change(entries)
            if changed is None:
                return result
            data = {**(secret.get("data") or {}), DATA_KEY: base64.b64encode(keys.dumps(changed).encode()).decode()}
            try:
                # The whole object as read, so its metadata.resourceVersion makes the write conditional.
                self._call("PUT", {**secret, "data": data})
            except Conflict:
                continue
            return result
        raise keys.KeysFileError(
            f"{self.where} changed {ATTEMPTS} times while the page was writing it: nothing was changed, try again"
        )

    def add(self, client: str) -> str:
        key, entry = keys.new_key(client)
        return self._change(lambda entries: ([*entries, entry], key))

    def revoke(self, client: str, prefix: str | None = None) -> int:
        def change(entries: list[dict]) -> tuple[list[dict] | None, int]:
            kept = keys.without(entries, client, prefix)
            return (kept if len(kept) != len(entries) else None), len(entries) - len(kept)

        return self._change(change)


def chosen(keys_secret: str, keys_file: Path, environ: Mapping[str, str]) -> KeysFile | SecretKeys:
    """The Secret GATEWAY_ADMIN_KEYS_SECRET names, else the keys file."""
    return SecretKeys.in_cluster(keys_secret, environ) if keys_secret else KeysFile(keys_file)
