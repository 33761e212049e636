"""Flight and Flight SQL over TLS: pyarrow.flight and the ADBC driver
trust the aggregator's certificate and read exact answers; a client in
plain text, or one that does not trust the certificate, reads nothing."""

import json
import pathlib
import tempfile

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql
import pyarrow.flight as flight
import pytest

from conftest import T0, sale, start_stack

# CPA 12.50 USD on campaign 1; 10 % of 42.00 EUR on campaign 2.
TLS_SALES = [
    sale(9, 1, "tls-A", "20.00", "USD", T0),
    sale(9, 2, "tls-B", "42.00", "EUR", T0),
]
COMMISSION = {"USD": 1250, "EUR": 420}


@pytest.fixture(scope="module")
def tls_stack():
    with tempfile.TemporaryDirectory(prefix="edgetally-py-tls-") as dir:
        stack = start_stack(pathlib.Path(dir), tls=True)
        try:
            answer = stack.post(TLS_SALES)
            assert answer["accepted"] == len(TLS_SALES), answer
            stack.wait_until(
                "both sales over TLS",
                lambda: stack.read({"dataset": "conversions"}).num_rows == len(TLS_SALES),
            )
            yield stack
        finally:
            stack.stop()


def test_pyarrow_flight_reads_over_tls(tls_stack):
    assert tls_stack.flight_url.startswith("grpc+tls://")
    table = tls_stack.read({"dataset": "conversions"})
    commission = {row["commission_currency"]: row["commission_minor"] for row in table.to_pylist()}
    assert commission == COMMISSION


def test_adbc_runs_sql_over_tls(tls_stack):
    db_kwargs = {
        "adbc.flight.sql.authorization_header": f"Bearer {tls_stack.admin_token}",
        adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value: tls_stack.tls_root.decode(),
    }
    sql = "SELECT commission_currency, SUM(commission_minor) AS c FROM conversions GROUP BY 1 ORDER BY 1"
    with flightsql.connect(tls_stack.flight_sql_url, db_kwargs=db_kwargs, autocommit=True) as connection:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            rows = cursor.fetch_arrow_table().to_pylist()
    assert {row["commission_currency"]: row["c"] for row in rows} == COMMISSION


def test_plain_text_client_is_refused(tls_stack):
    plain = flight.FlightClient(tls_stack.flight_url.replace("grpc+tls://", "grpc://"))
    ticket = flight.Ticket(json.dumps({"dataset": "conversions"}).encode())
    with pytest.raises(flight.FlightError):
        plain.do_get(ticket, tls_stack.options(tls_stack.admin_token)).read_all()


def test_client_that_does_not_trust_the_certificate_is_refused(tls_stack):
    # No root given: the system's roots, which do not hold a certificate
    # made by the test.
    untrusting = flight.FlightClient(tls_stack.flight_url)
    ticket = flight.Ticket(json.dumps({"dataset": "conversions"}).encode())
    with pytest.raises(flight.FlightError):
        untrusting.do_get(ticket, tls_stack.options(tls_stack.admin_token)).read_all()
