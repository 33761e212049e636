"""The ADBC Flight SQL driver against the aggregator: exact sums from
SQL, and an affiliate token that sees only its own rows whatever the SQL
says."""

import adbc_driver_flightsql.dbapi as flightsql
import pytest
from adbc_driver_manager import AdbcStatusCode

from conftest import COMMISSION_BY_AFFILIATE_DAY, COUNTS

COMMISSION_PER_AFFILIATE_PER_DAY = """
    SELECT affiliate_id,
           CAST(date_trunc('day', time) AS DATE) AS day,
           commission_currency,
           SUM(commission_minor) AS commission_minor,
           SUM(parent_commission_minor) AS parent_commission_minor
    FROM conversions
    WHERE status <> 'rejected'
    GROUP BY affiliate_id, day, commission_currency
    ORDER BY affiliate_id, day, commission_currency
"""


def connect(stack, token):
    db_kwargs = {} if token is None else {"adbc.flight.sql.authorization_header": f"Bearer {token}"}
    return flightsql.connect(stack.flight_sql_url, db_kwargs=db_kwargs, autocommit=True)


def query(stack, token, sql):
    with connect(stack, token) as connection, connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetch_arrow_table()


def commissions(table):
    return {
        (row["affiliate_id"], row["day"], row["commission_currency"]): (
            row["commission_minor"],
            row["parent_commission_minor"],
        )
        for row in table.to_pylist()
    }


def test_commission_per_affiliate_per_day(stack):
    table = query(stack, stack.admin_token, COMMISSION_PER_AFFILIATE_PER_DAY)
    assert commissions(table) == COMMISSION_BY_AFFILIATE_DAY
    # One row per key, in the asked order.
    assert table.num_rows == len(COMMISSION_BY_AFFILIATE_DAY)
    keys = [(row["affiliate_id"], row["day"], row["commission_currency"]) for row in table.to_pylist()]
    assert keys == sorted(COMMISSION_BY_AFFILIATE_DAY)


def test_rollups_in_sql(stack):
    table = query(
        stack,
        stack.admin_token,
        "SELECT affiliate_id, SUM(impressions) AS impressions, SUM(sales) AS sales "
        "FROM rollups GROUP BY affiliate_id ORDER BY affiliate_id",
    )
    rows = {row["affiliate_id"]: (row["impressions"], row["sales"]) for row in table.to_pylist()}
    assert rows == COUNTS


def test_alerts_in_sql(stack):
    sql = "SELECT affiliate_id, SUM(count) AS n FROM alerts WHERE kind = 'duplicates' GROUP BY affiliate_id"
    assert query(stack, stack.admin_token, sql).to_pylist() == [{"affiliate_id": 7, "n": 1}]
    # An affiliate's SQL reads only the findings on its own rows.
    table = query(stack, stack.affiliate_7_token, "SELECT kind, affiliate_id FROM alerts")
    assert table.to_pylist() == [{"kind": "duplicates", "affiliate_id": 7}]


def test_affiliate_token_sees_only_its_rows(stack):
    token = stack.affiliate_7_token
    table = query(stack, token, COMMISSION_PER_AFFILIATE_PER_DAY)
    assert commissions(table) == {key: value for key, value in COMMISSION_BY_AFFILIATE_DAY.items() if key[0] == 7}
    # No WHERE clause widens it, nor a filter for another affiliate.
    everything = query(stack, token, "SELECT * FROM conversions")
    assert sorted(everything.column("order_id").to_pylist()) == ["py-A", "py-B"]
    other = query(stack, token, "SELECT COUNT(*) AS n FROM rollups WHERE affiliate_id = 9")
    assert other.column("n").to_pylist() == [0]
    with pytest.raises(flightsql.Error):
        query(stack, token, "SELECT * FROM quarantine")


def test_refusals(stack):
    with pytest.raises(flightsql.Error) as refused:
        query(stack, None, "SELECT 1")
    assert refused.value.status_code == AdbcStatusCode.UNAUTHENTICATED
    with pytest.raises(flightsql.Error) as refused:
        query(stack, "not-a-token-" + "x" * 32, "SELECT 1")
    assert refused.value.status_code == AdbcStatusCode.UNAUTHENTICATED
    with pytest.raises(flightsql.Error) as refused:
        query(stack, stack.edge_token, "SELECT 1")
    assert refused.value.status_code == AdbcStatusCode.UNAUTHORIZED
    # Read-only: DDL and DML are refused, and the data is still there.
    for statement in ["DROP TABLE conversions", "INSERT INTO conversions SELECT * FROM conversions"]:
        with pytest.raises(flightsql.Error) as refused:
            query(stack, stack.admin_token, statement)
        assert refused.value.status_code == AdbcStatusCode.INVALID_ARGUMENT, statement
    count = query(stack, stack.admin_token, "SELECT COUNT(*) AS n FROM conversions")
    assert count.column("n").to_pylist() == [4]
