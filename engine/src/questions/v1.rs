//! The OpenAPI description of the endpoints beside the query API: the
//! probes (`/healthz`, `/readyz`), `/metrics`, and the remote tools'
//! `/v1/*` (engine `http.rs`), with their methods, bodies, roles and
//! answers. The e2e contract test holds the live answers to it.

use serde_json::{Map, Value, json};

use super::rows::{Field, Ty};
use super::schema::{object_schema, response};

const fn f(name: &'static str, ty: Ty, help: &'static str) -> Field {
    Field { name, ty, help }
}

const U32: Ty = Ty::Int {
    min: 0,
    max: u32::MAX as i64,
};
const U16: Ty = Ty::Int {
    min: 0,
    max: u16::MAX as i64,
};

/// `GET /v1/settings`: engine `ServerSettings`.
pub(crate) const SETTINGS: &[Field] = &[
    f("shards", U16, "Shard actors."),
    f(
        "flush_interval_ms",
        Ty::Count,
        "Interval of the writes to the tables, milliseconds.",
    ),
    f(
        "flush_max_rows",
        Ty::Count,
        "Rows that start a write to the tables early.",
    ),
    f(
        "max_inflight_bytes_per_shard",
        Ty::Count,
        "Per-shard in-flight bound, bytes.",
    ),
    f("backend", Ty::Text, "Storage backend: embedded or scylla."),
    f(
        "max_events_per_batch",
        U32,
        "Most events per batch accepted.",
    ),
    f(
        "max_inflight_batches",
        U32,
        "Most unacknowledged batches per device.",
    ),
    f(
        "passivate_after_s",
        Ty::Count,
        "Idle time after which entities leave memory, seconds.",
    ),
    f(
        "max_clock_skew_s",
        Ty::Count,
        "How far ahead of the server's clock events may be stamped, seconds.",
    ),
    f(
        "auth",
        Ty::Text,
        "Device credentials accepted: token, certificate, both joined by +, or none.",
    ),
    f(
        "quic_max_udp_payload",
        U16,
        "Largest UDP payload devices may send, bytes.",
    ),
];

/// `POST /v1/verify`'s answer: storage `VerifyReport` (`problems` apart).
pub(crate) const VERIFY_COUNTS: &[Field] = &[
    f("ok", Ty::Bool, "No problem found: every count below is 0."),
    f("events", Ty::Count, "Distinct events stored."),
    f("batches", Ty::Count, "Batches in the ledger."),
    f("devices", Ty::Count, "Devices seen."),
    f(
        "missing",
        Ty::Count,
        "Events of durable or expected batches that are not stored.",
    ),
    f(
        "duplicates",
        Ty::Count,
        "Event keys stored in more than one primary row.",
    ),
    f(
        "orphans",
        Ty::Count,
        "Ledger rows above their watermark, and events without a batch.",
    ),
    f(
        "stock_mismatches",
        Ty::Count,
        "SKUs whose stored level differs from their movements.",
    ),
    f(
        "rollup_mismatches",
        Ty::Count,
        "Terminal minutes whose rollup differs from their sales.",
    ),
    f(
        "line_mismatches",
        Ty::Count,
        "Sales whose lines or line movements do not match their line count.",
    ),
];

/// A decimal number from 0 to `max` with any leading zeros, as a regex:
/// exactly the texts Rust's `u64::from_str` reads to at most `max` (a
/// 64-bit id a request may send as a string).
pub(crate) fn decimal_up_to(max: u64) -> String {
    let digits = max.to_string();
    let n = digits.len();
    let mut alts = Vec::new();
    if n > 1 {
        alts.push(format!("[0-9]{{1,{}}}", n - 1));
    }
    for (i, d) in digits.bytes().enumerate() {
        let d = d - b'0';
        if d == 0 {
            continue;
        }
        let rest = n - i - 1;
        let tail = if rest > 0 {
            format!("[0-9]{{{rest}}}")
        } else {
            String::new()
        };
        let below = if d == 1 {
            "0".to_owned()
        } else {
            format!("[0-{}]", d - 1)
        };
        alts.push(format!("{}{below}{tail}", &digits[..i]));
    }
    alts.push(digits);
    format!("^0*(?:{})$", alts.join("|"))
}

fn text(description: &str) -> Value {
    json!({ "description": description, "content": { "text/plain": { "schema": { "type": "string" } } } })
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn json_body(schema: Value, required: bool) -> Value {
    json!({ "required": required, "content": { "application/json": { "schema": schema } } })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The refusals of an endpoint that needs a token: 401, 403, 500.
fn guarded(mut responses: Value) -> Value {
    responses["401"] = response("Unauthorized");
    responses["403"] = response("Forbidden");
    responses["500"] = response("ServerError");
    responses
}

/// Adds the probes', `/metrics`' and `/v1/*`'s paths and schemas.
pub(crate) fn add(paths: &mut Map<String, Value>, schemas: &mut Map<String, Value>) {
    let bearer = json!([{ "bearer": [] }]);
    let open = json!([]);
    schemas.insert(
        "Settings".into(),
        object_schema(SETTINGS, "The settings of the running server."),
    );
    let mut verify = object_schema(VERIFY_COUNTS, "What verify found.");
    verify["properties"]["problems"] = json!({
        "type": "array", "items": { "type": "string" }, "maxItems": 20,
        "description": "The first problems found (at most 20), for a person.",
    });
    verify["required"]
        .as_array_mut()
        .into_iter()
        .for_each(|r| r.push("problems".into()));
    schemas.insert("VerifyReport".into(), verify);
    let u64_text = decimal_up_to(u64::MAX);
    schemas.insert(
        "ExpectedBatch".into(),
        json!({
            "type": "object",
            "description": "A batch a device had acknowledged: verify finds it with all its events.",
            "properties": {
                "device": { "anyOf": [
                    { "type": "integer", "minimum": 0, "maximum": u64::MAX },
                    { "type": "string", "pattern": u64_text },
                ], "description": "Device id: a number or a string of its digits." },
                "seq": { "type": "integer", "minimum": 0, "maximum": u64::MAX, "description": "The batch's seq." },
                "events": { "type": "integer", "minimum": 0, "maximum": u32::MAX, "description": "Events it held." },
            },
            "required": ["device", "seq", "events"],
        }),
    );
    let watermarks = ok_json(
        "Every device's durable watermark.",
        json!({ "type": "array", "items": schema_ref("Watermark") }),
    );
    for (path, op) in [
        (
            "/healthz",
            json!({ "get": { "operationId": "healthz", "summary": "Liveness: the process serves HTTP.", "security": open,
                "responses": { "200": text("`ok`.") } } }),
        ),
        (
            "/readyz",
            json!({ "get": { "operationId": "readyz", "summary": "Readiness: the store takes writes and recovery is done.", "security": open,
                "responses": { "200": text("`ready` (and a warning when authentication is off)."), "503": text("`not ready: ` and why.") } } }),
        ),
        (
            "/metrics",
            json!({ "get": { "operationId": "metrics", "summary": "Prometheus metrics (text format 0.0.4). Open unless the server runs `--metrics-auth`, then role analyst.",
                "security": [{}, { "bearer": [] }],
                "responses": { "200": text("Prometheus text exposition."), "401": response("Unauthorized"), "403": response("Forbidden"), "503": response("Unavailable") } } }),
        ),
        (
            "/api/v1/openapi.json",
            json!({ "get": { "operationId": "openapi", "summary": "This document.", "security": open,
                "responses": { "200": ok_json("The OpenAPI 3.1 document.", json!({ "type": "object" })) } } }),
        ),
        (
            "/v1/settings",
            json!({ "get": { "operationId": "settings", "summary": "The running server's settings (role analyst).", "security": bearer,
                "responses": guarded(json!({ "200": ok_json("The settings.", schema_ref("Settings")) })) } }),
        ),
        (
            "/v1/watermarks",
            json!({ "get": { "operationId": "v1-watermarks", "summary": "Every device's highest durable batch seq (role analyst); /api/v1/watermarks answers the same.", "security": bearer,
                "responses": guarded(json!({ "200": watermarks })) } }),
        ),
        (
            "/v1/verify",
            json!({ "post": { "operationId": "verify", "summary": "Checks the tables' invariants, and that each expected batch is stored with all its events (role analyst). Waits up to 60 s for the tables to catch up with what was acknowledged.",
                "security": bearer,
                "requestBody": json_body(json!({
                    "type": "object",
                    "properties": { "expected": { "type": ["array", "null"], "items": schema_ref("ExpectedBatch"),
                        "description": "Batches a client had acknowledged; none when left out." } },
                    "additionalProperties": false,
                }), false),
                "responses": guarded(json!({
                    "200": ok_json("The verdict.", schema_ref("VerifyReport")),
                    "400": response("BadRequest"),
                    "503": { "description": "The tables still trail the journal after 60 s; ask again.",
                        "headers": { "Retry-After": { "required": true, "schema": { "type": "string", "pattern": "^[0-9]+$" } } },
                        "content": { "application/json": { "schema": schema_ref("Error") } } },
                })) } }),
        ),
        (
            "/v1/revoke",
            json!({ "post": { "operationId": "revoke", "summary": "Revokes a device credential and closes its connections (role admin).", "security": bearer,
                "requestBody": json_body(json!({
                    "type": "object",
                    "properties": {
                        "id": { "type": "string", "pattern": "^(?:[0-9A-Fa-f]{2})+$", "description": "The token's jti or the certificate's serial, in hex." },
                        "kind": { "type": "string", "enum": ["token", "certificate"] },
                        "reason": { "type": "string", "description": "Why, for the audit log." },
                    },
                    "required": ["id", "kind"],
                    "additionalProperties": false,
                }), true),
                "responses": guarded(json!({
                    "200": ok_json("What changed.", json!({ "type": "object", "properties": {
                        "revoked": { "type": "boolean", "description": "False when it was revoked already." },
                        "connections_closed": { "type": "integer", "minimum": 0, "description": "Live connections of it closed." },
                    }, "required": ["revoked", "connections_closed"], "additionalProperties": false })),
                    "400": response("BadRequest"),
                })) } }),
        ),
        (
            "/v1/backup",
            json!({ "post": { "operationId": "backup", "summary": "A consistent copy of the store, and the server's credentials beside it, into a new or empty directory on the server's machine (role admin).", "security": bearer,
                "requestBody": json_body(json!({
                    "type": "object",
                    "properties": {
                        "dir": { "type": "string", "minLength": 1, "description": "A new or empty directory on the server's machine." },
                        "credentials": { "type": "boolean", "default": true, "description": "Copy the credentials too." },
                    },
                    "required": ["dir"],
                    "additionalProperties": false,
                }), true),
                "responses": guarded(json!({
                    "200": ok_json("What was written: the store's copy (its checkpoint, the journal records after it, keys and bytes) and the credentials beside it.",
                        json!({ "type": "object",
                            "required": ["checkpoint", "journal_records", "keys", "bytes", "credentials"],
                            "additionalProperties": false,
                            "properties": {
                                "checkpoint": { "type": "integer", "minimum": 0, "description": "The journal LSN the copied tables hold." },
                                "journal_records": { "type": "integer", "minimum": 0, "description": "Journal records after it, copied to be replayed when the copy is opened." },
                                "keys": { "type": "integer", "minimum": 0, "description": "Keys copied over all keyspaces." },
                                "bytes": { "type": "integer", "minimum": 0, "description": "Bytes of keys and values copied." },
                                "credentials": { "type": "object",
                                    "required": ["included", "dir", "files", "absent", "note"],
                                    "additionalProperties": false,
                                    "properties": {
                                        "included": { "type": "boolean", "description": "False when asked to leave them out." },
                                        "dir": { "type": ["string", "null"], "description": "The backup's credentials/ directory, when included." },
                                        "files": { "type": "array", "items": { "type": "object",
                                            "required": ["name", "file", "from", "secret"],
                                            "additionalProperties": false,
                                            "properties": {
                                                "name": { "type": "string", "enum": ["signing_key", "tls_cert", "tls_key", "device_ca_cert", "device_ca_key", "revocation_list"] },
                                                "file": { "type": "string", "description": "Its copy in the backup (mode 0600)." },
                                                "from": { "type": "string", "description": "Where it was copied from." },
                                                "flag": { "type": "string", "description": "The serve flag that named `from`, when it was not the data directory's own place." },
                                                "secret": { "type": "boolean", "description": "Whether it is a private key." },
                                            } } },
                                        "absent": { "type": "array", "items": { "type": "object",
                                            "required": ["name", "looked_at"],
                                            "additionalProperties": false,
                                            "properties": {
                                                "name": { "type": "string" },
                                                "looked_at": { "type": "string" },
                                            } } },
                                        "note": { "type": "string", "description": "What this means for a restore." },
                                    } },
                            } })),
                    "400": response("BadRequest"),
                    "409": { "description": "The backup could not be written there (the directory is not empty, say).",
                        "content": { "application/json": { "schema": schema_ref("Error") } } },
                })) } }),
        ),
        (
            "/v1/catalog",
            json!({ "post": { "operationId": "catalog", "summary": "Adds or replaces products and stores of the catalogue (role admin).", "security": bearer,
                "requestBody": json_body(json!({
                    "type": "object",
                    "properties": {
                        "products": { "type": "array", "items": { "type": "object", "properties": {
                            "sku": { "anyOf": [
                                { "type": "integer", "minimum": 0, "maximum": u64::MAX },
                                { "type": "string", "pattern": decimal_up_to(u64::MAX) },
                            ] },
                            "code": { "type": "string" }, "name": { "type": "string" }, "category": { "type": "string" },
                        }, "required": ["sku", "code", "name"] } },
                        "stores": { "type": "array", "items": { "type": "object", "properties": {
                            "store": { "type": "integer", "minimum": 0, "maximum": u32::MAX },
                            "name": { "type": "string" }, "country": { "type": "string" },
                        }, "required": ["store", "name"] } },
                    },
                }), true),
                "responses": guarded(json!({
                    "200": ok_json("How many were written.", json!({ "type": "object", "properties": {
                        "products": { "type": "integer", "minimum": 0 }, "stores": { "type": "integer", "minimum": 0 },
                    }, "required": ["products", "stores"], "additionalProperties": false })),
                    "400": response("BadRequest"),
                })) } }),
        ),
    ] {
        paths.insert(path.into(), op);
    }
}
