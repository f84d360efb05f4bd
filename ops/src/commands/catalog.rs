//! `tillstream catalog import`: names for SKUs and stores.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tillstream_storage::Store;
use tillstream_storage::catalog::{Catalog, Product, StoreInfo, sku_of};

/// The product catalogue and store list that put names beside ids in
/// query answers (`sku_code`, `sku_name`, `store_name`).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Add or replace entries from a CSV file with a header row. Products:
    /// `code,name[,category][,sku]` (without `sku`, the SKU id is the
    /// FNV-1a hash of the code, as the CSV replay makes it). Stores:
    /// `store,name[,country]`. Into a stopped server's data directory, or
    /// a running server's (`--server-http`, an admin token).
    Import {
        /// The CSV file.
        file: PathBuf,
        #[command(flatten)]
        target: crate::api::AdminTarget,
    },
}

/// Reads a products or stores CSV (see `Import`).
pub(crate) fn read_csv(file: &std::path::Path) -> anyhow::Result<Catalog> {
    let mut reader =
        csv::Reader::from_path(file).with_context(|| format!("reading {}", file.display()))?;
    let headers: Vec<String> = reader
        .headers()?
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let mut out = Catalog::default();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.with_context(|| format!("{}: line {line}", file.display()))?;
        let get = |c: Option<usize>| {
            c.and_then(|c| record.get(c))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        if let Some(store) = col("store") {
            let id: u32 = get(Some(store)).parse().with_context(|| {
                format!("{}: line {line}: store is not a number", file.display())
            })?;
            out.stores.push(StoreInfo {
                store: id,
                name: get(col("name")),
                country: get(col("country")),
            });
        } else {
            let code = get(col("code"));
            anyhow::ensure!(
                !code.is_empty(),
                "{}: line {line}: no code (a products file has code,name[,category][,sku]; a stores file store,name[,country])",
                file.display()
            );
            let sku = match get(col("sku")) {
                s if s.is_empty() => sku_of(&code),
                s => s.parse().with_context(|| {
                    format!("{}: line {line}: sku is not a number", file.display())
                })?,
            };
            out.products.push(Product {
                sku,
                code,
                name: get(col("name")),
                category: get(col("category")),
            });
        }
    }
    Ok(out)
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Command::Import { file, target } = args.command;
    let catalog = read_csv(&file)?;
    if target
        .post("/v1/catalog", &serde_json::to_value(&catalog)?)?
        .is_none()
    {
        super::open_embedded(&target.data_dir)?
            .put_catalog(&catalog)
            .context("writing the catalogue")?;
    }
    crate::logging::say(format!(
        "{} products and {} stores imported from {}",
        catalog.products.len(),
        catalog.stores.len(),
        file.display()
    ));
    Ok(ExitCode::SUCCESS)
}
