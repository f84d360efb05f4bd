//! The OpenAPI document, assembled: the questions' paths and rows
//! (`schema`) and the remote tools' endpoints (`v1`), which both build on
//! `schema`'s pieces, so neither needs the other.

use serde_json::{Value, json};

use super::schema::{error_response, error_responses, question_paths, row_schemas};
use super::v1;

/// The OpenAPI 3.1 document of the HTTP API.
pub fn openapi() -> Value {
    let mut paths = question_paths();
    let mut schemas = row_schemas();
    v1::add(&mut paths, &mut schemas);
    let mut responses = error_responses();
    responses.insert(
        "Unavailable".into(),
        error_response("The server cannot answer now; ask again after Retry-After seconds."),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tillstream HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": concat!(
                "What `tillstream query` answers, from a running server (`/api/v1/*`), the remote tools' endpoints (`/v1/*`) and the probes. ",
                "Units are in the field names: money in minor units of the currency (`*_minor`: pence, cents), times in UTC microseconds since the Unix epoch (`*_us`), ",
                "`*_dc` in tenths of a degree Celsius, `*_dbm` in dBm, `*_pct` in percent (a battery of 255 is a device on mains power), `*_s` in seconds. ",
                "64-bit ids (`sku`, `sku_a`, `sku_b`, `device`) are JSON strings of their digits, so that no parser rounds them past 2^53. ",
                "Rows with a store or a SKU carry the catalogue's `store_name`, `sku_code` and `sku_name` beside them; a row summed over all stores has `store` null and `store_name` \"all stores\". ",
                "Parameters are each given at most once; one the endpoint does not take is a 400. Every error answers `{\"error\": \"...\"}`. ",
                "A method a path does not take is a 405 naming the ones it does (and the `Allow` header)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A token of role analyst (reads) or admin (everything): `tillstream token issue --role analyst`. Not asked for when the server runs `--auth none`.",
                }
            }
        }
    })
}
