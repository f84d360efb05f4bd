//! Request bodies of the HTTP API, read as the OpenAPI document says.

/// A request body as the JSON `T`, or why not (answered 400). Bodies are read
/// here, after the caller's token was checked, rather than by axum's
/// `Json` extractor: that one answered a bad body before the token (a 422
/// to a caller who may not call at all) and in plain text.
pub(super) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let refuse =
        |e: serde_json::Error| format!("the body is not the JSON this endpoint takes: {e}");
    let mut v: serde_json::Value = serde_json::from_slice(body).map_err(refuse)?;
    whole_numbers(&mut v);
    serde_json::from_value(v).map_err(refuse)
}

/// Writes each number without a fraction (`22382.0`) as the integer it
/// is. JSON Schema counts it an integer, as the document's `integer`
/// fields promise, where serde refuses a float for a `u64`; no body of
/// the API has a field that means anything else by it.
fn whole_numbers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
            let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0) else {
                return;
            };
            // The bounds are exact in f64 (powers of two); `as` is exact
            // for a whole number between them.
            if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                *v = Value::from(f as u64);
            } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// schemathesis sent `"seq": 22382.0` for an integer field, which
    /// JSON Schema counts an integer and serde refused.
    #[test]
    fn a_body_s_whole_floats_are_read_as_integers() {
        #[derive(Debug, serde::Deserialize, PartialEq)]
        struct B {
            seq: u64,
            at: i64,
            big: u64,
            half: f64,
        }
        let body = br#"{"seq": 22382.0, "at": -3.0, "big": 1.8446744073709550e19, "half": 0.5}"#;
        let got: Result<B, _> = json_body(body);
        assert_eq!(
            got.ok(),
            Some(B {
                seq: 22382,
                at: -3,
                big: 18_446_744_073_709_549_568,
                half: 0.5
            })
        );
        let past: Result<B, _> =
            json_body(br#"{"seq": 1.8446744073709552e19, "at": 0, "big": 0, "half": 0}"#);
        assert!(past.is_err(), "2^64 is past u64");
        let fraction: Result<B, _> = json_body(br#"{"seq": 1.5, "at": 0, "big": 0, "half": 0}"#);
        assert!(fraction.is_err());
    }
}
