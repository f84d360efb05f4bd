//! `tillstream schema print`: the CQL of the ScyllaDB tables.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use tillstream_scylla::apply_schema;
use tillstream_storage::schema::{DEFAULT_KEYSPACE, SchemaOptions, render};

use super::store_args::ScyllaArgs;

/// The ScyllaDB schema (keyspace and every table), as CQL.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the keyspace and tables as CQL, ready for `cqlsh -f -`.
    /// Every statement is `IF NOT EXISTS`: applying it twice is harmless.
    Print {
        #[command(flatten)]
        shape: Shape,
    },
    /// Create the keyspace and every table on a cluster, then wait until
    /// every node agrees on the schema. Idempotent (`IF NOT EXISTS`):
    /// run it before the first `serve --store scylla`, and again after an
    /// upgrade. It never alters or drops what exists.
    Apply {
        #[command(flatten)]
        shape: Shape,
        #[command(flatten)]
        cluster: Box<ScyllaArgs>,
    },
}

/// What differs between clusters.
#[derive(Debug, clap::Args)]
struct Shape {
    /// Replication of the keyspace, one `DC=FACTOR` per data centre
    /// (`dc1=3` by default; a single test node: `datacenter1=1`).
    #[arg(
        long,
        value_name = "DC=FACTOR",
        default_value = "dc1=3",
        value_delimiter = ','
    )]
    replication: Vec<String>,
    /// Days the time-series tables keep a row (their default TTL); 0
    /// keeps rows for ever. Snapshot tables (levels, rollups, watermarks)
    /// and the journal have none.
    #[arg(long, default_value_t = 400)]
    ttl_days: u32,
}

impl Shape {
    fn options(&self, keyspace: &str) -> anyhow::Result<SchemaOptions> {
        Ok(SchemaOptions {
            keyspace: keyspace.to_string(),
            replication: replication_map(&self.replication)?,
            ttl_days: (self.ttl_days > 0).then_some(self.ttl_days),
        })
    }
}

/// `{'class': 'NetworkTopologyStrategy', 'dc1': 3, ...}` from `dc1=3`.
fn replication_map(pairs: &[String]) -> anyhow::Result<String> {
    let mut parts = vec!["'class': 'NetworkTopologyStrategy'".to_string()];
    for p in pairs {
        let Some((dc, n)) = p.split_once('=') else {
            bail!("--replication {p:?}: expected DC=FACTOR, like dc1=3");
        };
        let dc = dc.trim();
        if dc.is_empty()
            || !dc
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("--replication {p:?}: a data-centre name is letters, digits, '_' or '-'");
        }
        let n: u8 = n
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("--replication {p:?}: the factor is a small number"))?;
        if n == 0 {
            bail!("--replication {p:?}: the factor must be at least 1");
        }
        parts.push(format!("'{dc}': {n}"));
    }
    Ok(format!("{{{}}}", parts.join(", ")))
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Print { shape } => {
            let files = render(&shape.options(DEFAULT_KEYSPACE)?).map_err(anyhow::Error::msg)?;
            let mut out = std::io::stdout().lock();
            let printed = files
                .iter()
                .try_for_each(|(name, cql)| writeln!(out, "-- {name}\n{cql}"));
            match printed {
                // A reader that stopped early (`| head`) is not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
        }
        Command::Apply { shape, cluster } => {
            let cfg = cluster.config()?;
            let opts = shape.options(&cfg.keyspace)?;
            let n = apply_schema(&cfg, &opts)
                .with_context(|| format!("applying the schema on {}", cfg.nodes.join(",")))?;
            crate::logging::say(format!(
                "schema applied: keyspace {} ({} statements, replication {}), and every node agrees",
                cfg.keyspace, n, opts.replication
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_is_checked_and_lands_in_the_keyspace() -> anyhow::Result<()> {
        assert_eq!(
            replication_map(&["eu=3".into(), "us=2".into()])?,
            "{'class': 'NetworkTopologyStrategy', 'eu': 3, 'us': 2}"
        );
        assert!(replication_map(&["eu".into()]).is_err());
        assert!(replication_map(&["eu=0".into()]).is_err());
        assert!(replication_map(&["e'u=3".into()]).is_err());
        // The default map is what the keyspace file holds, so it is replaced.
        assert!(
            tillstream_storage::schema::FILES[0]
                .cql
                .contains("{'class': 'NetworkTopologyStrategy', 'dc1': 3}")
        );
        Ok(())
    }
}
