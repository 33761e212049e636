"""Starts the real EdgeTally binaries for the Python client tests.

An aggregator (with commission rules, Flight tokens and Flight SQL) and
one collector run on ephemeral loopback ports in a temporary directory.
Events go in over the collector's HTTP API; the tests read them back with
clients written elsewhere: pyarrow.flight and the ADBC Flight SQL driver.

The binaries come from `$EDGETALLY_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`,
else `target/debug`; `scripts/test` builds them first.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import secrets
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow.flight as flight
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

# Campaign 1 pays CPA 12.50 USD, campaign 2 a 10 % revenue share.
# Affiliate 7's parent, 8, earns 5 % of 7's commissions on top.
RULES = {
    "campaigns": [
        {
            "id": 1,
            "landing_url": "https://shop.example/1?click_id={click_id}",
            "payout": {"type": "cpa", "amount": "12.50", "currency": "USD"},
        },
        {
            "id": 2,
            "landing_url": "https://shop.example/2?click_id={click_id}",
            "payout": {"type": "revshare", "percent": "10"},
        },
    ],
    "affiliates": [
        {"id": 7, "parent_id": 8},
        {"id": 8, "override_percent": "5"},
    ],
}

EDGE_TOKEN = "python-tests-edge-token-0001"
STARTUP_SECONDS = 30
BROWSER_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


def bin_dir() -> pathlib.Path:
    if "EDGETALLY_BIN_DIR" in os.environ:
        return pathlib.Path(os.environ["EDGETALLY_BIN_DIR"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug"


def wait_for_json(path: pathlib.Path, process: subprocess.Popen) -> dict:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before writing {path}")
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.02)
    raise TimeoutError(f"{path} not written within {STARTUP_SECONDS} s")


def utc_day(ms: int) -> datetime.date:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc).date()


@dataclass
class Stack:
    """One aggregator and one collector, and the tokens to read with."""

    dir: pathlib.Path
    collector_url: str
    # The aggregator's /metrics and /healthz.
    aggregator_http_url: str
    flight_url: str
    flight_sql_url: str
    admin_token: str
    affiliate_7_token: str
    edge_token: str
    # The PEM certificate Flight and Flight SQL serve TLS with, or None
    # when they speak plain text.
    tls_root: bytes | None = None
    processes: list = field(default_factory=list)

    def options(self, token: str | None) -> flight.FlightCallOptions:
        headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
        return flight.FlightCallOptions(headers=headers, timeout=30)

    def client(self) -> flight.FlightClient:
        if self.tls_root is None:
            return flight.FlightClient(self.flight_url)
        return flight.FlightClient(self.flight_url, tls_root_certs=self.tls_root)

    def read(self, ticket: dict, token: str | None = None):
        """The whole answer to `ticket` as a pyarrow Table."""
        options = self.options(self.admin_token if token is None else token)
        reader = self.client().do_get(flight.Ticket(json.dumps(ticket).encode()), options)
        return reader.read_all()

    def post(self, events) -> dict:
        body = json.dumps(events).encode()
        request = urllib.request.Request(f"{self.collector_url}/v1/events", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)

    def pixel(self, affiliate_id: int, campaign_id: int) -> None:
        url = f"{self.collector_url}/p.gif?aff={affiliate_id}&cmp={campaign_id}"
        # As a browser: Python's own user agent is an HTTP library's, which
        # the collector counts apart as a bot.
        request = urllib.request.Request(url, headers={"User-Agent": BROWSER_USER_AGENT})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200

    def wait_until(self, what: str, condition, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} within {seconds} s")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def write_self_signed(cert_path: pathlib.Path, key_path: pathlib.Path) -> bytes:
    """A self-signed certificate for localhost and 127.0.0.1 (ECDSA P-256,
    valid for a day) and its key; returns the certificate's PEM."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_pem


def start_stack(dir: pathlib.Path, tls: bool = False, aggregator_args: Sequence[str] = ()) -> Stack:
    """Starts an aggregator and a collector in `dir`; with `tls`, Flight
    and Flight SQL serve TLS with a certificate made here. The aggregator
    gets `aggregator_args` after its own flags (`--exchange-rates <file>`,
    say)."""
    binaries = bin_dir()
    campaigns = dir / "campaigns.json"
    campaigns.write_text(json.dumps(RULES))
    edge_tokens = dir / "edge-tokens.json"
    edge_tokens.write_text(json.dumps({"edges": [{"edge_id": 1, "token": EDGE_TOKEN}]}))
    edge_token_file = dir / "edge-1.token"
    edge_token_file.write_text(EDGE_TOKEN)
    admin_token, affiliate_7_token, edge_role_token = (secrets.token_urlsafe(32) for _ in range(3))
    flight_tokens = dir / "flight-tokens.json"
    flight_tokens.write_text(
        json.dumps(
            {
                "tokens": [
                    {"name": "finance", "token": admin_token, "role": "admin"},
                    {"name": "affiliate-7", "token": affiliate_7_token, "role": "affiliate:7"},
                    {"name": "edge-1", "token": edge_role_token, "role": "edge"},
                ]
            }
        )
    )
    tls_root, tls_flags = None, []
    if tls:
        cert, key = dir / "flight-cert.pem", dir / "flight-key.pem"
        tls_root = write_self_signed(cert, key)
        tls_flags = ["--flight-tls-cert", str(cert), "--flight-tls-key", str(key)]
    logs = None if os.environ.get("TEST_LOG") else subprocess.DEVNULL
    processes = []
    try:
        aggregator_dir = dir / "aggregator"
        aggregator = subprocess.Popen(
            [
                str(binaries / "edgetally-aggregator"),
                *("--data-dir", str(aggregator_dir)),
                *("--quic-listen", "127.0.0.1:0", "--flight-listen", "127.0.0.1:0"),
                *("--flight-sql-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"),
                *("--edge-tokens", str(edge_tokens), "--campaigns", str(campaigns)),
                *("--flight-tokens", str(flight_tokens)),
                *tls_flags,
                *aggregator_args,
            ],
            stdout=logs,
            stderr=logs,
        )
        processes.append(aggregator)
        addresses = wait_for_json(aggregator_dir / "aggregator.json", aggregator)
        collector_dir = dir / "collector"
        collector = subprocess.Popen(
            [
                str(binaries / "edgetally-collector"),
                *("--data-dir", str(collector_dir), "--http-listen", "127.0.0.1:0"),
                *("--aggregator-addr", addresses["quic"], "--aggregator-cert", addresses["quic_cert"]),
                *("--edge-token-file", str(edge_token_file), "--edge-id", "1"),
                *("--campaigns", str(campaigns), "--flush-interval-ms", "50"),
                # Traffic counters every half second instead of every minute.
                *("--rollup-interval-ms", "500"),
                # Every visitor here is 127.0.0.1: the dashboard test's
                # three visitors click more than a person would in a
                # minute. The rules are tested in loadtest/tests/it/fraud.rs.
                *("--click-flood-per-minute", "0"),
            ],
            stdout=logs,
            stderr=logs,
        )
        processes.append(collector)
        collector_addresses = wait_for_json(collector_dir / "collector.json", collector)
    except BaseException:
        for process in processes:
            process.kill()
            process.wait()
        raise
    assert addresses["flight_tls"] == tls
    scheme = "grpc+tls" if tls else "grpc"
    return Stack(
        dir=dir,
        collector_url=f"http://{collector_addresses['http']}",
        aggregator_http_url=f"http://{addresses['http']}",
        flight_url=f"{scheme}://{addresses['flight']}",
        flight_sql_url=f"{scheme}://{addresses['flight_sql']}",
        admin_token=admin_token,
        affiliate_7_token=affiliate_7_token,
        edge_token=edge_role_token,
        tls_root=tls_root,
        processes=processes,
    )


@pytest.fixture
def fresh_stack():
    """A stack of its own, for a test that adds data."""
    with tempfile.TemporaryDirectory(prefix="edgetally-py-") as dir:
        stack = start_stack(pathlib.Path(dir))
        try:
            yield stack
        finally:
            stack.stop()


# The known traffic of the shared stack. Event times: T0 a minute ago and
# T1 a day earlier, so they fall on two different UTC days.
NOW_MS = int(time.time() * 1000)
T0 = NOW_MS - 60_000
T1 = T0 - 86_400_000
DAY0, DAY1 = utc_day(T0), utc_day(T1)


def sale(affiliate_id, campaign_id, order_id, amount, currency, time_ms):
    return {
        "kind": "sale",
        "affiliate_id": affiliate_id,
        "campaign_id": campaign_id,
        "order_id": order_id,
        "amount": amount,
        "currency": currency,
        "time": time_ms,
    }


SALES = [
    # CPA 12.50 USD; the parent's 5 % of 1250 cents is 62.5, to even: 62.
    sale(7, 1, "py-A", "100.00", "USD", T0),
    # 10 % of 80.00 EUR: 800 cents; the parent's 5 %: 40.
    sale(7, 2, "py-B", "80.00", "EUR", T1),
    # 10 % of 12.345 BHD is 1234.5 fils, to even: 1234.
    sale(9, 2, "py-C", "12.345", "BHD", T0),
    # CPA 12.50 USD.
    sale(9, 1, "py-D", "30.00", "USD", T1),
]

# (affiliate, UTC day, commission currency) -> (commission, parent's), minor units.
COMMISSION_BY_AFFILIATE_DAY = {
    (7, DAY0, "USD"): (1250, 62),
    (7, DAY1, "EUR"): (800, 40),
    (9, DAY0, "BHD"): (1234, 0),
    (9, DAY1, "USD"): (1250, 0),
}

# affiliate -> (impressions, sales); (affiliate, currency) -> (revenue, commission, parent's).
COUNTS = {7: (3, 2), 9: (2, 2)}
MONEY = {
    (7, "EUR"): (8000, 800, 40),
    (7, "USD"): (10000, 1250, 62),
    (9, "BHD"): (12345, 1234, 0),
    (9, "USD"): (3000, 1250, 0),
}


@pytest.fixture(scope="session")
def stack():
    """A stack loaded with the known traffic above, shared by the tests
    that only read."""
    with tempfile.TemporaryDirectory(prefix="edgetally-py-") as dir:
        stack = start_stack(pathlib.Path(dir))
        try:
            answer = stack.post(SALES)
            assert answer["accepted"] == len(SALES), answer
            for _ in range(3):
                stack.pixel(7, 1)
            for _ in range(2):
                stack.pixel(9, 2)
            bad = stack.post({"kind": "sale", "affiliate_id": 7, "campaign_id": 1, "amount": "1.00", "currency": "XXX"})
            assert bad["rejected"] == 1, bad
            # The edge answers a repeat of order py-A as a duplicate: a
            # finding in `alerts`, and nothing booked twice.
            again = stack.post(SALES[0])
            assert again["duplicates"] == 1, again

            def landed():
                rollups = stack.read({"dataset": "rollups", "group_by": []})
                conversions = stack.read({"dataset": "conversions"})
                quarantine = stack.read({"dataset": "quarantine"})
                impressions = sum(rollups.column("impressions").to_pylist())
                duplicates = sum(rollups.column("duplicates").to_pylist())
                return (
                    conversions.num_rows == len(SALES)
                    and impressions == 5
                    and duplicates == 1
                    and quarantine.num_rows == 1
                )

            stack.wait_until("the known traffic lands at the aggregator", landed)
            yield stack
        finally:
            stack.stop()
