"""schemathesis hooks for tillstream's HTTP API (tests/tests/contract.rs).

The query API refuses a range whose `from` is not before its `to` (400:
swapped bounds are a mistake, not a question whose answer is nothing), and
says so in `from`'s description; OpenAPI has no way to say one query
parameter must be less than another, so a fuzzer drawing them apart sends
`from` after `to` in half its cases. This teaches it the rule: a case with
both, each a time of the document's pattern, gets them in order (and loses
`to` when they are the same instant). Nothing else is changed; a case with
either one malformed is left as drawn.

Loaded with SCHEMATHESIS_HOOKS=tillstream_contract and this directory on
PYTHONPATH.
"""

import re

import schemathesis

# The document's TIME_PATTERN (engine/src/questions/endpoints.rs), read
# into its parts; the calendar is checked by the server, not here.
TIME = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[Tt ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})?)?\Z"
)


def days_from_civil(y, m, d):
    """Days since 1970-01-01 (Howard Hinnant's algorithm, as the server's)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m - 3 if m > 2 else m + 9) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def micros(text):
    """UTC microseconds of a time the pattern matches, or None."""
    if not isinstance(text, str):
        return None
    m = TIME.match(text)
    if m is None:
        return None
    y, mo, d, h, mi, s, frac, zone = m.groups()
    offset = 0
    if zone and zone not in "Zz":
        sign = -1 if zone[0] == "-" else 1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    secs = (
        days_from_civil(int(y), int(mo), int(d)) * 86400
        + int(h or 0) * 3600
        + int(mi or 0) * 60
        + int(s or 0)
        - offset
    )
    return secs * 1_000_000 + int(((frac or "") + "000000")[:6])


@schemathesis.hook
def map_case(context, case):
    query = case.query
    if not isinstance(query, dict):
        return case
    start, end = micros(query.get("from")), micros(query.get("to"))
    if start is None or end is None or start < end:
        return case
    if start == end:
        del query["to"]
    else:
        query["from"], query["to"] = query["to"], query["from"]
    return case
