//! A validator of the JSON Schema the OpenAPI document uses (and no
//! more): `$ref` within the document, `type` (one or a list), `enum`,
//! `const`, `properties`, `required`, `additionalProperties`, `items`,
//! `maxItems`, `anyOf`, `pattern`, `minLength`, `minimum`, `maximum`.
//! Other keywords (`description`, `format`, `default`, `example`) say
//! nothing a value must be. The tests hold every answer to the document
//! with it, so a field added to a row but not to the document fails them.

use serde_json::Value;

/// Checks `value` against `schema`, whose `$ref`s point into `root`.
/// The error names the first place it breaks, as a JSON pointer.
pub fn check(root: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    at(root, schema, value, "")
}

fn resolve<'a>(root: &'a Value, schema: &'a Value) -> Result<&'a Value, String> {
    match schema.get("$ref").and_then(Value::as_str) {
        None => Ok(schema),
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .ok_or_else(|| format!("{r}: only references within the document"))?;
            root.pointer(pointer)
                .ok_or_else(|| format!("{r} is not in the document"))
        }
    }
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn at(root: &Value, schema: &Value, v: &Value, path: &str) -> Result<(), String> {
    let s = resolve(root, schema)?;
    let fail = |why: String| {
        Err(format!(
            "{}: {why} (value {v})",
            if path.is_empty() { "/" } else { path }
        ))
    };
    if let Some(t) = s.get("type") {
        let actual = type_of(v);
        let allowed: Vec<&str> = match t {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let fits = allowed
            .iter()
            .any(|&a| a == actual || (a == "number" && actual == "integer"));
        if !fits {
            return fail(format!("is {actual}, not {allowed:?}"));
        }
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        return fail(format!("is not one of {options:?}"));
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        return fail(format!("is not {c}"));
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
        let errors: Vec<String> = any
            .iter()
            .filter_map(|option| at(root, option, v, path).err())
            .collect();
        if errors.len() == any.len() {
            return fail(format!("fits none of anyOf: {errors:?}"));
        }
    }
    match v {
        Value::Number(n) => {
            // i128 holds every integer JSON carries here (i64 and u64)
            // exactly; a fraction is compared as f64.
            let as_int = n.as_i64().map(i128::from).or(n.as_u64().map(i128::from));
            let bound = |k: &str| {
                s.get(k)
                    .and_then(|b| b.as_i64().map(i128::from).or(b.as_u64().map(i128::from)))
            };
            let below = |k: &str| match (as_int, bound(k)) {
                (Some(x), Some(b)) => Some(x < b),
                _ => s
                    .get(k)
                    .and_then(Value::as_f64)
                    .zip(n.as_f64())
                    .map(|(b, x)| x < b),
            };
            let above = |k: &str| match (as_int, bound(k)) {
                (Some(x), Some(b)) => Some(x > b),
                _ => s
                    .get(k)
                    .and_then(Value::as_f64)
                    .zip(n.as_f64())
                    .map(|(b, x)| x > b),
            };
            if below("minimum") == Some(true) {
                return fail(format!("is below the minimum {}", s["minimum"]));
            }
            if above("maximum") == Some(true) {
                return fail(format!("is above the maximum {}", s["maximum"]));
            }
        }
        Value::String(text) => {
            if let Some(min) = s.get("minLength").and_then(Value::as_u64)
                && (text.chars().count() as u64) < min
            {
                return fail(format!("is shorter than {min}"));
            }
            if let Some(p) = s.get("pattern").and_then(Value::as_str) {
                let re = regex::Regex::new(p).map_err(|e| format!("pattern {p:?}: {e}"))?;
                if !re.is_match(text) {
                    return fail(format!("does not match {p:?}"));
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                return fail(format!("has more than {max} items"));
            }
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    at(root, item, x, &format!("{path}/{i}"))?;
                }
            }
        }
        Value::Object(map) => {
            let props = s.get("properties").and_then(Value::as_object);
            for name in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(name) = name.as_str()
                    && !map.contains_key(name)
                {
                    return fail(format!("lacks the required {name:?}"));
                }
            }
            for (k, x) in map {
                let here = format!("{path}/{k}");
                match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                    (Some(p), _) => at(root, p, x, &here)?,
                    (None, Some(Value::Bool(false))) => {
                        return fail(format!("has {k:?}, which the document does not list"));
                    }
                    (None, Some(extra)) if extra.is_object() => at(root, extra, x, &here)?,
                    (None, _) => {}
                }
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
    Ok(())
}
