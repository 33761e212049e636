"""pyarrow.flight against the aggregator: every dataset, a follow stream,
and an affiliate token that sees only its own rows."""

import json
import queue
import threading

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import COUNTS, MONEY, SALES, T0, sale


def by_affiliate(table):
    """Rollups grouped by affiliate as ({affiliate: (impressions, sales)},
    {(affiliate, currency): (revenue, commission, parent's)})."""
    counts, money = {}, {}
    for row in table.to_pylist():
        impressions, sales = counts.get(row["affiliate_id"], (0, 0))
        counts[row["affiliate_id"]] = (impressions + row["impressions"], sales + row["sales"])
        if row["currency"] is not None:
            key = (row["affiliate_id"], row["currency"])
            assert key not in money, f"{key} on two rows"
            money[key] = (row["revenue_minor"], row["commission_minor"], row["parent_commission_minor"])
    return counts, money


def test_list_flights_names_every_dataset_and_its_schema(stack):
    client = stack.client()
    infos = list(client.list_flights(options=stack.options(stack.admin_token)))
    datasets = [json.loads(info.descriptor.command)["dataset"] for info in infos]
    assert datasets == ["rollups", "conversions", "quarantine", "alerts"]
    for info in infos:
        # Each endpoint's ticket reads the dataset, in the schema announced.
        ticket = info.endpoints[0].ticket
        table = client.do_get(ticket, stack.options(stack.admin_token)).read_all()
        assert table.schema == info.schema
        schema = client.get_schema(info.descriptor, stack.options(stack.admin_token)).schema
        assert schema == info.schema


def test_rollups_count_and_price_exactly(stack):
    table = stack.read({"dataset": "rollups", "group_by": ["affiliate_id"]})
    assert table.column("currency").type == pa.string()
    assert table.column("commission_minor").type == pa.int64()
    assert by_affiliate(table) == (COUNTS, MONEY)


def test_conversions_carry_their_commission(stack):
    table = stack.read({"dataset": "conversions"})
    rows = {
        row["order_id"]: (
            row["affiliate_id"],
            row["amount_minor"],
            row["currency"],
            row["status"],
            row["commission_minor"],
            row["commission_currency"],
            row["rule"],
            row["parent_affiliate_id"],
            row["parent_commission_minor"],
        )
        for row in table.to_pylist()
    }
    assert rows == {
        "py-A": (7, 10000, "USD", "pending", 1250, "USD", "campaign/cpa", 8, 62),
        "py-B": (7, 8000, "EUR", "pending", 800, "EUR", "campaign/revshare", 8, 40),
        "py-C": (9, 12345, "BHD", "pending", 1234, "BHD", "campaign/revshare", None, 0),
        "py-D": (9, 3000, "USD", "pending", 1250, "USD", "campaign/cpa", None, 0),
    }
    # Sorted by event time.
    assert table.column("time").to_pylist() == sorted(table.column("time").to_pylist())
    assert len(SALES) == table.num_rows


def test_quarantine_keeps_the_reason(stack):
    rows = stack.read({"dataset": "quarantine"}).to_pylist()
    assert [(row["source"], row["reason"]) for row in rows] == [("events", "bad_currency")]


def data_findings(table):
    """The findings about the data, leaving out `edge_silent` (the shared
    stack's edge may go quiet while the tests read)."""
    return [
        (row["kind"], row["severity"], row["affiliate_id"], row["campaign_id"], row["count"], row["message"])
        for row in table.to_pylist()
        if row["kind"] != "edge_silent"
    ]


def test_alerts_name_the_duplicate_and_the_quarantined_input(stack):
    table = stack.read({"dataset": "alerts"})
    assert table.schema.field("time").type == pa.timestamp("ms", tz="UTC")
    assert sorted(data_findings(table)) == [
        ("duplicates", "warning", 7, 1, 1, "1 duplicate event for affiliate 7 on campaign 1"),
        ("quarantined", "warning", None, None, 1, "1 input quarantined: bad_currency"),
    ]
    # Affiliate 7 sees its own finding; affiliate 9 has none.
    own = stack.read({"dataset": "alerts"}, stack.affiliate_7_token)
    assert [(row["kind"], row["affiliate_id"]) for row in own.to_pylist()] == [("duplicates", 7)]


def test_affiliate_token_sees_only_its_rows(stack):
    token = stack.affiliate_7_token
    rollups = stack.read({"dataset": "rollups", "group_by": ["affiliate_id"]}, token)
    counts, money = by_affiliate(rollups)
    assert counts == {7: COUNTS[7]}
    assert money == {key: value for key, value in MONEY.items() if key[0] == 7}
    conversions = stack.read({"dataset": "conversions"}, token)
    assert sorted(conversions.column("order_id").to_pylist()) == ["py-A", "py-B"]
    # Another affiliate's rows, quarantine, or the edge role: refused.
    with pytest.raises(flight.FlightUnauthorizedError, match="may not read affiliate 9"):
        stack.read({"dataset": "conversions", "affiliate_id": 9}, token)
    with pytest.raises(flight.FlightUnauthorizedError):
        stack.read({"dataset": "quarantine"}, token)
    with pytest.raises(flight.FlightUnauthorizedError):
        stack.read({"dataset": "rollups"}, stack.edge_token)
    # No token, or a wrong one: unauthenticated.
    client = stack.client()
    ticket = flight.Ticket(json.dumps({"dataset": "rollups"}).encode())
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.do_get(ticket, stack.options(None)).read_all()
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.do_get(ticket, stack.options("not-a-token-" + "x" * 32)).read_all()


def test_follow_streams_a_new_conversion(fresh_stack):
    stack = fresh_stack
    client = stack.client()
    ticket = flight.Ticket(json.dumps({"dataset": "conversions", "follow": True}).encode())
    reader = client.do_get(ticket, stack.options(stack.admin_token))
    # The schema comes first, once the follower is subscribed.
    assert reader.schema.names[-1] == "applied_at"
    chunks = queue.Queue()

    def read():
        try:
            chunks.put(reader.read_chunk().data)
        except Exception as error:  # the test reports it below
            chunks.put(error)

    threading.Thread(target=read, daemon=True).start()
    answer = stack.post(sale(7, 2, "py-F", "50.00", "USD", T0))
    assert answer["accepted"] == 1, answer
    batch = chunks.get(timeout=30)
    assert not isinstance(batch, Exception), batch
    rows = batch.to_pylist()
    assert [(row["order_id"], row["commission_minor"], row["parent_commission_minor"]) for row in rows] == [
        ("py-F", 500, 25)
    ]
    assert rows[0]["applied_at"] is not None
    reader.cancel()
    client.close()
