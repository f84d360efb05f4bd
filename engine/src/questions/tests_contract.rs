//! The OpenAPI document against the server (issue 70, items 12 and 13):
//! what the document allows, the checks take, and what they take, the
//! document allows; the time pattern against `parse_ts`; every answer of
//! a real store against its row schema.

use proptest::prelude::*;
use serde_json::{Value, json};
use tillstream_embedded::EmbeddedStore;
use tillstream_storage::Store;
use tillstream_storage::catalog::{Catalog, Product, StoreInfo};
use tillstream_storage::rows::*;
use tillstream_storage::time::parse_ts;

use super::*;

fn time_regex() -> regex::Regex {
    regex::Regex::new(TIME_PATTERN).expect("TIME_PATTERN compiles")
}

const FROM_PARAM: Param = Param {
    name: "from",
    kind: Kind::Time,
    required: false,
    help: "",
    example: None,
};

/// Every date of years around the leap rules, with and without a time:
/// the pattern matches exactly those `parse_ts` reads.
#[test]
fn the_time_pattern_matches_exactly_the_dates_that_exist() {
    let re = time_regex();
    for y in [0, 1900, 1970, 2000, 2011, 2023, 2024, 2100, 2400, 9999] {
        for m in 0..=13 {
            for d in 0..=32 {
                for suffix in ["", "T10:00", " 23:59:60.5Z", "t00:00:00-05:30"] {
                    let s = format!("{y:04}-{m:02}-{d:02}{suffix}");
                    assert_eq!(re.is_match(&s), parse_ts(&s).is_some(), "{s}");
                    assert_eq!(FROM_PARAM.check(&s).is_ok(), re.is_match(&s), "{s}");
                }
            }
        }
    }
}

/// What `parse_ts` is lenient about, the document does not promise, so
/// the server refuses it too.
#[test]
fn times_outside_the_pattern_are_refused_though_parse_ts_reads_them() {
    for s in [
        " 2011-02-20",
        "2011-2-20",
        "+2011-02-20",
        "2011-02-20T1:39",
        "2011-02-20T11:39:00.",
        "2011-02-20T11:39:00.1234567890",
        "2011-02-20Z",
        "20110-02-20",
        "",
    ] {
        assert!(!time_regex().is_match(s), "{s:?}");
        assert!(FROM_PARAM.check(s).is_err(), "{s:?}");
    }
}

fn drawn_from(pattern: &str) -> impl Strategy<Value = String> {
    let inner = pattern.trim_start_matches('^').trim_end_matches('$');
    proptest::string::string_regex(inner).expect("the pattern is one proptest draws from")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Strings drawn from the pattern all parse, and the server takes them.
    #[test]
    fn every_string_of_the_time_pattern_parses(s in drawn_from(TIME_PATTERN)) {
        prop_assert!(parse_ts(&s).is_some(), "{s:?}");
        prop_assert!(FROM_PARAM.check(&s).is_ok(), "{s:?}");
    }

    /// Near misses (a character replaced, dropped or added): whatever the
    /// pattern matches parses, and the server takes exactly that.
    #[test]
    fn near_misses_of_the_time_pattern_agree_with_the_server(
        s in drawn_from(TIME_PATTERN),
        at in 0usize..40,
        c in proptest::sample::select(&['0', '1', '2', '3', '9', '-', ':', 'T', ' ', 'Z', '+', '.', 'x'][..]),
        how in 0u8..3,
    ) {
        let mut chars: Vec<char> = s.chars().collect();
        let at = at.min(chars.len());
        match how {
            0 if at < chars.len() => chars[at] = c,
            1 if at < chars.len() => { chars.remove(at); }
            _ => chars.insert(at, c),
        }
        let v: String = chars.into_iter().collect();
        let matched = time_regex().is_match(&v);
        if matched {
            prop_assert!(parse_ts(&v).is_some(), "{v:?} matches but does not parse");
        }
        prop_assert_eq!(FROM_PARAM.check(&v).is_ok(), matched, "{:?}", v);
    }

    /// The pattern of a 64-bit id a request may send as text matches the
    /// texts `u64::from_str` reads, and no larger number.
    #[test]
    fn the_u64_pattern_is_u64s_range(n in any::<u64>(), zeros in 0usize..3, over in 1u128..u128::from(u64::MAX)) {
        let re = regex::Regex::new(&v1::decimal_up_to(u64::MAX)).expect("compiles");
        let text = format!("{}{n}", "0".repeat(zeros));
        prop_assert!(re.is_match(&text), "{text}");
        let past = (u128::from(u64::MAX) + over).to_string();
        prop_assert!(!re.is_match(&past), "{past}");
    }
}

#[test]
fn the_u64_pattern_holds_at_its_edges() {
    let re = regex::Regex::new(&v1::decimal_up_to(u64::MAX)).expect("compiles");
    for ok in [
        "0",
        "18446744073709551615",
        "0018446744073709551615",
        "9999999999999999999",
    ] {
        assert!(re.is_match(ok), "{ok}");
    }
    for no in [
        "18446744073709551616",
        "18446744073709551620",
        "99999999999999999999",
        "",
        "-1",
        " 1",
    ] {
        assert!(!re.is_match(no), "{no}");
    }
    let small = regex::Regex::new(&v1::decimal_up_to(305)).expect("compiles");
    let took: Vec<u32> = (0..1000)
        .filter(|n| small.is_match(&n.to_string()))
        .collect();
    assert_eq!(took, (0..=305).collect::<Vec<_>>());
}

/// Each parameter: the values its schema allows at its edges are taken;
/// those just past them, 400.
#[test]
fn parameters_are_taken_exactly_where_their_schema_allows() {
    let doc = openapi();
    for e in ENDPOINTS {
        let op = &doc["paths"][format!("/api/v1/{}", e.name)]["get"];
        for p in e.params {
            let listed = op["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|x| x["name"] == p.name))
                .unwrap_or_else(|| panic!("{}: {} is not documented", e.name, p.name));
            assert_eq!(listed["required"], p.required, "{} {}", e.name, p.name);
            let schema = &listed["schema"];
            let (good, bad): (Vec<String>, Vec<String>) = match p.kind {
                Kind::Name => (
                    vec!["x".into(), "United Kingdom".into()],
                    vec![String::new()],
                ),
                Kind::Word(words) => (
                    words.iter().map(|w| w.to_string()).collect(),
                    vec![String::new(), "x".into(), words[0].to_uppercase()],
                ),
                Kind::Int { min, max } => {
                    let mut bad = vec![
                        "".into(),
                        "x".into(),
                        "1.5".into(),
                        format!("+{max}"),
                        format!(" {max}"),
                    ];
                    bad.extend(min.checked_sub(1).map(|n| n.to_string()));
                    bad.extend(max.checked_add(1).map(|n| n.to_string()));
                    if min == i64::MIN {
                        bad.push("-9223372036854775809".into());
                    }
                    if max == i64::MAX {
                        bad.push("9223372036854775808".into());
                    }
                    (vec![min.to_string(), max.to_string()], bad)
                }
                Kind::Time => (
                    vec![
                        "2012-02-29".into(),
                        "2011-02-20 11:39".into(),
                        "2011-02-20T11:39:00.25+01:00".into(),
                    ],
                    vec![String::new(), "2011-02-29".into(), "yesterday".into()],
                ),
            };
            for v in &good {
                let as_json = if matches!(p.kind, Kind::Int { .. }) {
                    json!(v.parse::<i64>().unwrap_or_default())
                } else {
                    json!(v)
                };
                assert_eq!(
                    check::check(&doc, schema, &as_json),
                    Ok(()),
                    "{} {}={v:?}",
                    e.name,
                    p.name
                );
                let mut params = required_params(e);
                params.insert(p.name.to_string(), v.clone());
                let asked = Question::from_request(e.name, &params);
                assert!(asked.is_ok(), "{} {}={v:?}: {asked:?}", e.name, p.name);
            }
            for v in &bad {
                let mut params = required_params(e);
                params.insert(p.name.to_string(), v.clone());
                let refused = Question::from_request(e.name, &params)
                    .err()
                    .map(|e| e.status());
                assert_eq!(refused, Some(400), "{} {}={v:?}", e.name, p.name);
            }
        }
    }
}

fn required_params(e: &Endpoint) -> HashMap<String, String> {
    e.params
        .iter()
        .filter(|p| p.required)
        .map(|p| (p.name.to_string(), p.example.unwrap_or("1").to_string()))
        .collect()
}

#[test]
fn a_query_string_is_decoded_and_a_repeated_or_unknown_parameter_refused() {
    let q = Question::from_query(
        "sales",
        Some("store=United+Kingdom&from=2011-02-20%2011%3A39&bucket=hour"),
    );
    assert_eq!(
        q.ok(),
        Some(Question::Sales {
            store: Some("United Kingdom".into()),
            range: Range {
                from: Some("2011-02-20 11:39".into()),
                to: None
            },
            bucket: Bucket::Hour,
        })
    );
    let status = |endpoint: &str, raw: &str| {
        Question::from_query(endpoint, Some(raw))
            .err()
            .map(|e| e.status())
    };
    assert_eq!(status("sales", "bucket=day&bucket=hour"), Some(400));
    assert_eq!(status("sales", "stor=1"), Some(400));
    assert_eq!(status("sales", "store=%FF"), Some(400), "not UTF-8");
    assert_eq!(status("sales", "store"), Some(400), "empty");
    assert_eq!(status("stock-history", "store=1"), Some(400), "no sku");
    assert_eq!(
        status("sales", "from=2011-01-02&to=2011-01-01"),
        None,
        "checked when answered"
    );
    assert_eq!(status("nope", ""), Some(404));
    assert_eq!(
        Question::from_query("watermarks", None).ok(),
        Some(Question::Watermarks)
    );
}

/// A row of each table an answer reads, at the edges of the units the
/// document names: a device on mains power (battery 255), a count and a
/// SKU never counted, a SKU that never sold.
fn shop() -> Result<(tempfile::TempDir, EmbeddedStore), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path())?;
    let t0 = parse_ts("2011-02-20T11:39:00Z").unwrap_or_default();
    let key = |device: u64, seq: u64, idx: u32| EventKey { device, seq, idx };
    let (a, b, c) = (u64::MAX - 1, 85_123, 7);
    let mut rows = RowSet::default();
    for (i, skus) in [[a, b], [a, b]].iter().enumerate() {
        let k = key(u64::MAX, 1, i as u32);
        for (line, &sku) in skus.iter().enumerate() {
            rows.sale_lines.push(SaleLineRow {
                store: 28,
                sku,
                ts_us: t0,
                key: k,
                line: line as u16,
                kind: SaleKind::Sale,
                quantity: 2,
                unit_price: 150,
                discount: 0,
                tax: 50,
                amount: 300,
            });
        }
        rows.sales.push(SaleRow {
            store: 28,
            ts_us: t0,
            key: k,
            kind: SaleKind::Sale,
            terminal: 3,
            operator: 1,
            txn: [0; 16],
            currency: *b"GBP",
            lines: 2,
            items: 4,
            gross: 600,
            discount: 0,
            tax: 100,
            tendered: 700,
            tip: 0,
            tenders: 1,
            tender_methods: 1,
            customer: None,
        });
    }
    rows.terminal_rollups.push(TerminalRollupRow {
        store: 28,
        day: tillstream_storage::time::day(t0),
        terminal: 3,
        minute: tillstream_storage::time::minute_of_day(t0),
        sales: 2,
        refunds: 0,
        gross: 1200,
        tax: 200,
        refunded: 0,
    });
    let movement = |sku, reason, delta, counted, level_after, idx| StockMovementRow {
        store: 28,
        sku,
        ts_us: t0,
        key: key(9, 1, idx),
        line: 0,
        reason,
        delta,
        counted,
        level_after,
        applied: true,
    };
    rows.stock_movements
        .push(movement(a, MovementReason::Receipt, 10, 0, 10, 0));
    rows.stock_movements
        .push(movement(a, MovementReason::CountCorrection, -7, 3, 3, 1));
    rows.stock_movements
        .push(movement(c, MovementReason::Receipt, 40, 0, 40, 2));
    rows.stock_levels.push(StockLevelRow {
        store: 28,
        sku: a,
        level: 3,
        count_ts_us: Some(t0),
        count_key: Some(key(9, 1, 1)),
        updated_ts_us: t0,
        version: 2,
    });
    rows.stock_levels.push(StockLevelRow {
        store: 28,
        sku: c,
        level: 40,
        count_ts_us: None,
        count_key: None,
        updated_ts_us: t0,
        version: 1,
    });
    rows.device_health.push(DeviceHealthRow {
        ts_us: t0,
        key: key(u64::MAX, 2, 0),
        store: 28,
        battery_pct: 255,
        temperature_dc: 215,
        uptime_s: 60,
        queue_depth: 0,
        rssi_dbm: -61,
    });
    rows.watermarks.push(WatermarkRow {
        device: u64::MAX,
        seq: 2,
        updated_at_us: t0,
    });
    store.materialize(&[rows], 1)?;
    store.put_catalog(&Catalog {
        products: vec![Product {
            sku: a,
            code: "85123A".into(),
            name: "Heart".into(),
            category: String::new(),
        }],
        stores: vec![
            StoreInfo {
                store: 28,
                name: "United Kingdom".into(),
                country: "GB".into(),
            },
            StoreInfo {
                store: 5,
                name: "28".into(),
                country: String::new(),
            },
        ],
    })?;
    Ok((dir, store))
}

/// Every endpoint, asked of a real store with and without a store named:
/// each answer is an array of rows its schema describes whole (no field
/// missing, none undocumented, each of its type), and the answers are not
/// all empty.
#[test]
fn every_answer_is_what_the_document_says() -> Result<(), Box<dyn std::error::Error>> {
    let (_dir, store) = shop()?;
    let doc = openapi();
    for e in ENDPOINTS {
        let schema = &doc["paths"][format!("/api/v1/{}", e.name)]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"];
        // A schema that lets any field through would make this vacuous.
        let row = &doc["components"]["schemas"][e.row];
        assert_eq!(row["additionalProperties"], false, "{}", e.name);
        let mut answered = 0;
        for named in [false, true] {
            let mut params = required_params(e);
            if named && e.param("store").is_some() {
                params.insert("store".into(), "id:28".into());
            }
            if e.name == "stock-history" {
                params.insert("sku".into(), "85123A".into());
            }
            let rows = Question::from_request(e.name, &params)?.answer(&store)?;
            let answer = Value::Array(rows);
            check::check(&doc, schema, &answer).map_err(|why| format!("{}: {why}", e.name))?;
            answered += answer.as_array().map_or(0, Vec::len);
        }
        assert!(answered > 0, "{} answered no rows to check", e.name);
    }
    Ok(())
}

/// The validator the test above leans on refuses what it should.
#[test]
fn the_validator_refuses_an_undocumented_field_and_a_wrong_type() {
    let doc = openapi();
    let row = json!({ "device": "1", "seq": 2, "updated_at_us": 3 });
    let schema = json!({ "$ref": "#/components/schemas/Watermark" });
    assert_eq!(check::check(&doc, &schema, &row), Ok(()));
    let mut extra = row.clone();
    extra["battery"] = json!(1);
    assert!(check::check(&doc, &schema, &extra).is_err());
    let mut number_id = row.clone();
    number_id["device"] = json!(1);
    assert!(check::check(&doc, &schema, &number_id).is_err());
    assert!(check::check(&doc, &schema, &json!({ "device": "1", "seq": 2 })).is_err());
}

/// A store or SKU the catalogue does not know is not there (404); a text
/// that is one store's name and another's id is ambiguous (409); the
/// form of either is a 400 only when empty.
#[test]
fn names_the_catalogue_does_not_know_are_404_and_ambiguous_ones_409()
-> Result<(), Box<dyn std::error::Error>> {
    let (_dir, store) = shop()?;
    let status = |raw: &str, endpoint: &str| {
        Question::from_query(endpoint, Some(raw))
            .and_then(|q| q.answer(&store))
            .err()
            .map(|e| e.status())
    };
    assert_eq!(status("store=France", "terminals"), Some(404));
    assert_eq!(status("store=name:France", "terminals"), Some(404));
    assert_eq!(status("store=id:x", "terminals"), Some(404));
    assert_eq!(status("store=99999999999", "terminals"), Some(404));
    assert_eq!(
        status("store=28", "terminals"),
        Some(409),
        "store 5 is named 28"
    );
    assert_eq!(status("store=id:28", "terminals"), None);
    assert_eq!(status("store=name:28", "terminals"), None);
    assert_eq!(status("store=united%20kingdom", "terminals"), None);
    assert_eq!(status("store=28&sku=85123A", "stock-history"), Some(409));
    assert_eq!(status("store=id:28&sku=NOPE", "stock-history"), Some(404));
    assert_eq!(status("store=id:28&sku=85123a", "stock-history"), None);
    let scylla = Question::from_query("terminals", Some("store=scylla"))?.answer(&store);
    assert!(
        scylla.is_err_and(|e| e.status() == 404 && e.to_string().contains("--backend scylla")),
        "the hint for a backend taken for a store"
    );
    Ok(())
}

/// The CLI's questions are held to the same bounds as a request's.
#[test]
fn a_question_the_cli_built_is_checked_like_a_request() -> Result<(), Box<dyn std::error::Error>> {
    let (_dir, store) = shop()?;
    let q = Question::TopSkus {
        store: None,
        range: Range::default(),
        by: TopBy::Revenue,
        limit: 0,
    };
    assert_eq!(q.answer(&store).err().map(|e| e.status()), Some(400));
    let q = Question::Sales {
        store: None,
        range: Range {
            from: Some("2011-1-1".into()),
            to: None,
        },
        bucket: Bucket::Day,
    };
    assert_eq!(q.answer(&store).err().map(|e| e.status()), Some(400));
    Ok(())
}

/// Every operation lists each status the server may answer it with, and
/// each error response is the one `{"error"}` body.
#[test]
fn every_operation_documents_its_errors_as_json() {
    let doc = openapi();
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/settings",
        "/v1/watermarks",
        "/v1/verify",
        "/v1/revoke",
        "/v1/backup",
        "/v1/catalog",
        "/api/v1/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    for (path, item) in &paths {
        for (method, op) in item.as_object().into_iter().flatten() {
            assert!(op["operationId"].is_string(), "{method} {path}");
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            for (code, r) in op["responses"].as_object().into_iter().flatten() {
                let r = match r["$ref"].as_str() {
                    Some(p) => doc
                        .pointer(p.trim_start_matches('#'))
                        .cloned()
                        .unwrap_or_default(),
                    None => r.clone(),
                };
                assert!(r["description"].is_string(), "{method} {path} {code}");
                if code.starts_with('4') || (code.starts_with('5') && path != "/readyz") {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {path} {code}"
                    );
                }
            }
            if secured {
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path}: no 401"
                );
            }
        }
    }
}

/// Only bounds given the wrong way round are a mistake: a `to` before
/// 1970 alone (schemathesis sent `to=0861-02-05T20:33:10z`) is a range
/// before every stored event, and answers no rows; so is a `from` alone
/// past the last instant.
#[test]
fn a_range_empty_by_one_bound_alone_answers_no_rows() -> Result<(), Box<dyn std::error::Error>> {
    let (_dir, store) = shop()?;
    for e in ENDPOINTS.iter().filter(|e| e.param("to").is_some()) {
        let mut params = required_params(e);
        params.insert("to".into(), "0861-02-05T20:33:10z".into());
        let rows = Question::from_request(e.name, &params)?.answer(&store);
        assert_eq!(
            rows.map_err(|e| e.to_string())?,
            Vec::<Value>::new(),
            "{}",
            e.name
        );
        params.insert("from".into(), "2011-01-01".into());
        let swapped = Question::from_request(e.name, &params)?.answer(&store);
        assert_eq!(swapped.err().map(|e| e.status()), Some(400), "{}", e.name);
    }
    Ok(())
}
