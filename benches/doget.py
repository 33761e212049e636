"""Reads the same conversions ledger two ways, interleaved, in one run:
pyarrow.flight's DoGet from the aggregator on loopback, and pyarrow
reading the aggregator's own Parquet partition file from disk (after a
first read, from the page cache). Then times a group-by through the ADBC
Flight SQL driver. Prints a Markdown table. Run by benches/doget.sh."""

import argparse
import statistics
import time

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow.flight as flight
import pyarrow.parquet as pq

GROUP_BY = """
    SELECT affiliate_id, date_trunc('day', time) AS day, commission_currency,
           SUM(commission_minor) AS commission_minor,
           SUM(parent_commission_minor) AS parent_commission_minor
    FROM conversions WHERE status <> 'rejected' GROUP BY 1, 2, 3
"""


def timed(read):
    started = time.perf_counter()
    table = read()
    return time.perf_counter() - started, table


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--flight", required=True)
    parser.add_argument("--flight-sql", required=True)
    parser.add_argument("--parquet", required=True, nargs="+")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    client = flight.FlightClient(args.flight)
    ticket = flight.Ticket(b'{"dataset": "conversions"}')

    def from_flight():
        return client.do_get(ticket).read_all()

    def from_parquet():
        return pq.ParquetDataset(args.parquet).read()

    seconds = {"flight": [], "parquet": []}
    tables = {}
    # A first read of each warms the page cache and the connection.
    from_flight(), from_parquet()
    for _ in range(args.rounds):
        for name, read in (("flight", from_flight), ("parquet", from_parquet)):
            elapsed, table = timed(read)
            seconds[name].append(elapsed)
            tables[name] = table
    n_rows = tables["flight"].num_rows
    assert tables["parquet"].num_rows == n_rows, (n_rows, tables["parquet"].num_rows)
    n_bytes = tables["flight"].nbytes

    with flightsql.connect(args.flight_sql, autocommit=True) as connection, connection.cursor() as cursor:
        sql_seconds = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            cursor.execute(GROUP_BY)
            groups = cursor.fetch_arrow_table()
            sql_seconds.append(time.perf_counter() - started)

    print(f"{n_rows} rows, {n_bytes / 1e6:.0f} MB as Arrow in memory; medians of {args.rounds} interleaved rounds\n")
    print("| read | seconds | rows/s | MB/s |")
    print("|---|---:|---:|---:|")
    for name, label in (("flight", "Flight DoGet (pyarrow.flight, loopback)"), ("parquet", "Parquet file (pyarrow.parquet)")):
        median = statistics.median(seconds[name])
        print(f"| {label} | {median:.2f} | {n_rows / median / 1e6:.2f} M | {n_bytes / median / 1e6:.0f} |")
    ratio = statistics.median(seconds["flight"]) / statistics.median(seconds["parquet"])
    print(f"\nFlight time / Parquet file time: {ratio:.2f} (goal <= 1.5)")
    print(f"Group-by through Flight SQL (ADBC), {groups.num_rows} groups: {statistics.median(sql_seconds):.2f} s")


if __name__ == "__main__":
    main()
