//! Names beside ids: the chain's product catalogue (SKU → its own code,
//! name, category) and store list (id → name, country), so that query
//! answers say which product and which shop they mean. Filled by
//! `tillstream catalog import` and by the CSV replay; stored by both
//! backends; read once per question.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// The SKU id events carry.
    pub sku: u64,
    /// The chain's code for it (a StockCode, an EAN).
    pub code: String,
    /// Its name.
    pub name: String,
    /// Its category (may be empty).
    #[serde(default)]
    pub category: String,
}

/// One store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    /// The store id events carry.
    pub store: u32,
    /// Its name.
    pub name: String,
    /// Its country (may be empty).
    #[serde(default)]
    pub country: String,
}

/// Products and stores.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Products, any order.
    #[serde(default)]
    pub products: Vec<Product>,
    /// Stores, any order.
    #[serde(default)]
    pub stores: Vec<StoreInfo>,
}

impl Catalog {
    /// Whether it names nothing.
    pub fn is_empty(&self) -> bool {
        self.products.is_empty() && self.stores.is_empty()
    }

    /// Lookup maps by id.
    pub fn index(&self) -> (HashMap<u64, &Product>, HashMap<u32, &StoreInfo>) {
        (
            self.products.iter().map(|p| (p.sku, p)).collect(),
            self.stores.iter().map(|s| (s.store, s)).collect(),
        )
    }
}

/// Adds `sku_code`, `sku_name` (and `sku_a_*`, `sku_b_*`) and
/// `store_name` beside the ids of each JSON object of an answer. Nothing
/// is added when the catalogue is empty; an id it does not name gets
/// empty names.
pub fn name_rows(catalog: &Catalog, rows: &mut [serde_json::Value]) {
    if catalog.is_empty() {
        return;
    }
    let (products, stores) = catalog.index();
    for row in rows {
        let Some(obj) = row.as_object_mut() else {
            continue;
        };
        for field in ["sku", "sku_a", "sku_b"] {
            if let Some(sku) = obj.get(field).and_then(serde_json::Value::as_u64) {
                let p = products.get(&sku);
                let code = p.map_or("", |p| p.code.as_str());
                let name = p.map_or("", |p| p.name.as_str());
                obj.insert(format!("{field}_code"), code.into());
                obj.insert(format!("{field}_name"), name.into());
            }
        }
        if let Some(store) = obj.get("store").and_then(serde_json::Value::as_u64) {
            let s = u32::try_from(store).ok().and_then(|s| stores.get(&s));
            obj.insert(
                "store_name".into(),
                s.map_or("", |s| s.name.as_str()).into(),
            );
        }
    }
}

/// FNV-1a, 64 bits: the SKU id of a chain's product code when the chain
/// has no numeric ids of its own (the CSV replay does this).
pub fn sku_of(code: &str) -> u64 {
    code.trim()
        .to_ascii_uppercase()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Strings as `len u32 LE | bytes` one after another (the embedded
/// store's value of a catalogue entry).
#[cfg(any(feature = "embedded", test))]
pub(crate) fn encode_fields(fields: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(&u32::try_from(f.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(f.as_bytes());
    }
    out
}

/// The `n` strings [`encode_fields`] wrote; `None` if the bytes are not that.
#[cfg(any(feature = "embedded", test))]
pub(crate) fn decode_fields(mut bytes: &[u8], n: usize) -> Option<Vec<String>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        let text = rest.get(..len)?;
        out.push(String::from_utf8(text.to_vec()).ok()?);
        bytes = &rest[len..];
    }
    bytes.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_garbage_is_refused() {
        let bytes = encode_fields(&["85123A", "WHITE HANGING HEART", ""]);
        assert_eq!(
            decode_fields(&bytes, 3),
            Some(vec![
                "85123A".into(),
                "WHITE HANGING HEART".into(),
                String::new()
            ])
        );
        assert_eq!(decode_fields(&bytes[..bytes.len() - 1], 3), None);
        assert_eq!(decode_fields(&bytes, 2), None, "bytes left over");
    }

    #[test]
    fn answers_get_names_beside_their_ids() {
        let catalog = Catalog {
            products: vec![Product {
                sku: 7,
                code: "85123A".into(),
                name: "WHITE HANGING HEART".into(),
                category: String::new(),
            }],
            stores: vec![StoreInfo {
                store: 1,
                name: "United Kingdom".into(),
                country: "GB".into(),
            }],
        };
        let mut rows = vec![
            serde_json::json!({"store": 1, "sku": 7}),
            serde_json::json!({"sku_a": 7, "sku_b": 8}),
        ];
        name_rows(&catalog, &mut rows);
        assert_eq!(rows[0]["sku_code"], "85123A");
        assert_eq!(rows[0]["sku_name"], "WHITE HANGING HEART");
        assert_eq!(rows[0]["store_name"], "United Kingdom");
        assert_eq!(rows[1]["sku_a_name"], "WHITE HANGING HEART");
        assert_eq!(
            rows[1]["sku_b_name"], "",
            "an unknown SKU gets an empty name"
        );
        let mut plain = vec![serde_json::json!({"sku": 7})];
        name_rows(&Catalog::default(), &mut plain);
        assert_eq!(
            plain[0],
            serde_json::json!({"sku": 7}),
            "no catalogue, no names"
        );
    }

    #[test]
    fn a_code_names_one_sku_whatever_its_case_and_spaces() {
        assert_eq!(sku_of(" 85123a "), sku_of("85123A"));
        assert_ne!(sku_of("85123A"), sku_of("85123B"));
    }
}
