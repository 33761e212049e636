"""examples/notebook.py runs against a live aggregator and prints what
the analyst expects."""

import os
import subprocess
import sys

from conftest import REPO


def test_notebook_runs_against_the_stack(stack):
    flight_sql = stack.flight_sql_url
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "notebook.py"),
            *("--flight", stack.flight_url, "--flight-sql", flight_sql),
            *("--token", stack.admin_token, "--tz", "America/New_York", "--follow-seconds", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Money per currency in major units (USD revenue 100.00 + 30.00, BHD
    # 12.345 with commission 1.234), and the SQL's commission per row.
    # And the findings: the duplicate of py-A, the quarantined sale.
    findings = ["1 duplicate event for affiliate 7 on campaign 1", "1 input quarantined: bad_currency"]
    for text in ["revenue_minor_sum", "130.00", "25.00", "12.345", "1.234", "8.00", "12.50", "0 conversions arrived", *findings]:
        assert text in out, f"{text!r} missing from:\n{out}"
