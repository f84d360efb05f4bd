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
    #[serde(
        serialize_with = "crate::json::id",
        deserialize_with = "crate::json::de_id"
    )]
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
/// `store_name` beside the ids of each JSON object of an answer or an
/// export, whichever way the id is written ([`crate::json`]). An id the
/// catalogue does not name (or an empty catalogue) gets empty names, so
/// every row of a kind has the same fields.
pub fn name_rows(catalog: &Catalog, rows: &mut [serde_json::Value]) {
    let names = Names::new(catalog);
    for row in rows {
        if let Some(obj) = row.as_object_mut() {
            names.add_to(obj);
        }
    }
}

/// The `store_name` of a row summed over every store (its `store` is
/// `null`).
pub const ALL_STORES: &str = "all stores";

/// The catalogue indexed by id, to name rows one at a time ([`name_rows`]).
#[derive(Debug, Default)]
pub struct Names<'a> {
    products: HashMap<u64, &'a Product>,
    stores: HashMap<u32, &'a StoreInfo>,
}

impl<'a> Names<'a> {
    /// The index of `catalog`.
    pub fn new(catalog: &'a Catalog) -> Self {
        let (products, stores) = catalog.index();
        Names { products, stores }
    }

    /// A SKU's code and name; empty when the catalogue does not name it.
    pub fn product(&self, sku: u64) -> (&'a str, &'a str) {
        self.products
            .get(&sku)
            .map_or(("", ""), |p| (p.code.as_str(), p.name.as_str()))
    }

    /// A store's name; empty when the catalogue does not name it.
    pub fn store(&self, store: u32) -> &'a str {
        self.stores.get(&store).map_or("", |s| s.name.as_str())
    }

    /// Adds the names beside the ids of one JSON object.
    pub fn add_to(&self, obj: &mut serde_json::Map<String, serde_json::Value>) {
        for field in ["sku", "sku_a", "sku_b"] {
            if let Some(sku) = obj.get(field).and_then(crate::json::id_of) {
                let (code, name) = self.product(sku);
                obj.insert(format!("{field}_code"), code.into());
                obj.insert(format!("{field}_name"), name.into());
            }
        }
        match obj.get("store") {
            // A total over every store says so rather than show a store 0.
            Some(serde_json::Value::Null) => {
                obj.insert("store_name".into(), ALL_STORES.into());
            }
            Some(v) => {
                let name = v
                    .as_u64()
                    .and_then(|s| u32::try_from(s).ok())
                    .map_or("", |s| self.store(s));
                obj.insert("store_name".into(), name.into());
            }
            None => {}
        }
    }
}

/// The SKU a user means by `text`: the catalogue's code for it (`85123A`,
/// case and surrounding spaces ignored) or its id. `code:` or `id:` in
/// front says which; without it a text that is both a code and another
/// product's id is refused as ambiguous rather than guessed.
pub fn resolve_sku(catalog: &Catalog, text: &str) -> Result<u64, String> {
    let text = text.trim();
    let by_code = |code: &str| {
        catalog
            .products
            .iter()
            .find(|p| p.code.trim().eq_ignore_ascii_case(code.trim()))
            .map(|p| p.sku)
    };
    let unknown = |code: &str| {
        if catalog.products.is_empty() {
            format!(
                "no product has the code {code:?}: the catalogue is empty (`tillstream catalog import`); give the SKU id"
            )
        } else {
            format!("no product in the catalogue has the code {code:?}")
        }
    };
    if let Some(code) = text.strip_prefix("code:") {
        return by_code(code).ok_or_else(|| unknown(code));
    }
    if let Some(id) = text.strip_prefix("id:") {
        return id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?} is not a SKU id (decimal digits)"));
    }
    match (by_code(text), text.parse::<u64>().ok()) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "{text:?} is the code of SKU {a} and also a SKU id: say code:{text} or id:{text}"
        )),
        (Some(sku), _) | (None, Some(sku)) => Ok(sku),
        (None, None) => Err(unknown(text)),
    }
}

/// The store a user means by `text`: its name in the catalogue (case
/// ignored) or its id, by the rules of [`resolve_sku`] (`name:`, `id:`).
pub fn resolve_store(catalog: &Catalog, text: &str) -> Result<u32, String> {
    let text = text.trim();
    let by_name = |name: &str| {
        catalog
            .stores
            .iter()
            .find(|s| s.name.trim().eq_ignore_ascii_case(name.trim()))
            .map(|s| s.store)
    };
    let unknown = |name: &str| format!("no store in the catalogue is named {name:?}");
    if let Some(name) = text.strip_prefix("name:") {
        return by_name(name).ok_or_else(|| unknown(name));
    }
    if let Some(id) = text.strip_prefix("id:") {
        return id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?} is not a store id (0 to 4294967295)"));
    }
    match (by_name(text), text.parse::<u32>().ok()) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "{text:?} is the name of store {a} and also a store id: say name:{text} or id:{text}"
        )),
        (Some(store), _) | (None, Some(store)) => Ok(store),
        (None, None) => Err(unknown(text)),
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
pub fn encode_fields(fields: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(&u32::try_from(f.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(f.as_bytes());
    }
    out
}

/// The `n` strings [`encode_fields`] wrote; `None` if the bytes are not that.
pub fn decode_fields(mut bytes: &[u8], n: usize) -> Option<Vec<String>> {
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
            serde_json::json!({"store": 1, "sku": "7"}),
            serde_json::json!({"sku_a": 7, "sku_b": "8"}),
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
        let mut plain = vec![serde_json::json!({"sku": "7", "store": 1})];
        name_rows(&Catalog::default(), &mut plain);
        assert_eq!(
            plain[0],
            serde_json::json!({"sku": "7", "sku_code": "", "sku_name": "", "store": 1, "store_name": ""}),
            "no catalogue: the same fields, empty"
        );
    }

    #[test]
    fn users_name_products_and_stores_by_code_or_id() {
        let product = |sku: u64, code: &str| Product {
            sku,
            code: code.into(),
            name: String::new(),
            category: String::new(),
        };
        let catalog = Catalog {
            products: vec![product(sku_of("85123A"), "85123A"), product(99, "22423")],
            stores: vec![StoreInfo {
                store: 28,
                name: "United Kingdom".into(),
                country: String::new(),
            }],
        };
        assert_eq!(resolve_sku(&catalog, "85123a "), Ok(sku_of("85123A")));
        assert_eq!(
            resolve_sku(&catalog, &sku_of("85123A").to_string()),
            Ok(sku_of("85123A"))
        );
        assert_eq!(resolve_sku(&catalog, "7"), Ok(7), "an id it does not name");
        let both = resolve_sku(&catalog, "22423").unwrap_err();
        assert!(both.contains("code:22423 or id:22423"), "{both}");
        assert_eq!(resolve_sku(&catalog, "code:22423"), Ok(99));
        assert_eq!(resolve_sku(&catalog, "id:22423"), Ok(22423));
        assert!(resolve_sku(&catalog, "NOPE").is_err());
        assert!(
            resolve_sku(&Catalog::default(), "85123A")
                .unwrap_err()
                .contains("catalogue is empty")
        );
        assert_eq!(resolve_store(&catalog, "united kingdom"), Ok(28));
        assert_eq!(resolve_store(&catalog, "28"), Ok(28));
        assert!(resolve_store(&catalog, "France").is_err());
        assert!(resolve_store(&catalog, "id:-1").is_err());
    }

    #[test]
    fn a_code_names_one_sku_whatever_its_case_and_spaces() {
        assert_eq!(sku_of(" 85123a "), sku_of("85123A"));
        assert_ne!(sku_of("85123A"), sku_of("85123B"));
    }
}
