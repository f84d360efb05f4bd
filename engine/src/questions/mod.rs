//! The questions `tillstream query` asks, answered by one function whether
//! the tool reads a store itself or asks a running server through the HTTP
//! API (`GET /api/v1/<endpoint>?...`): both print the same JSON.
//!
//! Times travel as the text the user typed (`2026-11-21`,
//! `2026-11-21T10:00`, RFC 3339) and are parsed where the question is
//! answered, by the same code. What each parameter takes is one table
//! (`endpoints.rs`) that both the checks here and the OpenAPI document
//! (`schema.rs`, `v1.rs`) read; the rows' fields another (`rows.rs`).

use std::collections::HashMap;

use serde_json::Value;
use tillstream_storage::catalog::{self, Catalog};
use tillstream_storage::time::parse_ts;
use tillstream_storage::{Bucket, Query, StoreError, TopBy, analytics};

pub mod check;
mod endpoints;
mod openapi;
mod request;
pub mod rows;
mod schema;
mod v1;

pub use endpoints::{
    ENDPOINTS, Endpoint, Kind, MAX_DAYS, MAX_LIMIT, Param, TIME_PATTERN, endpoint,
};
pub use openapi::openapi;
pub use request::parse_query;

/// One question of the query API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// Sales and refunds of one store (or all) per hour or day.
    Sales {
        /// Store: its id or its catalogue name; all when `None`.
        store: Option<String>,
        /// The time range.
        range: Range,
        /// Bucket width.
        bucket: Bucket,
    },
    /// The best SKUs by quantity or revenue, net of refunds.
    TopSkus {
        /// Store: its id or its catalogue name; all (summed per SKU,
        /// with no store) when `None`.
        store: Option<String>,
        /// The time range.
        range: Range,
        /// Ranking.
        by: TopBy,
        /// Rows.
        limit: usize,
    },
    /// A SKU's stock movements in event-time order, each with the level
    /// as of its time.
    StockHistory {
        /// Store: its id or its catalogue name.
        store: String,
        /// SKU: its catalogue code or its id.
        sku: String,
        /// The time range.
        range: Range,
    },
    /// Current levels below a threshold, lowest first.
    LowStock {
        /// Store: its id or its catalogue name; all when `None`.
        store: Option<String>,
        /// Threshold (strictly below).
        below: i64,
    },
    /// Every device's durable watermark.
    Watermarks,
    /// Per-terminal totals and when each was last active.
    Terminals {
        /// Store: its id or its catalogue name; all when `None`.
        store: Option<String>,
        /// The time range.
        range: Range,
    },
    /// Per-device health: latest report and extremes.
    Health {
        /// Store: its id or its catalogue name; all when `None`.
        store: Option<String>,
        /// The time range.
        range: Range,
    },
    /// SKUs with stock and no sale in the last `days` days.
    DeadStock {
        /// Store: its id or its catalogue name; all when `None`.
        store: Option<String>,
        /// Days without a sale.
        days: u32,
    },
    /// SKUs most often bought together, with support, confidence, lift.
    BasketPairs {
        /// Store: its id or its catalogue name; all when `None`.
        store: Option<String>,
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
    /// The range in UTC µs, `None` when it holds nothing: a `to` before
    /// 1970 with no `from` (the tables hold nothing before it), say.
    /// Bounds both given, the wrong way round, are refused instead.
    fn bounds(&self) -> Result<Option<(i64, i64)>, QuestionError> {
        // The texts were checked against the document's pattern
        // ([`Question::check`]); this reads them.
        let parse = |s: &Option<String>, default: i64| match s {
            None => Ok(default),
            Some(s) => parse_ts(s).ok_or_else(|| {
                Refusal::invalid(format!(
                    "{s:?} is not a time like 2011-02-20, 2011-02-20T11:39 or RFC 3339"
                ))
            }),
        };
        let (from, to) = (parse(&self.from, 0)?, parse(&self.to, i64::MAX)?);
        if from < to {
            return Ok(Some((from, to)));
        }
        match (&self.from, &self.to) {
            // An empty range between two bounds is a mistake (swapped
            // bounds), not a question whose answer is "nothing".
            (Some(f), Some(t)) => Err(Refusal::invalid(format!(
                "from {f:?} is not before to {t:?}: the range is empty"
            ))),
            // One bound alone: the other is the end of what is stored.
            _ => Ok(None),
        }
    }
}

/// Why a question got no answer.
#[derive(Debug, thiserror::Error)]
pub enum QuestionError {
    /// The question cannot be answered as asked: [`Refusal::kind`] says
    /// whether it is malformed (HTTP 400), names what is not there (404)
    /// or names two things at once (409).
    #[error("{0}")]
    Bad(Refusal),
    /// The store failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QuestionError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> u16 {
        match self {
            QuestionError::Bad(r) => r.kind.status(),
            QuestionError::Store(_) => 500,
        }
    }
}

/// A question refused, and why, for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why}")]
pub struct Refusal {
    /// What kind of refusal.
    pub kind: Refused,
    /// What was wrong.
    pub why: String,
}

impl Refusal {
    /// A malformed question (400).
    pub(crate) fn invalid(why: impl Into<String>) -> QuestionError {
        QuestionError::Bad(Refusal {
            kind: Refused::Invalid,
            why: why.into(),
        })
    }
}

/// The kinds of [`Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a question the document allows: an unknown or repeated
    /// parameter, a value of the wrong form, a missing one, an empty
    /// range (HTTP 400).
    Invalid,
    /// No such endpoint, or a store or SKU the catalogue does not know
    /// (HTTP 404): the question is well formed, its subject is not there.
    Unknown,
    /// A text that is one thing's catalogue name and another's id (HTTP
    /// 409): well formed, but which one depends on the catalogue now.
    Ambiguous,
}

impl Refused {
    /// Its HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Refused::Invalid => 400,
            Refused::Unknown => 404,
            Refused::Ambiguous => 409,
        }
    }
}

fn bad(s: impl Into<String>) -> QuestionError {
    Refusal::invalid(s)
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
                out.extend(store.clone().map(|s| ("store", s)));
                range(r, &mut out);
                out.push(("bucket", bucket_name(*bucket).into()));
            }
            Question::TopSkus {
                store,
                range: r,
                by,
                limit,
            } => {
                out.extend(store.clone().map(|s| ("store", s)));
                range(r, &mut out);
                out.push(("by", by_name(*by).into()));
                out.push(("limit", limit.to_string()));
            }
            Question::StockHistory {
                store,
                sku,
                range: r,
            } => {
                out.push(("store", store.clone()));
                out.push(("sku", sku.clone()));
                range(r, &mut out);
            }
            Question::LowStock { store, below } => {
                out.extend(store.clone().map(|s| ("store", s)));
                out.push(("below", below.to_string()));
            }
            Question::Watermarks => {}
            Question::Terminals { store, range: r } | Question::Health { store, range: r } => {
                out.extend(store.clone().map(|s| ("store", s)));
                range(r, &mut out);
            }
            Question::DeadStock { store, days } => {
                out.extend(store.clone().map(|s| ("store", s)));
                out.push(("days", days.to_string()));
            }
            Question::BasketPairs {
                store,
                range: r,
                limit,
                min_baskets,
            } => {
                out.extend(store.clone().map(|s| ("store", s)));
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

    /// The question `GET /api/v1/<endpoint>?<raw>` asks ([`parse_query`],
    /// then [`Question::from_request`]).
    pub fn from_query(endpoint: &str, raw: Option<&str>) -> Result<Question, QuestionError> {
        let spec = endpoints::endpoint(endpoint).ok_or_else(|| no_endpoint(endpoint))?;
        Self::from_request(spec.name, &parse_query(raw.unwrap_or(""))?)
    }

    /// The question an HTTP request asks. An unknown endpoint is
    /// [`Refused::Unknown`]; unknown parameters, missing required ones
    /// and values the endpoint's [`Param`]s do not take are
    /// [`Refused::Invalid`].
    pub fn from_request(
        endpoint: &str,
        params: &HashMap<String, String>,
    ) -> Result<Question, QuestionError> {
        let spec = endpoints::endpoint(endpoint).ok_or_else(|| no_endpoint(endpoint))?;
        for (k, v) in params {
            let Some(p) = spec.param(k) else {
                let known: Vec<&str> = spec.params.iter().map(|p| p.name).collect();
                return Err(bad(format!(
                    "/api/v1/{endpoint} has no parameter {k:?} (it takes {known:?})"
                )));
            };
            p.check(v).map_err(bad)?;
        }
        if let Some(p) = spec
            .params
            .iter()
            .find(|p| p.required && !params.contains_key(p.name))
        {
            return Err(bad(format!("/api/v1/{endpoint} needs {}=", p.name)));
        }
        let text = |k: &str| params.get(k).cloned();
        // Checked above: these read what `Param::check` took.
        fn num<T: TryFrom<i64>>(
            params: &HashMap<String, String>,
            k: &str,
            default: T,
        ) -> Result<T, QuestionError> {
            match params.get(k) {
                None => Ok(default),
                Some(v) => endpoints::int_of(v)
                    .and_then(|n| T::try_from(n).ok())
                    .ok_or_else(|| bad(format!("{k}={v:?} is out of range"))),
            }
        }
        let need = |k: &str| bad(format!("/api/v1/{endpoint} needs {k}="));
        let range = Range {
            from: text("from"),
            to: text("to"),
        };
        Ok(match spec.name {
            "sales" => Question::Sales {
                store: text("store"),
                range,
                bucket: match text("bucket").as_deref() {
                    None | Some("day") => Bucket::Day,
                    Some("hour") => Bucket::Hour,
                    Some("minute") => Bucket::Minute,
                    Some(b) => return Err(bad(format!("bucket={b:?}: minute, hour or day"))),
                },
            },
            "top-skus" => Question::TopSkus {
                store: text("store"),
                range,
                by: match text("by").as_deref() {
                    None | Some("revenue") => TopBy::Revenue,
                    Some("quantity") => TopBy::Quantity,
                    Some(b) => return Err(bad(format!("by={b:?}: quantity or revenue"))),
                },
                limit: num(params, "limit", 10)?,
            },
            "stock-history" => Question::StockHistory {
                store: text("store").ok_or_else(|| need("store"))?,
                sku: text("sku").ok_or_else(|| need("sku"))?,
                range,
            },
            "low-stock" => Question::LowStock {
                store: text("store"),
                below: num(params, "below", 5)?,
            },
            "terminals" => Question::Terminals {
                store: text("store"),
                range,
            },
            "health" => Question::Health {
                store: text("store"),
                range,
            },
            "dead-stock" => Question::DeadStock {
                store: text("store"),
                days: num(params, "days", 30)?,
            },
            "basket-pairs" => Question::BasketPairs {
                store: text("store"),
                range,
                limit: num(params, "limit", 20)?,
                min_baskets: num(params, "min_baskets", 2)?,
            },
            _ => Question::Watermarks,
        })
    }

    /// Holds the question to what its endpoint's parameters take, as a
    /// request's would be: a question the CLI built (`--limit 0`) is
    /// refused as the same question over HTTP is, so both answer alike.
    pub fn check(&self) -> Result<(), QuestionError> {
        let spec = endpoint(self.endpoint()).ok_or_else(|| no_endpoint(self.endpoint()))?;
        for (k, v) in self.params() {
            if let Some(p) = spec.param(k) {
                p.check(&v).map_err(bad)?;
            }
        }
        Ok(())
    }

    /// The answer: a JSON array of objects, the same wherever it is asked.
    /// Blocks on the store: call it from a blocking thread.
    /// Stores and SKUs are named by id or by the catalogue (`85123A`,
    /// `United Kingdom`), and every row gets the catalogue's names beside
    /// its ids.
    pub fn answer(&self, q: &dyn Query) -> Result<Vec<Value>, QuestionError> {
        self.check()?;
        let catalog = q.catalog()?;
        let mut rows = self.answer_ids(q, &catalog)?;
        catalog::name_rows(&catalog, &mut rows);
        Ok(rows)
    }

    fn answer_ids(&self, q: &dyn Query, cat: &Catalog) -> Result<Vec<Value>, QuestionError> {
        let one_store = |s: &str| {
            request::store(cat, s).map_err(|e| match (e, s.trim()) {
                // `tillstream query sales --store scylla` meant the backend.
                (QuestionError::Bad(mut r), "scylla" | "embedded") => {
                    r.why = format!(
                        "{}; to read the {s} backend, name it before the question: `tillstream query --backend {s} ...`",
                        r.why
                    );
                    QuestionError::Bad(r)
                }
                (e, _) => e,
            })
        };
        let store = |s: &Option<String>| s.as_deref().map(one_store).transpose();
        fn values<T: serde::Serialize>(rows: Vec<T>) -> Vec<Value> {
            rows.into_iter()
                .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
                .collect()
        }
        Ok(match self {
            Question::Sales {
                store: s,
                range,
                bucket,
            } => {
                let (bounds, store) = (range.bounds()?, store(s)?);
                let Some((from, to)) = bounds else {
                    return Ok(Vec::new());
                };
                // A bucket says whose sales it sums, as the other answers
                // do: a store, or all of them (`null`, "all stores").
                let mut rows = values(q.sales_by_time(store, from, to, *bucket)?);
                for row in &mut rows {
                    if let Value::Object(obj) = row {
                        let mut scoped = serde_json::Map::with_capacity(obj.len() + 1);
                        scoped.insert("store".into(), store.into());
                        scoped.append(obj);
                        *obj = scoped;
                    }
                }
                rows
            }
            Question::TopSkus {
                store: s,
                range,
                by,
                limit,
            } => {
                let (bounds, store) = (range.bounds()?, store(s)?);
                let Some((from, to)) = bounds else {
                    return Ok(Vec::new());
                };
                values(q.top_skus(store, from, to, *by, *limit)?)
            }
            Question::StockHistory { store, sku, range } => {
                let bounds = range.bounds()?;
                let sku = request::sku(cat, sku)?;
                let store = one_store(store)?;
                let Some((from, to)) = bounds else {
                    return Ok(Vec::new());
                };
                values(q.stock_history(store, sku, from, to)?)
            }
            Question::LowStock { store: s, below } => values(q.low_stock(store(s)?, *below)?),
            Question::Watermarks => values(q.watermarks()?),
            Question::Terminals { store: s, range } => match scope(range.bounds()?, store(s)?) {
                Some(scope) => values(analytics::terminals(q, scope)?),
                None => Vec::new(),
            },
            Question::Health { store: s, range } => match scope(range.bounds()?, store(s)?) {
                Some(scope) => values(analytics::health(q, scope)?),
                None => Vec::new(),
            },
            Question::DeadStock { store: s, days } => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
                // Saturating: a CLI's `--days` is any u32, and days in
                // microseconds pass i64 from 106,751 days on.
                let back = i64::from(*days).saturating_mul(tillstream_storage::time::DAY_US);
                let scope = analytics::Scope {
                    store: store(s)?,
                    from_us: now.saturating_sub(back),
                    to_us: i64::MAX,
                };
                values(analytics::dead_stock(q, scope)?)
            }
            Question::BasketPairs {
                store: s,
                range,
                limit,
                min_baskets,
            } => match scope(range.bounds()?, store(s)?) {
                Some(scope) => values(analytics::basket_pairs(q, scope, *limit, *min_baskets)?),
                None => Vec::new(),
            },
        })
    }
}

fn no_endpoint(endpoint: &str) -> QuestionError {
    let known: Vec<&str> = ENDPOINTS.iter().map(|e| e.name).collect();
    QuestionError::Bad(Refusal {
        kind: Refused::Unknown,
        why: format!("no endpoint /api/v1/{endpoint} (there are {known:?})"),
    })
}

/// The analytics' scope; `None` for a range that holds nothing.
fn scope(bounds: Option<(i64, i64)>, store: Option<u32>) -> Option<analytics::Scope> {
    bounds.map(|(from_us, to_us)| analytics::Scope {
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_contract;
