//! The endpoints of the query API, `/api/v1/<question>`, and the OpenAPI
//! document built from them: one table, so the routes, the parameter
//! checks and the document cannot disagree.

use serde_json::{Value, json};

/// A query parameter of an endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Its name in the query string.
    pub name: &'static str,
    /// JSON schema type (`integer`, `string`).
    pub kind: &'static str,
    /// Whether it must be given.
    pub required: bool,
    /// What it means.
    pub help: &'static str,
}

/// One endpoint of `/api/v1`.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// The path below `/api/v1/`.
    pub name: &'static str,
    /// What it answers.
    pub summary: &'static str,
    /// Its parameters.
    pub params: &'static [Param],
}

const STORE: Param = Param {
    name: "store",
    kind: "string",
    required: false,
    help: "Store: its id (28) or its name in the catalogue (United Kingdom; `id:` or `name:` in front settles a text that is both); all stores when left out.",
};
const FROM: Param = Param {
    name: "from",
    kind: "string",
    required: false,
    help: "Start, inclusive (UTC): 2026-11-21, 2026-11-21T10:00 or RFC 3339.",
};
const TO: Param = Param {
    name: "to",
    kind: "string",
    required: false,
    help: "End, exclusive, in the same forms.",
};

/// The endpoints of the query API, in the order the OpenAPI document
/// lists them.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        name: "sales",
        summary: "Sales and refunds per hour or day: counts, items, gross, tax, refunded, net (minor units).",
        params: &[
            STORE,
            FROM,
            TO,
            Param {
                name: "bucket",
                kind: "string",
                required: false,
                help: "minute, hour or day (default day).",
            },
        ],
    },
    Endpoint {
        name: "top-skus",
        summary: "The best-selling SKUs, net of refunds, best first.",
        params: &[
            STORE,
            FROM,
            TO,
            Param {
                name: "by",
                kind: "string",
                required: false,
                help: "quantity or revenue (default revenue).",
            },
            Param {
                name: "limit",
                kind: "integer",
                required: false,
                help: "Rows (default 10).",
            },
        ],
    },
    Endpoint {
        name: "stock-history",
        summary: "A SKU's stock movements in event-time order, each with the level as of its time: the latest count at or before it plus the movements between (a late movement changes the rows after it).",
        params: &[
            Param {
                required: true,
                help: "Store: its id (28) or its name in the catalogue (United Kingdom).",
                ..STORE
            },
            Param {
                name: "sku",
                kind: "string",
                required: true,
                help: "SKU: the catalogue's code for it (85123A) or its id (4359830775492328649); `code:` or `id:` in front settles a text that is both.",
            },
            FROM,
            TO,
        ],
    },
    Endpoint {
        name: "low-stock",
        summary: "SKUs whose current level is below a threshold, lowest first.",
        params: &[
            STORE,
            Param {
                name: "below",
                kind: "integer",
                required: false,
                help: "Threshold, strictly below (default 5).",
            },
        ],
    },
    Endpoint {
        name: "watermarks",
        summary: "Every device's highest durable batch seq.",
        params: &[],
    },
    Endpoint {
        name: "terminals",
        summary: "Per-terminal sales, refunds and money (minor units) from the rollups, and the last active minute.",
        params: &[STORE, FROM, TO],
    },
    Endpoint {
        name: "health",
        summary: "Per-device health: reports, last seen, battery (last and lowest), hottest, weakest signal, deepest queue.",
        params: &[STORE, FROM, TO],
    },
    Endpoint {
        name: "dead-stock",
        summary: "SKUs with stock and no sale in the last N days, most stock first.",
        params: &[
            STORE,
            Param {
                name: "days",
                kind: "integer",
                required: false,
                help: "Days without a sale (default 30).",
            },
        ],
    },
    Endpoint {
        name: "basket-pairs",
        summary: "SKUs most often in one sale: baskets, support, confidence (of B given A) and lift.",
        params: &[
            STORE,
            FROM,
            TO,
            Param {
                name: "limit",
                kind: "integer",
                required: false,
                help: "Pairs (default 20).",
            },
            Param {
                name: "min_baskets",
                kind: "integer",
                required: false,
                help: "Least baskets a pair must be in (default 2).",
            },
        ],
    },
];

/// The OpenAPI 3.1 document of `/api/v1`, built from [`ENDPOINTS`].
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    for e in ENDPOINTS {
        let params: Vec<Value> = e
            .params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "in": "query",
                    "required": p.required,
                    "description": p.help,
                    "schema": { "type": p.kind },
                })
            })
            .collect();
        paths.insert(
            format!("/api/v1/{}", e.name),
            json!({
                "get": {
                    "summary": e.summary,
                    "parameters": params,
                    "security": [{ "bearer": [] }],
                    "responses": {
                        "200": {
                            "description": "A JSON array of objects, one per row; `tillstream query --format json` prints the same.",
                            "content": { "application/json": { "schema": { "type": "array", "items": { "type": "object" } } } }
                        },
                        "400": { "description": "A bad parameter: `{\"error\": ...}`." },
                        "401": { "description": "No or bad bearer token (role analyst or admin)." },
                        "500": { "description": "The store failed: `{\"error\": ...}`." }
                    }
                }
            }),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tillstream query API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "What `tillstream query` answers, from a running server. Money is in minor units (`*_minor`); times are UTC microseconds (`*_us`). 64-bit ids (`sku`, `sku_a`, `sku_b`, `device`, `customer`, `digest`) are JSON strings of their digits, so that no parser rounds them past 2^53; rows with a store or a SKU carry the catalogue's `store_name`, `sku_code` and `sku_name` beside them, and a row summed over all stores has `store` null and `store_name` \"all stores\"."
        },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } }
        }
    })
}
