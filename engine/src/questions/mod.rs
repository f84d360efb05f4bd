//! The questions `tillstream query` asks, answered by one function whether
//! the tool reads a store itself or asks a running server through the HTTP
//! API (`GET /api/v1/<endpoint>?...`): both print the same JSON.
//!
//! Times travel as the text the user typed (`2026-11-21`,
//! `2026-11-21T10:00`, RFC 3339) and are parsed where the question is
//! answered, by the same code.

use std::collections::HashMap;

use serde_json::Value;
use tillstream_storage::time::parse_ts;
use tillstream_storage::catalog::{self, Catalog};
use tillstream_storage::{Bucket, Query, StoreError, TopBy, analytics};

mod endpoints;

pub use endpoints::{ENDPOINTS, Endpoint, Param, openapi};

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
    fn bounds(&self) -> Result<(i64, i64), QuestionError> {
        let parse = |s: &Option<String>, default: i64| match s {
            None => Ok(default),
            Some(s) => parse_ts(s).ok_or_else(|| {
                QuestionError::Bad(format!(
                    "{s:?} is not a time like 2011-02-20, 2011-02-20T11:39 or RFC 3339"
                ))
            }),
        };
        let (from, to) = (parse(&self.from, 0)?, parse(&self.to, i64::MAX)?);
        if from >= to {
            // An empty range is a mistake (swapped bounds), not a question
            // whose answer is "nothing".
            return Err(QuestionError::Bad(format!(
                "from {:?} is not before to {:?}: the range is empty",
                self.from.as_deref().unwrap_or("the beginning"),
                self.to.as_deref().unwrap_or("the end")
            )));
        }
        Ok((from, to))
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
                limit: num(params, "limit")?.unwrap_or(10),
            },
            "stock-history" => Question::StockHistory {
                store: text("store").ok_or_else(|| need("store"))?,
                sku: text("sku").ok_or_else(|| need("sku"))?,
                range,
            },
            "low-stock" => Question::LowStock {
                store: text("store"),
                below: num(params, "below")?.unwrap_or(5),
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
                days: num(params, "days")?.unwrap_or(30),
            },
            "basket-pairs" => Question::BasketPairs {
                store: text("store"),
                range,
                limit: num(params, "limit")?.unwrap_or(20),
                min_baskets: num(params, "min_baskets")?.unwrap_or(2),
            },
            _ => Question::Watermarks,
        })
    }

    /// The answer: a JSON array of objects, the same wherever it is asked.
    /// Blocks on the store: call it from a blocking thread.
    /// Stores and SKUs are named by id or by the catalogue (`85123A`,
    /// `United Kingdom`), and every row gets the catalogue's names beside
    /// its ids.
    pub fn answer(&self, q: &dyn Query) -> Result<Vec<Value>, QuestionError> {
        let catalog = q.catalog()?;
        let mut rows = self.answer_ids(q, &catalog)?;
        catalog::name_rows(&catalog, &mut rows);
        Ok(rows)
    }

    fn answer_ids(&self, q: &dyn Query, cat: &Catalog) -> Result<Vec<Value>, QuestionError> {
        let one_store = |s: &str| catalog::resolve_store(cat, s).map_err(QuestionError::Bad);
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
                let (from, to) = range.bounds()?;
                values(q.sales_by_time(store(s)?, from, to, *bucket)?)
            }
            Question::TopSkus {
                store: s,
                range,
                by,
                limit,
            } => {
                let (from, to) = range.bounds()?;
                values(q.top_skus(store(s)?, from, to, *by, *limit)?)
            }
            Question::StockHistory { store, sku, range } => {
                let (from, to) = range.bounds()?;
                let sku = catalog::resolve_sku(cat, sku).map_err(QuestionError::Bad)?;
                values(q.stock_history(one_store(store)?, sku, from, to)?)
            }
            Question::LowStock { store: s, below } => values(q.low_stock(store(s)?, *below)?),
            Question::Watermarks => values(q.watermarks()?),
            Question::Terminals { store: s, range } => {
                values(analytics::terminals(q, scope(store(s)?, range)?)?)
            }
            Question::Health { store: s, range } => {
                values(analytics::health(q, scope(store(s)?, range)?)?)
            }
            Question::DeadStock { store: s, days } => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
                let scope = analytics::Scope {
                    store: store(s)?,
                    from_us: now.saturating_sub(i64::from(*days) * 86_400_000_000),
                    to_us: i64::MAX,
                };
                values(analytics::dead_stock(q, scope)?)
            }
            Question::BasketPairs {
                store: s,
                range,
                limit,
                min_baskets,
            } => values(analytics::basket_pairs(
                q,
                scope(store(s)?, range)?,
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

#[cfg(test)]
mod tests;
