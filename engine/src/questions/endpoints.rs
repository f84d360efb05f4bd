//! The endpoints of the query API, `/api/v1/<question>`, and what each
//! parameter takes: one table, which the server checks every request
//! against ([`Param::check`]) and the OpenAPI document (`schema.rs`)
//! describes, so that the two cannot disagree. They did (issue 70): the
//! document promised free strings where the server took an enum or a
//! date, and a contract fuzzer's schema-valid requests came back 400.

use std::sync::LazyLock;

use tillstream_storage::time::parse_ts;

use super::rows::{self, Field};

/// What a parameter takes.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A store or a SKU as an analyst names it: its id or the catalogue's
    /// name or code for it. Any text of one character or more; one the
    /// catalogue does not know is answered 404, not 400.
    Name,
    /// One of these words.
    Word(&'static [&'static str]),
    /// A whole number from `min` to `max`, in decimal digits with an
    /// optional `-` (no `+`, no spaces).
    Int {
        /// The least value taken.
        min: i64,
        /// The greatest value taken.
        max: i64,
    },
    /// A time in one of the forms of [`TIME_PATTERN`].
    Time,
}

/// A query parameter of an endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Its name in the query string.
    pub name: &'static str,
    /// What it takes.
    pub kind: Kind,
    /// Whether it must be given.
    pub required: bool,
    /// What it means.
    pub help: &'static str,
    /// A value to show (and that answers with rows on the sample of
    /// `loadgen/tests/data/`), if it is worth more than the schema says.
    pub example: Option<&'static str>,
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
    /// The name of its row's schema in the document's components.
    pub row: &'static str,
    /// The fields of each row it answers, in the order they come.
    pub fields: &'static [Field],
}

/// The times `from` and `to` take, as a JSON Schema (ECMA 262) pattern
/// that the regex crate reads the same way: a date that exists (4-digit
/// year; 29 February only in leap years), optionally a time of day (`T`,
/// `t` or a space, `HH:MM`, optionally `:SS` (60 for a leap second) and
/// up to 9 digits of fraction), optionally a zone (`Z` or `±HH:MM`; UTC
/// without one). Every string it matches is a time
/// [`parse_ts`](tillstream_storage::time::parse_ts) reads (a test holds
/// it to that), and the server takes nothing it does not match, so the
/// document is exact where `parse_ts`'s own leniency (spaces around,
/// `+` signs, one-digit months) is not.
pub const TIME_PATTERN: &str = concat!(
    "^(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])",
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))",
    "|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)",
    "(?:[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::(?:[0-5][0-9]|60)(?:\\.[0-9]{1,9})?)?",
    "(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?)?$"
);

/// Whether `v` matches [`TIME_PATTERN`], compiled once. (A constant the
/// tests compile; were it ever not to, nothing would match rather than
/// a request panic.)
fn is_time(v: &str) -> bool {
    static RE: LazyLock<Option<regex::Regex>> =
        LazyLock::new(|| regex::Regex::new(TIME_PATTERN).ok());
    RE.as_ref().is_some_and(|re| re.is_match(v))
}

/// The most rows `limit` asks for: an answer past it is an export
/// (`tillstream export`), not a question, and would be built in memory.
pub const MAX_LIMIT: i64 = 10_000;

/// The most days `days` looks back: a century, far past any shop's
/// history, and far from where days in microseconds overflow.
pub const MAX_DAYS: i64 = 36_525;

/// A whole number as [`Kind::Int`] spells it, or `None`.
pub(crate) fn int_of(v: &str) -> Option<i64> {
    let digits = v.strip_prefix('-').unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

impl Param {
    /// Whether `v` is a value this parameter takes; the error says what
    /// it takes instead.
    pub fn check(&self, v: &str) -> Result<(), String> {
        let name = self.name;
        match self.kind {
            Kind::Name if v.is_empty() => Err(format!(
                "{name}= is empty: give its id or the catalogue's name for it"
            )),
            Kind::Name => Ok(()),
            Kind::Word(words) if words.contains(&v) => Ok(()),
            Kind::Word(words) => Err(format!("{name}={v:?}: one of {}", words.join(", "))),
            Kind::Int { min, max } => match int_of(v) {
                Some(n) if (min..=max).contains(&n) => Ok(()),
                _ => Err(format!(
                    "{name}={v:?} is not a whole number from {min} to {max}"
                )),
            },
            Kind::Time if is_time(v) && parse_ts(v).is_some() => Ok(()),
            Kind::Time => Err(format!(
                "{name}={v:?} is not a time like 2011-02-20, 2011-02-20T11:39 (UTC) or RFC 3339 (2011-02-20T11:39:00Z, 2011-02-20T12:39:00+01:00)"
            )),
        }
    }
}

impl Endpoint {
    /// Its parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&'static Param> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// The endpoint called `name`.
pub fn endpoint(name: &str) -> Option<&'static Endpoint> {
    ENDPOINTS.iter().find(|e| e.name == name)
}

const STORE_HELP: &str = "Store: its id (28) or its name in the catalogue (United Kingdom; case ignored). `id:` or `name:` in front settles a text that is both. A name the catalogue does not know is a 404; a text that is one store's name and another's id, without `id:` or `name:`, a 409.";

const STORE: Param = Param {
    name: "store",
    kind: Kind::Name,
    required: false,
    help: STORE_HELP,
    example: Some("United Kingdom"),
};
const FROM: Param = Param {
    name: "from",
    kind: Kind::Time,
    required: false,
    help: "Start, inclusive: a date (2011-02-20, midnight UTC), a date and time (2011-02-20T11:39 or 2011-02-20 11:39:05.25, UTC) or RFC 3339 (2011-02-20T12:39:00+01:00). The beginning of time when left out. When both are given, `from` must be before `to` (else 400); one alone that leaves nothing between it and the other end answers no rows.",
    example: Some("2010-12-01"),
};
const TO: Param = Param {
    name: "to",
    kind: Kind::Time,
    required: false,
    help: "End, exclusive, in the forms of `from`. The end of time when left out.",
    example: Some("2011-12-10"),
};
const LIMIT: Kind = Kind::Int {
    min: 1,
    max: MAX_LIMIT,
};

/// The endpoints of the query API, in the order the OpenAPI document
/// lists them.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        name: "sales",
        summary: "Sales and refunds per minute, hour or day: counts, items, gross, tax, refunded, net (minor units). Buckets without sales are left out.",
        params: &[
            STORE,
            FROM,
            TO,
            Param {
                name: "bucket",
                kind: Kind::Word(&["minute", "hour", "day"]),
                required: false,
                help: "Bucket width: minute, hour or day (default day).",
                example: None,
            },
        ],
        row: "SalesBucket",
        fields: rows::SALES,
    },
    Endpoint {
        name: "top-skus",
        summary: "The best-selling SKUs, net of refunds, best first; over all stores (store null) unless one is named.",
        params: &[
            STORE,
            FROM,
            TO,
            Param {
                name: "by",
                kind: Kind::Word(&["quantity", "revenue"]),
                required: false,
                help: "Ranking: quantity (units) or revenue (minor units), net of refunds (default revenue).",
                example: None,
            },
            Param {
                name: "limit",
                kind: LIMIT,
                required: false,
                help: "Rows, at most 10000 (default 10).",
                example: None,
            },
        ],
        row: "SkuTotal",
        fields: rows::SKU_TOTAL,
    },
    Endpoint {
        name: "stock-history",
        summary: "A SKU's stock movements in event-time order, each with the level as of its time: the latest count at or before it plus the movements between (a late movement changes the rows after it).",
        params: &[
            Param {
                required: true,
                ..STORE
            },
            Param {
                name: "sku",
                kind: Kind::Name,
                required: true,
                help: "SKU: the catalogue's code for it (85123A; case ignored) or its id (4359830775492328649). `code:` or `id:` in front settles a text that is both. A code the catalogue does not know is a 404; a text that is one product's code and another's id, without `code:` or `id:`, a 409.",
                example: Some("85123A"),
            },
            FROM,
            TO,
        ],
        row: "StockMovement",
        fields: rows::MOVEMENT,
    },
    Endpoint {
        name: "low-stock",
        summary: "SKUs whose current level is below a threshold, lowest first.",
        params: &[
            STORE,
            Param {
                name: "below",
                kind: Kind::Int {
                    min: i64::MIN,
                    max: i64::MAX,
                },
                required: false,
                help: "Threshold, strictly below; may be negative (default 5).",
                example: None,
            },
        ],
        row: "StockLevel",
        fields: rows::LEVEL,
    },
    Endpoint {
        name: "watermarks",
        summary: "Every device's highest durable batch seq.",
        params: &[],
        row: "Watermark",
        fields: rows::WATERMARK,
    },
    Endpoint {
        name: "terminals",
        summary: "Per-terminal sales, refunds and money (minor units) from the rollups, and the last active minute.",
        params: &[STORE, FROM, TO],
        row: "TerminalTotal",
        fields: rows::TERMINAL,
    },
    Endpoint {
        name: "health",
        summary: "Per-device health: reports, last seen, battery (last and lowest; 255 = on mains power), hottest (tenths of a degree Celsius), weakest signal (dBm), deepest queue.",
        params: &[STORE, FROM, TO],
        row: "DeviceHealth",
        fields: rows::HEALTH,
    },
    Endpoint {
        name: "dead-stock",
        summary: "SKUs with stock and no sale in the last N days, most stock first.",
        params: &[
            STORE,
            Param {
                name: "days",
                kind: Kind::Int {
                    min: 0,
                    max: MAX_DAYS,
                },
                required: false,
                help: "Days without a sale, counted back from now, at most 36525 (default 30); 0 lists every SKU with stock.",
                example: None,
            },
        ],
        row: "DeadStock",
        fields: rows::DEAD_STOCK,
    },
    Endpoint {
        name: "basket-pairs",
        summary: "SKUs most often in one sale: baskets, support, confidence (of B given A) and lift; over all stores (store null) unless one is named.",
        params: &[
            STORE,
            FROM,
            TO,
            Param {
                name: "limit",
                kind: LIMIT,
                required: false,
                help: "Pairs, at most 10000 (default 20).",
                example: None,
            },
            Param {
                name: "min_baskets",
                kind: Kind::Int {
                    min: 1,
                    max: i64::MAX,
                },
                required: false,
                help: "Least baskets a pair must be in (default 2).",
                example: None,
            },
        ],
        row: "BasketPair",
        fields: rows::BASKET_PAIR,
    },
];
