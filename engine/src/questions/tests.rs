//! Questions through URLs and back, bad requests, the OpenAPI document.

use super::*;

fn every_kind() -> Vec<Question> {
    let range = Range {
        from: Some("2026-11-21".into()),
        to: Some("2026-11-22T10:00:00+01:00".into()),
    };
    vec![
        Question::Sales {
            store: Some("3".into()),
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
            store: "1".into(),
            sku: "85123A".into(),
            range: Range::default(),
        },
        Question::LowStock {
            store: Some("United Kingdom".into()),
            below: -4,
        },
        Question::Watermarks,
        Question::Terminals {
            store: Some("4".into()),
            range: range.clone(),
        },
        Question::Health {
            store: None,
            range: Range::default(),
        },
        Question::DeadStock {
            store: Some("id:1".into()),
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
    assert!(ask("top-skus", &[("limit", "x")]).contains("not a whole number from 1 to 10000"));
    assert!(ask("sales", &[("bucket", "week")]).contains("one of minute, hour, day"));
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
    let questions = doc["paths"].as_object().map(|paths| {
        paths
            .keys()
            .filter(|p| p.starts_with("/api/v1/") && *p != "/api/v1/openapi.json")
            .count()
    });
    assert_eq!(questions, Some(ENDPOINTS.len()));
}

/// Issue 70, item 13: what the document allows, the server takes.
#[test]
fn the_document_gives_enums_bounds_and_time_patterns() {
    let doc = openapi();
    let param = |path: &str, name: &str| {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
            .unwrap_or_default()
    };
    assert_eq!(
        param("/api/v1/sales", "bucket")["schema"]["enum"],
        serde_json::json!(["minute", "hour", "day"])
    );
    assert_eq!(
        param("/api/v1/top-skus", "by")["schema"]["enum"],
        serde_json::json!(["quantity", "revenue"])
    );
    assert_eq!(param("/api/v1/top-skus", "limit")["schema"]["minimum"], 1);
    assert!(param("/api/v1/terminals", "from")["schema"]["pattern"].is_string());
    assert_eq!(param("/api/v1/health", "store")["schema"]["minLength"], 1);
}

/// Issue 70: a request's number reaches no arithmetic that overflows.
#[test]
fn dead_stock_of_the_most_days_does_not_overflow() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = tillstream_embedded::EmbeddedStore::open(dir.path())?;
    let q = Question::DeadStock {
        store: None,
        days: u32::MAX,
    };
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| q.answer(&store)));
    assert!(answer.is_ok(), "days = u32::MAX panicked");
    Ok(())
}

/// Issue 70, item 12: units a reader cannot guess are named in the
/// document, field by field.
#[test]
fn the_document_names_the_units_of_health_and_money() {
    let doc = openapi();
    let field = |row: &str, name: &str| {
        doc["components"]["schemas"][row]["properties"][name]["description"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let battery = field("DeviceHealth", "battery_pct");
    assert!(
        battery.contains("255") && battery.contains("mains"),
        "{battery}"
    );
    assert!(field("DeviceHealth", "temperature_max_dc").contains("tenths of a degree Celsius"));
    assert!(field("DeviceHealth", "rssi_min_dbm").contains("dBm"));
    assert!(field("SalesBucket", "gross_minor").contains("minor units"));
    assert!(field("SalesBucket", "start_us").contains("UTC microseconds"));
    assert_eq!(
        doc["components"]["schemas"]["DeviceHealth"]["properties"]["battery_pct"]["maximum"],
        255
    );
}
