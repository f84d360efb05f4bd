//! The questions `tillstream query` asks, answered by one function whether
//! the tool reads a store itself or asks a running server through the HTTP
//! API (`GET /api/v1/<endpoint>?...`): both print the same JSON.
//!
//! Times travel as the text the user typed (`2026-11-21`,
//! `2026-11-21T10:00`, RFC 3339) and are parsed where the question is
//! answered, by the same code.

use std::collections::HashMap;

use serde_json::{Value, json};
use tillstream_storage::time::parse_ts;
use tillstream_storage::{Bucket, Query, StoreError, TopBy, analytics};

/// One question of the query API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// Sales and refunds of one store (or all) per hour or day.
    Sales {
        /// Store id; all when `None`.
        store: Option<u32>,
        /// The time range.
        range: Range,
        /// Bucket width.
        bucket: Bucket,
    },
    /// The best SKUs by quantity or revenue, net of refunds.
    TopSkus {
        /// Store id; all (summed per SKU, store 0) when `None`.
        store: Option<u32>,
        /// The time range.
        range: Range,
        /// Ranking.
        by: TopBy,
        /// Rows.
        limit: usize,
    },
    /// A SKU's stock movements with the level after each.
    StockHistory {
        /// Store id.
        store: u32,
        /// SKU.
        sku: u64,
        /// The time range.
        range: Range,
    },
    /// Current levels below a threshold, lowest first.
    LowStock {
        /// Store id; all when `None`.
        store: Option<u32>,
        /// Threshold (strictly below).
        below: i64,
    },
    /// Every device's durable watermark.
    Watermarks,
    /// Per-terminal totals and when each was last active.
    Terminals {
        /// Store id; all when `None`.
        store: Option<u32>,
        /// The time range.
        range: Range,
    },
    /// Per-device health: latest report and extremes.
    Health {
        /// Store id; all when `None`.
        store: Option<u32>,
        /// The time range.
        range: Range,
    },
    /// SKUs with stock and no sale in the last `days` days.
    DeadStock {
        /// Store id; all when `None`.
        store: Option<u32>,
        /// Days without a sale.
        days: u32,
    },
    /// SKUs most often bought together, with support, confidence, lift.
    BasketPairs {
        /// Store id; all when `None`.
        store: Option<u32>,
        /// The time range.
        range: Range,
        /// Pairs.
        limit: usize,
        /// Least baskets a pair must be in.
        min_baskets: u64,
    },
}

/// A time range as typed: start inclusive, end exclusive, each optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Range {
    /// Start; the beginning of time when `None`.
    pub from: Option<String>,
    /// End; the end of time when `None`.
    pub to: Option<String>,
}

impl Range {
    fn bounds(&self) -> Result<(i64, i64), QuestionError> {
        let parse = |s: &Option<String>, default: i64| match s {
            None => Ok(default),
            Some(s) => parse_ts(s).ok_or_else(|| {
                QuestionError::Bad(format!(
                    "{s:?} is not a time like 2011-02-20, 2011-02-20T11:39 or RFC 3339"
                ))
            }),
        };
        Ok((parse(&self.from, 0)?, parse(&self.to, i64::MAX)?))
    }
}

/// Why a question got no answer.
#[derive(Debug, thiserror::Error)]
pub enum QuestionError {
    /// The question itself is wrong (HTTP 400).
    #[error("{0}")]
    Bad(String),
    /// The store failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

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
    kind: "integer",
    required: false,
    help: "Store id; all stores when left out.",
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
        summary: "A SKU's stock movements in time order, each with the level after it.",
        params: &[
            Param {
                required: true,
                help: "Store id.",
                ..STORE
            },
            Param {
                name: "sku",
                kind: "integer",
                required: true,
                help: "SKU.",
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

fn bad(s: impl Into<String>) -> QuestionError {
    QuestionError::Bad(s.into())
}

impl Question {
    /// The endpoint that answers it.
    pub fn endpoint(&self) -> &'static str {
        match self {
            Question::Sales { .. } => "sales",
            Question::TopSkus { .. } => "top-skus",
            Question::StockHistory { .. } => "stock-history",
            Question::LowStock { .. } => "low-stock",
            Question::Watermarks => "watermarks",
            Question::Terminals { .. } => "terminals",
            Question::Health { .. } => "health",
            Question::DeadStock { .. } => "dead-stock",
            Question::BasketPairs { .. } => "basket-pairs",
        }
    }

    /// Its parameters, as the query string carries them.
    pub fn params(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let range = |r: &Range, out: &mut Vec<(&'static str, String)>| {
            out.extend(r.from.clone().map(|v| ("from", v)));
            out.extend(r.to.clone().map(|v| ("to", v)));
        };
        match self {
            Question::Sales {
                store,
                range: r,
                bucket,
            } => {
                out.extend(store.map(|s| ("store", s.to_string())));
                range(r, &mut out);
                out.push(("bucket", bucket_name(*bucket).into()));
            }
            Question::TopSkus {
                store,
                range: r,
                by,
                limit,
            } => {
                out.extend(store.map(|s| ("store", s.to_string())));
                range(r, &mut out);
                out.push(("by", by_name(*by).into()));
                out.push(("limit", limit.to_string()));
            }
            Question::StockHistory {
                store,
                sku,
                range: r,
            } => {
                out.push(("store", store.to_string()));
                out.push(("sku", sku.to_string()));
                range(r, &mut out);
            }
            Question::LowStock { store, below } => {
                out.extend(store.map(|s| ("store", s.to_string())));
                out.push(("below", below.to_string()));
            }
            Question::Watermarks => {}
            Question::Terminals { store, range: r } | Question::Health { store, range: r } => {
                out.extend(store.map(|s| ("store", s.to_string())));
                range(r, &mut out);
            }
            Question::DeadStock { store, days } => {
                out.extend(store.map(|s| ("store", s.to_string())));
                out.push(("days", days.to_string()));
            }
            Question::BasketPairs {
                store,
                range: r,
                limit,
                min_baskets,
            } => {
                out.extend(store.map(|s| ("store", s.to_string())));
                range(r, &mut out);
                out.push(("limit", limit.to_string()));
                out.push(("min_baskets", min_baskets.to_string()));
            }
        }
        out
    }

    /// `/api/v1/<endpoint>?<params>`, percent-encoded.
    pub fn path_and_query(&self) -> String {
        let query: Vec<String> = self
            .params()
            .into_iter()
            .map(|(k, v)| format!("{k}={}", encode(&v)))
            .collect();
        let mut path = format!("/api/v1/{}", self.endpoint());
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        path
    }

    /// The question an HTTP request asks. Unknown endpoints or
    /// parameters, and values that do not parse, are [`QuestionError::Bad`].
    pub fn from_request(
        endpoint: &str,
        params: &HashMap<String, String>,
    ) -> Result<Question, QuestionError> {
        let spec = ENDPOINTS
            .iter()
            .find(|e| e.name == endpoint)
            .ok_or_else(|| bad(format!("no endpoint /api/v1/{endpoint}")))?;
        for k in params.keys() {
            if !spec.params.iter().any(|p| p.name == k) {
                let known: Vec<&str> = spec.params.iter().map(|p| p.name).collect();
                return Err(bad(format!(
                    "/api/v1/{endpoint} has no parameter {k:?} (it takes {known:?})"
                )));
            }
        }
        let text = |k: &str| params.get(k).cloned();
        fn num<T: std::str::FromStr>(
            params: &HashMap<String, String>,
            k: &str,
        ) -> Result<Option<T>, QuestionError> {
            params
                .get(k)
                .map(|v| {
                    v.parse()
                        .map_err(|_| bad(format!("{k}={v:?} is not a valid number")))
                })
                .transpose()
        }
        let need = |k: &str| bad(format!("/api/v1/{endpoint} needs {k}="));
        let range = Range {
            from: text("from"),
            to: text("to"),
        };
        Ok(match endpoint {
            "sales" => Question::Sales {
                store: num(params, "store")?,
                range,
                bucket: match text("bucket").as_deref() {
                    None | Some("day") => Bucket::Day,
                    Some("hour") => Bucket::Hour,
                    Some("minute") => Bucket::Minute,
                    Some(b) => return Err(bad(format!("bucket={b:?}: minute, hour or day"))),
                },
            },
            "top-skus" => Question::TopSkus {
                store: num(params, "store")?,
                range,
                by: match text("by").as_deref() {
                    None | Some("revenue") => TopBy::Revenue,
                    Some("quantity") => TopBy::Quantity,
                    Some(b) => return Err(bad(format!("by={b:?}: quantity or revenue"))),
                },
                limit: num(params, "limit")?.unwrap_or(10),
            },
            "stock-history" => Question::StockHistory {
                store: num(params, "store")?.ok_or_else(|| need("store"))?,
                sku: num(params, "sku")?.ok_or_else(|| need("sku"))?,
                range,
            },
            "low-stock" => Question::LowStock {
                store: num(params, "store")?,
                below: num(params, "below")?.unwrap_or(5),
            },
            "terminals" => Question::Terminals {
                store: num(params, "store")?,
                range,
            },
            "health" => Question::Health {
                store: num(params, "store")?,
                range,
            },
            "dead-stock" => Question::DeadStock {
                store: num(params, "store")?,
                days: num(params, "days")?.unwrap_or(30),
            },
            "basket-pairs" => Question::BasketPairs {
                store: num(params, "store")?,
                range,
                limit: num(params, "limit")?.unwrap_or(20),
                min_baskets: num(params, "min_baskets")?.unwrap_or(2),
            },
            _ => Question::Watermarks,
        })
    }

    /// The answer: a JSON array of objects, the same wherever it is asked.
    /// Blocks on the store: call it from a blocking thread.
    pub fn answer(&self, q: &dyn Query) -> Result<Vec<Value>, QuestionError> {
        let mut rows = self.answer_ids(q)?;
        if !rows.is_empty() && !matches!(self, Question::Watermarks | Question::Health { .. }) {
            tillstream_storage::catalog::name_rows(&q.catalog()?, &mut rows);
        }
        Ok(rows)
    }

    fn answer_ids(&self, q: &dyn Query) -> Result<Vec<Value>, QuestionError> {
        fn values<T: serde::Serialize>(rows: Vec<T>) -> Vec<Value> {
            rows.into_iter()
                .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
                .collect()
        }
        Ok(match self {
            Question::Sales {
                store,
                range,
                bucket,
            } => {
                let (from, to) = range.bounds()?;
                values(q.sales_by_time(*store, from, to, *bucket)?)
            }
            Question::TopSkus {
                store,
                range,
                by,
                limit,
            } => {
                let (from, to) = range.bounds()?;
                values(q.top_skus(*store, from, to, *by, *limit)?)
            }
            Question::StockHistory { store, sku, range } => {
                let (from, to) = range.bounds()?;
                values(q.stock_history(*store, *sku, from, to)?)
            }
            Question::LowStock { store, below } => values(q.low_stock(*store, *below)?),
            Question::Watermarks => values(q.watermarks()?),
            Question::Terminals { store, range } => {
                values(analytics::terminals(q, scope(*store, range)?)?)
            }
            Question::Health { store, range } => {
                values(analytics::health(q, scope(*store, range)?)?)
            }
            Question::DeadStock { store, days } => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
                let scope = analytics::Scope {
                    store: *store,
                    from_us: now.saturating_sub(i64::from(*days) * 86_400_000_000),
                    to_us: i64::MAX,
                };
                values(analytics::dead_stock(q, scope)?)
            }
            Question::BasketPairs {
                store,
                range,
                limit,
                min_baskets,
            } => values(analytics::basket_pairs(
                q,
                scope(*store, range)?,
                *limit,
                *min_baskets,
            )?),
        })
    }
}

fn scope(store: Option<u32>, range: &Range) -> Result<analytics::Scope, QuestionError> {
    let (from_us, to_us) = range.bounds()?;
    Ok(analytics::Scope {
        store,
        from_us,
        to_us,
    })
}

fn bucket_name(b: Bucket) -> &'static str {
    match b {
        Bucket::Minute => "minute",
        Bucket::Hour => "hour",
        Bucket::Day => "day",
    }
}

fn by_name(b: TopBy) -> &'static str {
    match b {
        TopBy::Quantity => "quantity",
        TopBy::Revenue => "revenue",
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

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
            "description": "What `tillstream query` answers, from a running server. Money is in minor units; times are UTC microseconds (`*_us`)."
        },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Question> {
        let range = Range {
            from: Some("2026-11-21".into()),
            to: Some("2026-11-22T10:00:00+01:00".into()),
        };
        vec![
            Question::Sales {
                store: Some(3),
                range: range.clone(),
                bucket: Bucket::Hour,
            },
            Question::TopSkus {
                store: None,
                range: range.clone(),
                by: TopBy::Quantity,
                limit: 7,
            },
            Question::StockHistory {
                store: 1,
                sku: u64::MAX,
                range: Range::default(),
            },
            Question::LowStock {
                store: Some(2),
                below: -4,
            },
            Question::Watermarks,
            Question::Terminals {
                store: Some(4),
                range: range.clone(),
            },
            Question::Health {
                store: None,
                range: Range::default(),
            },
            Question::DeadStock {
                store: Some(1),
                days: 14,
            },
            Question::BasketPairs {
                store: None,
                range,
                limit: 5,
                min_baskets: 3,
            },
        ]
    }

    /// What the CLI sends is what the server reads back: the question
    /// survives its trip through a URL.
    #[test]
    fn a_question_survives_its_trip_through_a_url() -> Result<(), String> {
        for q in every_kind() {
            let url = q.path_and_query();
            let (path, query) = url.split_once('?').unwrap_or((&url, ""));
            let endpoint = path.trim_start_matches("/api/v1/");
            let params: HashMap<String, String> = query
                .split('&')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), decode(v)))
                .collect();
            let back = Question::from_request(endpoint, &params).map_err(|e| e.to_string())?;
            assert_eq!(back, q, "{url}");
        }
        Ok(())
    }

    fn decode(v: &str) -> String {
        let bytes = v.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() + 1 {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let ask = |endpoint: &str, kv: &[(&str, &str)]| {
            let params = kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Question::from_request(endpoint, &params)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(ask("nope", &[]).contains("no endpoint"));
        assert!(ask("sales", &[("stor", "1")]).contains("no parameter \"stor\""));
        assert!(ask("sales", &[("store", "x")]).contains("not a valid number"));
        assert!(ask("sales", &[("bucket", "week")]).contains("minute, hour or day"));
        assert!(ask("stock-history", &[("store", "1")]).contains("needs sku="));
    }

    #[test]
    fn the_openapi_document_lists_every_endpoint_and_parameter() {
        let doc = openapi();
        for q in every_kind() {
            let path = format!("/api/v1/{}", q.endpoint());
            let op = &doc["paths"][&path]["get"];
            assert!(op.is_object(), "{path} is not in the document");
            for (name, _) in q.params() {
                let listed = op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == name));
                assert!(listed, "{path}: {name} is not documented");
            }
        }
        assert_eq!(
            doc["paths"].as_object().map(serde_json::Map::len),
            Some(ENDPOINTS.len())
        );
    }
}
