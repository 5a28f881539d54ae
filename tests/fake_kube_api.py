"""A small fake Kubernetes API server: GET and PUT of one Secret over HTTPS, as the admin page's key writer uses it.

- TLS with a certificate of its own for 127.0.0.1 (made here with `cryptography`), whose CA file the client trusts,
  as a pod trusts its service account's ca.crt.
- Every call needs `Authorization: Bearer <token>` (else 401); any other object or verb is 403, as RBAC answers a
  Role limited to one resourceName.
- PUT is conditional, as the real API server's update: a metadata.resourceVersion other than the current one is
  409 Conflict. `interfere` makes the next PUT meet another writer first (its entry is added, the version moves).

    with running_kube_api(tmp, "ai", "gw-mlflow-gateway-client-keys", '{"keys": []}') as api:
        api.url, api.account   # https://127.0.0.1:<port>, a directory with token, ca.crt and namespace
        api.keys()             # the entries of the Secret's keys.json now
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway_kit import keys

TOKEN = "fake-service-account-token"


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (cert file, key file). The cert is its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kube-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "apiserver.crt", directory / "apiserver.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@dataclass
class FakeKubeApi:
    namespace: str
    name: str
    url: str = ""
    account: Path = Path()
    version: int = 1
    data: dict[str, str] = field(default_factory=dict)  # the Secret's data, base64 as the API keeps it
    calls: list[tuple[str, int]] = field(default_factory=list)  # (verb, status) of every call, in order
    interfere: int = 0  # PUTs that meet another writer first
    exists: bool = True  # False: the Secret was never created (404)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets/{self.name}"

    def secret(self) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.name, "namespace": self.namespace, "resourceVersion": str(self.version)},
            "type": "Opaque",
            "data": dict(self.data),
        }

    def keys_text(self) -> str:
        return base64.b64decode(self.data.get("keys.json", "")).decode()

    def keys(self) -> list[dict]:
        return keys.parse_entries(self.keys_text(), "the fake Secret")

    def other_writer(self) -> None:
        """Someone else adds a key in between (scripts/gateway_keys.sh + kubectl apply, another page)."""
        _, entry = keys.new_key("other-writer")
        self.data["keys.json"] = base64.b64encode(keys.dumps([*self.keys(), entry]).encode()).decode()
        self.version += 1


def _handler(api: FakeKubeApi):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def answer(self, status: int, body: dict) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def status(self, code: int, reason: str) -> None:
            self.answer(
                code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}
            )

        def handle_verb(self, verb: str) -> None:
            body = b""
            if verb == "PUT":
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with api.lock:
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    code, reply = 401, None
                elif self.path != api.path or verb not in ("GET", "PUT"):
                    code, reply = 403, None
                elif not api.exists:
                    code, reply = 404, None
                elif verb == "GET":
                    code, reply = 200, api.secret()
                else:
                    if api.interfere:
                        api.interfere -= 1
                        api.other_writer()
                    sent = json.loads(body)
                    if sent["metadata"].get("resourceVersion") != str(api.version):
                        code, reply = 409, None
                    else:
                        api.data = dict(sent.get("data") or {})
                        api.version += 1
                        code, reply = 200, api.secret()
                api.calls.append((verb, code))
            if reply is None:
                self.status(code, {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict"}[code])
            else:
                self.answer(code, reply)

        def do_GET(self) -> None:
            self.handle_verb("GET")

        def do_PUT(self) -> None:
            self.handle_verb("PUT")

        def do_POST(self) -> None:
            self.handle_verb("POST")

        def do_DELETE(self) -> None:
            self.handle_verb("DELETE")

    return Handler


@contextmanager
def running_kube_api(directory: Path, namespace: str, name: str, keys_json: str | None) -> Iterator[FakeKubeApi]:
    """The fake API server on a free port of 127.0.0.1, holding the Secret `name` (none when keys_json is None),
    and a service account directory (token, ca.crt, namespace) for its client."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = certificate(directory)
    api = FakeKubeApi(namespace, name)
    if keys_json is not None:
        api.data = {"keys.json": base64.b64encode(keys_json.encode()).decode()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    api.exists = keys_json is not None
    api.url = f"https://127.0.0.1:{server.server_address[1]}"
    api.account = directory / "serviceaccount"
    api.account.mkdir(exist_ok=True)
    (api.account / "token").write_text(TOKEN)
    (api.account / "ca.crt").write_bytes(cert_file.read_bytes())
    (api.account / "namespace").write_text(namespace)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
