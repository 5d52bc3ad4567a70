"""Schemathesis hooks for the gateway's fuzzing test (tests/e2e/tests/it/openapi.rs).

A bulk upload's JSON-lines body is described in schemas/openapi.json as the array of its lines;
schemathesis has no serializer for JSON lines, so this one writes each item as one line. A CSV
body sent as application/csv goes on the wire as text, as text/csv does.
"""

import json

import schemathesis


@schemathesis.serializer(
    "application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/jsonlines"
)
def json_lines(ctx, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode("utf-8")


@schemathesis.serializer("application/csv")
def csv_text(ctx, value):
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else json.dumps(value)).encode("utf-8")
