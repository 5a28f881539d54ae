"""What a new connection per provider call costs against a distant TLS provider: stock MLflow vs the kit.

    .venv/bin/python bench/tls_rtt.py                    # RTT 40 ms, c=4, 15 s per target, 2 rounds
    .venv/bin/python bench/tls_rtt.py --rtt 80 --connections 8

The fake upstream serves HTTPS with a certificate from a throwaway CA that both gateways are told to trust
(SSL_CERT_FILE). Between the gateways and it sits a userspace TCP proxy that delays every byte by RTT/2 in
each direction, and holds a new connection's first bytes back one more RTT, as a TCP handshake would (this
kernel has no netem). Stock MLflow opens a new connection for every call: TCP handshake, TLS handshake, then
the request, three round trips. The kit keeps connections open: one round trip. The table shows p50 and p99
latency and requests/s for each, and the difference in round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import os
import shutil
import ssl
import sys
import tempfile
import time
from pathlib import Path

from gateway_kit.procs import clean_env, free_port
from lib import Servers, chat_body, markdown_table, median_run, wrk, wrk_script


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost signed by it: (ca, cert, key) PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-kit bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


# ------------------------------------------------------------------ the two servers this bench adds
async def serve_tls_fake(port: int, cert: str, key: str) -> None:
    """gateway_kit.fake_upstream's app over HTTPS."""
    from aiohttp import web

    from gateway_kit.fake_upstream import FakeUpstream, Settings

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(FakeUpstream(Settings(0, 0, 0, 0, "500", 0)).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    await asyncio.Event().wait()


async def serve_delay_proxy(port: int, target_port: int, rtt_ms: float) -> None:
    """Forward 127.0.0.1:port to 127.0.0.1:target_port, every byte RTT/2 late in each direction."""
    half = rtt_ms / 2000

    async def pipe(reader, writer, not_before: float) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()
            writer.close()

        delivery = asyncio.create_task(deliver())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((max(time.monotonic(), not_before) + half, data))
        except ConnectionError:
            pass
        queue.put_nowait(None)
        await delivery

    async def handle(client_reader, client_writer) -> None:
        accepted = time.monotonic()
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        # The client's first bytes wait one round trip more: the handshake a real connection would need.
        await asyncio.gather(
            pipe(client_reader, upstream_writer, accepted + 2 * half),
            pipe(upstream_reader, client_writer, 0.0),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------ the bench
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt", type=float, default=40, help="round-trip time to inject, ms (default 40)")
    parser.add_argument("--connections", type=int, default=4, help="concurrent connections (default 4)")
    parser.add_argument("--duration", type=int, default=15, help="seconds per measurement (default 15)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the median counts (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="workers per gateway (default 2)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)  # internal: run one of the servers above
    args = parser.parse_args(argv)
    if args.serve:
        kind, *rest = args.serve
        coro = (
            serve_tls_fake(int(rest[0]), rest[1], rest[2])
            if kind == "tls-fake"
            else serve_delay_proxy(int(rest[0]), int(rest[1]), float(rest[2]))
        )
        asyncio.run(coro)
        return 0

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-tls-"))
    ca, cert, key = make_certificates(work)
    trust = {"SSL_CERT_FILE": str(ca)}
    me = [sys.executable, str(Path(__file__).resolve()), "--serve"]
    with Servers(work) as servers:
        tls_port, proxy_port = free_port(), free_port()
        servers.start("tls-fake", [*me, "tls-fake", str(tls_port), str(cert), str(key)], clean_env())
        servers.start("delay-proxy", [*me, "delay-proxy", str(proxy_port), str(tls_port), str(args.rtt)], clean_env())
        upstream = f"https://127.0.0.1:{proxy_port}"
        os.environ["SSL_CERT_FILE"] = str(ca)  # for the wait below (urllib trusts it)
        servers.wait(f"{upstream}/health")
        kit = servers.kit(free_port(), upstream, args.workers, **trust)
        active = work / f"kit-{kit.rsplit(':', 1)[1]}" / "config.active.yaml"
        stock = servers.stock(free_port(), active, args.workers, **trust)
        targets = {"stock": stock, "kit": kit}
        script = wrk_script(work / "post.lua", chat_body("How far away is the provider?", model="chat"))
        for url in targets.values():
            wrk(f"{url}/v1/chat/completions", 3, args.connections, script)
        runs: dict[str, list[dict]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, url in targets.items():
                runs[name].append(wrk(f"{url}/v1/chat/completions", args.duration, args.connections, script))
    shutil.rmtree(work, ignore_errors=True)

    results = {name: median_run(rs) for name, rs in runs.items()}
    saved_ms = results["stock"]["p50_ms"] - results["kit"]["p50_ms"]
    if args.json:
        print(
            json.dumps(
                {
                    "options": vars(args),
                    "results": results,
                    "p50_saved_ms": saved_ms,
                    "p50_saved_rtts": saved_ms / args.rtt,
                },
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    print(
        f"\nTLS upstream, RTT {args.rtt:.0f} ms injected, c={args.connections}, {args.workers} workers, "
        f"{args.duration}s x {args.rounds} rounds (median)\n"
    )
    print(
        markdown_table(
            ["target", "p50 ms", "p99 ms", "requests/s", "errors"],
            [
                [name, f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['rps']:.0f}", r["errors"]]
                for name, r in results.items()
            ],
        )
    )
    print(
        f"\nthe kit saves {saved_ms:.1f} ms at p50 per request: {saved_ms / args.rtt:.1f} round trips "
        f"(goal: at least 1)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
