"""One table of ``where`` cases with the rows they are run on and the answers expected, by
hand, for every source: the language means the same on MongoDB and on MySQL / MariaDB."""

from __future__ import annotations

from typing import Any

# Flat rows a SQL table can hold as they are: a JSON column (``meta``) for nested paths,
# a SET column (``tags``) for arrays, DECIMAL ``amount`` (a float on MongoDB).
ROWS: list[dict[str, Any]] = [
    {"id": "r1", "status": "paid", "total": 1000, "amount": "10.50", "ratio": 0.5,
     "note": None, "flag": True, "meta": {"tier": "gold", "n": 3}, "tags": ["gift", "rush"]},
    {"id": "r2", "status": "pending", "total": 25000, "amount": "1.10", "ratio": 0.25,
     "note": "leave at the door", "flag": False, "meta": {"tier": "silver", "n": 1}, "tags": []},
    {"id": "r3", "status": "Paid", "total": 7, "amount": "0.00", "ratio": -1.5,
     "note": "", "flag": True, "meta": None, "tags": ["rush"]},
    {"id": "r4", "status": "shipped", "total": 99999, "amount": "250.00", "ratio": 2.0,
     "note": "ring twice", "flag": False, "meta": {"tier": "gold", "n": 10}, "tags": ["gift"]},
]

CASES: dict[str, list[str]] = {
    "status = 'paid'": ["r1"],  # = is case-sensitive
    "status != 'paid'": ["r2", "r3", "r4"],
    "status IN ('paid', 'shipped')": ["r1", "r4"],
    "status NOT IN ('paid')": ["r2", "r3", "r4"],
    "status LIKE 'p%'": ["r1", "r2", "r3"],  # LIKE ignores case
    "status NOT LIKE 'p%'": ["r4"],
    "total > 1000": ["r2", "r4"],
    "total >= 1000 AND total < 30000": ["r1", "r2"],
    "total = 1000.0": ["r1"],
    "amount = 1.1": ["r2"],
    "amount >= 10": ["r1", "r4"],
    "amount < 1": ["r3"],
    "ratio < 0": ["r3"],
    "ratio = 0.25": ["r2"],
    "note IS NULL": ["r1"],
    "note IS NOT NULL": ["r2", "r3", "r4"],
    "note = ''": ["r3"],
    "note LIKE '%DOOR'": ["r2"],
    "flag = TRUE": ["r1", "r3"],
    "flag != TRUE": ["r2", "r4"],
    "meta.tier = 'gold'": ["r1", "r4"],
    "meta.n > 2": ["r1", "r4"],
    "meta.tier IS NULL": ["r3"],
    "tags = 'rush'": ["r1", "r3"],
    "tags != 'gift'": ["r2", "r3"],
    "tags IN ('gift')": ["r1", "r4"],
    "NOT (status = 'paid' OR flag = TRUE)": ["r2", "r4"],
    "status = 'paid' OR meta.n = 10": ["r1", "r4"],
    "status = 'nobody'": [],
}
