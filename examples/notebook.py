# %% [markdown]
# # EdgeTally for analysts
#
# Reads the aggregator of a running EdgeTally over Arrow Flight (pyarrow)
# and Flight SQL (ADBC): what each affiliate earned, by day, and what is
# arriving now. Run it against the local stack:
#
# ```sh
# cargo run -p edgetally-loadtest -- stack        # in one terminal
# scripts/test python -k notebook                 # once: builds .venv
# .venv/bin/python examples/notebook.py           # in another
# ```
#
# The cells (`# %%`) also run one by one in Jupyter or VS Code. The admin
# token is read from the stack's `flight-tokens.json`; set
# `EDGETALLY_FLIGHT_TOKEN` (or pass `--token`) for another aggregator.

# %%
import argparse
import json
import os
import pathlib
import sys
import tempfile

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight


def stack_admin_token() -> str | None:
    data_dir = pathlib.Path(os.environ.get("EDGETALLY_STACK_DATA_DIR", pathlib.Path(tempfile.gettempdir()) / "edgetally-stack"))
    try:
        tokens = json.loads((data_dir / "flight-tokens.json").read_text())["tokens"]
    except FileNotFoundError:
        return None
    return next((token["token"] for token in tokens if token["role"] == "admin"), None)


parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--flight", default="grpc://127.0.0.1:8815", help="the aggregator's Flight endpoint")
parser.add_argument("--flight-sql", default="grpc://127.0.0.1:8816", help="the aggregator's Flight SQL endpoint")
parser.add_argument("--token", default=os.environ.get("EDGETALLY_FLIGHT_TOKEN") or stack_admin_token())
parser.add_argument("--tz", default="Europe/Berlin", help="the report time zone (IANA name)")
parser.add_argument("--follow-seconds", type=float, default=10, help="how long to watch new conversions")
# In Jupyter, argv holds the kernel's own flags: use the defaults there.
args = parser.parse_args([] if "ipykernel" in sys.modules else None)

headers = [(b"authorization", f"Bearer {args.token}".encode())] if args.token else []
options = flight.FlightCallOptions(headers=headers, timeout=30)
client = flight.FlightClient(args.flight)


def read(ticket: dict) -> pa.Table:
    """The answer to a Flight ticket (see the README for its keys)."""
    return client.do_get(flight.Ticket(json.dumps(ticket).encode()), options).read_all()


def minor_to_major(table: pa.Table, currency_column: str, amount_columns: list[str]) -> pa.Table:
    """Amounts in minor units as decimal text in their currency's unit."""
    exponents = {"JPY": 0, "KRW": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3}
    currencies = table.column(currency_column).to_pylist()
    for name in amount_columns:
        values = table.column(name).to_pylist()
        text = []
        for value, currency in zip(values, currencies):
            exponent = exponents.get(currency, 2)
            text.append(None if value is None else f"{value / 10**exponent:.{exponent}f}")
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(text, pa.string()))
    return table


# %% [markdown]
# ## What the aggregator serves

# %%
for info in client.list_flights(options=options):
    print(info.descriptor.command.decode(), "->", ", ".join(info.schema.names))

# %% [markdown]
# ## Counts and money per affiliate and currency
#
# A `rollups` row per affiliate and currency; the counters sit on the
# first currency row of an affiliate, so sums over rows are exact. Earnings
# per click (EPC) is commission over clicks, per currency.

# %%
rollups = read({"dataset": "rollups", "group_by": ["affiliate_id"]})
per_affiliate = rollups.group_by("affiliate_id").aggregate(
    [("impressions", "sum"), ("clicks", "sum"), ("leads", "sum"), ("sales", "sum")]
)
top = per_affiliate.sort_by([("clicks_sum", "descending")]).slice(0, 10)
print(top)

money = rollups.filter(pc.is_valid(rollups.column("currency")))
money_by_currency = money.group_by("currency").aggregate(
    [("revenue_minor", "sum"), ("commission_minor", "sum"), ("parent_commission_minor", "sum")]
)
print(minor_to_major(money_by_currency, "currency", ["revenue_minor_sum", "commission_minor_sum", "parent_commission_minor_sum"]))

# %% [markdown]
# ## Daily counts in the report time zone
#
# Days cut at local midnight of `--tz` (23 or 25 hours when the clocks
# change), computed by the aggregator.

# %%
daily = read({"dataset": "rollups", "group_by": ["minute"], "granularity": "day", "tz": args.tz})
print(daily.select(["day", "impressions", "clicks", "sales", "currency", "commission_minor"]))

# %% [markdown]
# ## Commission per affiliate per UTC day, in SQL
#
# Flight SQL runs DataFusion over the same tables; an `affiliate:<id>`
# token sees only that affiliate's rows here too.

# %%
db_kwargs = {"adbc.flight.sql.authorization_header": f"Bearer {args.token}"} if args.token else {}
with flightsql.connect(args.flight_sql, db_kwargs=db_kwargs, autocommit=True) as connection, connection.cursor() as cursor:
    cursor.execute(
        """
        SELECT affiliate_id,
               CAST(date_trunc('day', time) AS DATE) AS day,
               commission_currency AS currency,
               COUNT(*) AS conversions,
               SUM(commission_minor) AS commission_minor,
               SUM(parent_commission_minor) AS parent_commission_minor
        FROM conversions
        WHERE status <> 'rejected' AND commission_currency IS NOT NULL
        GROUP BY affiliate_id, day, commission_currency
        ORDER BY day DESC, commission_minor DESC
        LIMIT 20
        """
    )
    payable = cursor.fetch_arrow_table()
print(minor_to_major(payable, "currency", ["commission_minor", "parent_commission_minor"]))

# %% [markdown]
# ## Data-quality findings
#
# The `alerts` dataset: edges gone silent, duplicates by affiliate and
# campaign, quarantined input by reason, derived when asked for.

# %%
alerts = read({"dataset": "alerts"})
for row in alerts.to_pylist()[-20:]:
    print(f"  {row['time']:%Y-%m-%d %H:%M} {row['severity']:8} {row['kind']:12} {row['message']}")

# %% [markdown]
# ## What arrives now
#
# A `follow` ticket keeps the stream open and sends each new conversion as
# the aggregator books it (read the dataset first, then follow).

# %%
n_seen = 0
if args.follow_seconds > 0:
    print(f"following conversions for {args.follow_seconds:g} s ...")
    # The call's deadline ends the stream.
    follow_options = flight.FlightCallOptions(headers=headers, timeout=args.follow_seconds)
    ticket = flight.Ticket(json.dumps({"dataset": "conversions", "follow": True}).encode())
    reader = client.do_get(ticket, follow_options)
    try:
        while True:
            for row in reader.read_chunk().data.to_pylist():
                n_seen += 1
                print(
                    f"  {row['applied_at']:%H:%M:%S} affiliate {row['affiliate_id']} {row['kind']} "
                    f"{row['amount_minor']} {row['currency']} -> commission {row['commission_minor']} "
                    f"{row['commission_currency']} ({row['rule']})"
                )
    except (flight.FlightTimedOutError, StopIteration):
        pass
print(f"{n_seen} conversions arrived")
