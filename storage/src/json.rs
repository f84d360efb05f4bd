//! How JSON carries 64-bit ids. SKU ids are hashes of product codes and
//! device ids are the chain's own: either may pass 2^53, past which a
//! JSON number is rounded by JavaScript, `jq` and spreadsheets
//! (`16162055778034801856` reads back as `16162055778034803000`). So the
//! fields that hold one (`sku`, `sku_a`, `sku_b`, `device`, `customer`,
//! `digest`) are always JSON strings of their decimal digits, in every
//! answer, export and report, as protobuf's JSON mapping and most large
//! APIs write 64-bit integers. Readers take either form.

use serde::{Deserialize, Deserializer, Serializer};

/// Writes a 64-bit id as a JSON string of its digits.
pub fn id<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// [`id`] of an optional id; `null` when there is none.
pub fn opt_id<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// Reads a 64-bit id written either way: a string of digits or a number.
pub fn de_id<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(u64),
        Text(String),
    }
    match Either::deserialize(d)? {
        Either::Number(n) => Ok(n),
        Either::Text(t) => digits(&t).ok_or_else(|| {
            serde::de::Error::custom(format!("{t:?} is not a 64-bit id (decimal digits)"))
        }),
    }
}

/// A string of decimal digits and nothing else (no sign, no spaces, as
/// the OpenAPI document's pattern says), as a 64-bit id.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The id a JSON value holds, written either way.
pub fn id_of(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::String(s) => digits(s),
        other => other.as_u64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Row {
        #[serde(serialize_with = "id", deserialize_with = "de_id")]
        sku: u64,
        #[serde(serialize_with = "opt_id")]
        customer: Option<u64>,
    }

    #[test]
    fn ids_past_2_53_survive_a_parser_that_reads_numbers_as_doubles() -> serde_json::Result<()> {
        let big = 16_162_055_778_034_801_856u64;
        let text = serde_json::to_string(&Row {
            sku: big,
            customer: None,
        })?;
        assert_eq!(text, r#"{"sku":"16162055778034801856","customer":null}"#);
        // What JavaScript's JSON.parse does to a number: an f64.
        let v: serde_json::Value = serde_json::from_str(&text)?;
        assert_eq!(id_of(&v["sku"]), Some(big));
        assert_ne!((big as f64) as u64, big, "a double would have rounded it");
        let back: Row = serde_json::from_str(r#"{"sku":7,"customer":null}"#)?;
        assert_eq!(back.sku, 7, "a number is still read");
        let back: Row = serde_json::from_str(&text)?;
        assert_eq!(back.sku, big);
        for not_digits in ["85123A", " 7", "+7", ""] {
            let text = format!(r#"{{"sku":"{not_digits}","customer":null}}"#);
            assert!(
                serde_json::from_str::<Row>(&text).is_err(),
                "{not_digits:?}"
            );
        }
        Ok(())
    }
}
