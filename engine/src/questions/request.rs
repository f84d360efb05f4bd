//! From an HTTP request to its parameters, and from the names in them to
//! ids: what a refusal of each is answered with.

use std::collections::HashMap;

use tillstream_storage::catalog::{self, Catalog};

use super::{QuestionError, Refusal, Refused};

/// The parameters of a query string (`a=1&b=x%20y`), percent-decoded
/// (`+` is a space, as forms send it; a `%` not followed by two hex
/// digits stays as it is). A parameter given twice is refused rather
/// than one of them silently chosen, and so is one that is not UTF-8
/// once decoded.
pub fn parse_query(raw: &str) -> Result<HashMap<String, String>, QuestionError> {
    let mut out = HashMap::new();
    for piece in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        let (k, v) = (decode(k)?, decode(v)?);
        if out.contains_key(&k) {
            return Err(Refusal::invalid(format!(
                "{k}= is given twice: give each parameter once"
            )));
        }
        out.insert(k, v);
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, QuestionError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| Refusal::invalid(format!("{s:?} is not UTF-8 once percent-decoded")))
}

/// The store `text` names ([`catalog::resolve_store`]), or what to
/// answer: 404 for a name (or an `id:` that is no id) the catalogue does
/// not know, 409 for a text that is one store's name and another's id.
pub(crate) fn store(cat: &Catalog, text: &str) -> Result<u32, QuestionError> {
    catalog::resolve_store(cat, text).map_err(|why| {
        named(
            text,
            &["id:", "name:"],
            text.trim().parse::<u32>().is_ok(),
            why,
        )
    })
}

/// The SKU `text` names ([`catalog::resolve_sku`]), refused as
/// [`store`] is.
pub(crate) fn sku(cat: &Catalog, text: &str) -> Result<u64, QuestionError> {
    catalog::resolve_sku(cat, text).map_err(|why| {
        named(
            text,
            &["id:", "code:"],
            text.trim().parse::<u64>().is_ok(),
            why,
        )
    })
}

/// Why the catalogue refused `text`. Without a prefix, a text that reads
/// as an id resolves to that id unless the catalogue also gives it to
/// another thing: then it is ambiguous; every other refusal is of a thing
/// that is not there. (The catalogue's own errors are text; this reads
/// the same rules it applies, and the tests hold the two together.)
fn named(text: &str, prefixes: &[&str], reads_as_id: bool, why: String) -> QuestionError {
    let t = text.trim();
    let prefixed = prefixes.iter().any(|p| t.starts_with(p));
    let kind = if !prefixed && reads_as_id {
        Refused::Ambiguous
    } else {
        Refused::Unknown
    };
    QuestionError::Bad(Refusal { kind, why })
}
