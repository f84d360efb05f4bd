//! The OpenAPI 3.1 document of the HTTP API (`GET /api/v1/openapi.json`),
//! built from the tables the server itself reads: the query endpoints'
//! parameters (`endpoints.rs`, which requests are checked against) and
//! their rows' fields (`rows.rs`, which the tests hold real answers to);
//! the `/v1/*` and probe endpoints are in `v1.rs`.

use serde_json::{Map, Value, json};

use super::endpoints::{ENDPOINTS, Kind, Param, TIME_PATTERN};
use super::rows::{Field, KEY, Ty};

/// A 64-bit id as answers write it: a JSON string of its digits.
pub(crate) const ID_PATTERN: &str = "^[0-9]+$";

/// The JSON Schema of a field's type.
pub(crate) fn ty_schema(ty: &Ty) -> Value {
    match ty {
        Ty::Int { min, max } => json!({ "type": "integer", "minimum": min, "maximum": max }),
        Ty::Count => json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX }),
        Ty::Id => json!({ "type": "string", "pattern": ID_PATTERN }),
        Ty::Text => json!({ "type": "string" }),
        Ty::Number => json!({ "type": "number" }),
        Ty::Bool => json!({ "type": "boolean" }),
        Ty::Word(words) => json!({ "type": "string", "enum": words }),
        Ty::Key => json!({ "$ref": "#/components/schemas/EventKey" }),
        Ty::Nullable(inner) => match ty_schema(inner) {
            // A `$ref` takes no siblings a validator must honour: say
            // "this or null" the long way.
            r if r.get("$ref").is_some() => json!({ "anyOf": [r, { "type": "null" }] }),
            mut s => {
                if let Some(t) = s.get("type").cloned() {
                    s["type"] = json!([t, "null"]);
                }
                s
            }
        },
    }
}

/// An object of exactly these fields: each required, no other.
pub(crate) fn object_schema(fields: &[Field], description: &str) -> Value {
    let mut props = Map::new();
    for f in fields {
        let mut s = ty_schema(&f.ty);
        if let Some(o) = s.as_object_mut() {
            o.insert("description".into(), f.help.into());
        }
        props.insert(f.name.into(), s);
    }
    let required: Vec<&str> = fields.iter().map(|f| f.name).collect();
    json!({
        "type": "object",
        "description": description,
        "properties": props,
        "required": required,
        "additionalProperties": false,
    })
}

/// The schema of a query parameter's value.
pub(crate) fn param_schema(p: &Param) -> Value {
    match p.kind {
        Kind::Name => json!({ "type": "string", "minLength": 1 }),
        Kind::Word(words) => json!({ "type": "string", "enum": words }),
        Kind::Int { min, max } => json!({
            "type": "integer",
            "format": "int64",
            "minimum": min,
            "maximum": max,
        }),
        Kind::Time => json!({ "type": "string", "pattern": TIME_PATTERN }),
    }
}

fn parameter(p: &Param) -> Value {
    let mut v = json!({
        "name": p.name,
        "in": "query",
        "required": p.required,
        "description": p.help,
        "schema": param_schema(p),
    });
    if let Some(e) = p.example {
        v["example"] = e.into();
    }
    v
}

/// `{"$ref": "#/components/responses/<name>"}`.
pub(crate) fn response(name: &str) -> Value {
    json!({ "$ref": format!("#/components/responses/{name}") })
}

/// What every refusal answers: `{"error": "..."}`.
pub(super) fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
    })
}

/// The error responses the document names, by component name.
pub(super) fn error_responses() -> Map<String, Value> {
    let mut r = Map::new();
    for (name, description) in [
        (
            "BadRequest",
            "The request is not one the document allows: an unknown or repeated parameter, a value of the wrong form, a missing required one, `from` not before `to`, or a body that is not the JSON asked for.",
        ),
        (
            "Forbidden",
            "The token is valid but its role may not do this (this endpoint needs role admin).",
        ),
        (
            "NotFound",
            "No such endpoint, or the store or SKU named is not in the catalogue (an id need not be: a store or SKU id the catalogue does not name answers no rows).",
        ),
        (
            "Conflict",
            "The text names two things: one store's (product's) catalogue name (code) and another's id. Say `id:` or `name:` (`code:`) in front.",
        ),
        ("ServerError", "The store failed; the error says how."),
    ] {
        r.insert(name.into(), error_response(description));
    }
    let mut unauthorized =
        error_response("No bearer token, or one that is invalid, expired or revoked.");
    unauthorized["headers"] = json!({
        "WWW-Authenticate": { "required": true, "schema": { "type": "string", "const": "Bearer" } }
    });
    r.insert("Unauthorized".into(), unauthorized);
    r
}

/// The component schemas of the query API's rows.
pub(super) fn row_schemas() -> Map<String, Value> {
    let mut s = Map::new();
    for e in ENDPOINTS {
        s.insert(
            e.row.into(),
            object_schema(e.fields, &format!("A row of /api/v1/{}.", e.name)),
        );
    }
    s.insert(
        "EventKey".into(),
        object_schema(KEY, "The identity of an event: device, batch seq, index."),
    );
    s.insert(
        "Error".into(),
        json!({
            "type": "object",
            "description": "Every refusal and failure of the API.",
            "properties": { "error": { "type": "string", "description": "What was wrong, for a person." } },
            "required": ["error"],
            "additionalProperties": false,
        }),
    );
    s
}

/// The query API's paths.
pub(super) fn question_paths() -> Map<String, Value> {
    let mut paths = Map::new();
    for e in ENDPOINTS {
        let params: Vec<Value> = e.params.iter().map(parameter).collect();
        paths.insert(
            format!("/api/v1/{}", e.name),
            json!({
                "get": {
                    "operationId": e.name,
                    "summary": e.summary,
                    "parameters": params,
                    "security": [{ "bearer": [] }],
                    "responses": {
                        "200": {
                            "description": "The rows, as `tillstream query --format json` prints them.",
                            "content": { "application/json": { "schema": {
                                "type": "array",
                                "items": { "$ref": format!("#/components/schemas/{}", e.row) },
                            } } }
                        },
                        "400": response("BadRequest"),
                        "401": response("Unauthorized"),
                        "403": response("Forbidden"),
                        "404": response("NotFound"),
                        "409": response("Conflict"),
                        "500": response("ServerError"),
                    }
                }
            }),
        );
    }
    paths
}
