//! `--store` and the `--scylla-*` flags, shared by `serve`, `verify`,
//! `query`, `export` and `schema apply`; each is also a `TILLSTREAM_*`
//! variable. They are not global: `query`'s subcommands have a `--store`
//! of their own (a store id), so there these go before the subcommand
//! (`tillstream query --store scylla sales --store 3`), or in variables.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tillstream_engine::StoreChoice;
use tillstream_scylla::{Consistency, ParseConsistency, ScyllaConfig};

/// Where the journal and the tables live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StoreKind {
    /// The embedded store in the data directory (`DATA_DIR/store`).
    Embedded,
    /// A ScyllaDB cluster (`--scylla-nodes`); run `tillstream schema apply` once first.
    Scylla,
}

/// The backend flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StoreArgs {
    /// Where the journal and the tables live (`--backend` is the same
    /// flag, under a name a question's `--store N` cannot be taken for).
    #[arg(long = "store", visible_alias = "backend", value_enum,
          default_value_t = StoreKind::Embedded, env = "TILLSTREAM_STORE")]
    kind: StoreKind,
    #[command(flatten)]
    scylla: ScyllaArgs,
}

/// What only a writer of the cluster (`serve`) names: which node it is.
/// The read-only tools (`query`, `export`, `verify`) read every node's
/// journal position and write nothing, so they do not offer it.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WriterArgs {
    /// This node's name: its journal and checkpoint in the cluster. A
    /// replacement machine takes over by using the same name; two live
    /// servers must never share one.
    #[arg(
        long,
        default_value = "tillstream-1",
        env = "TILLSTREAM_SCYLLA_NODE_ID"
    )]
    pub(crate) scylla_node_id: String,
}

/// How to reach a ScyllaDB cluster.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ScyllaArgs {
    /// Contact points of the cluster, `host:port`, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:9042",
        env = "TILLSTREAM_SCYLLA_NODES"
    )]
    scylla_nodes: Vec<String>,
    /// Keyspace of the tables.
    #[arg(long, default_value = "tillstream", env = "TILLSTREAM_SCYLLA_KEYSPACE")]
    scylla_keyspace: String,
    /// Data centre to send requests to (token- and shard-aware within
    /// it); default: any.
    #[arg(long, env = "TILLSTREAM_SCYLLA_DC")]
    scylla_dc: Option<String>,
    /// Consistency of reads and writes; an ack waits for it. One of one,
    /// two, three, quorum, all, local_quorum, each_quorum, local_one.
    #[arg(
        long,
        default_value = "local_quorum",
        env = "TILLSTREAM_SCYLLA_CONSISTENCY"
    )]
    scylla_consistency: String,
    /// Requests in flight at most per store call (a write of the tables
    /// fans out into this many at once).
    #[arg(long, default_value_t = 256, env = "TILLSTREAM_SCYLLA_MAX_IN_FLIGHT",
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    scylla_max_in_flight: u64,
    /// Client-side request timeout in milliseconds; keep it at or above
    /// the cluster's own (ScyllaDB: 2 s writes, 10 s range scans).
    #[arg(long, default_value_t = 12_000, env = "TILLSTREAM_SCYLLA_TIMEOUT_MS")]
    scylla_timeout_ms: u64,
    /// Username (PasswordAuthenticator); the password comes from
    /// --scylla-password or TILLSTREAM_SCYLLA_PASSWORD.
    #[arg(long, env = "TILLSTREAM_SCYLLA_USER")]
    scylla_user: Option<String>,
    /// Password of --scylla-user.
    #[arg(long, env = "TILLSTREAM_SCYLLA_PASSWORD", hide_env_values = true)]
    scylla_password: Option<String>,
    /// PEM file of the CA that signed the nodes' certificates: TLS on.
    #[arg(long, env = "TILLSTREAM_SCYLLA_TLS_CA")]
    scylla_tls_ca: Option<PathBuf>,
}

impl ScyllaArgs {
    /// The driver configuration these flags describe.
    pub(crate) fn config(&self) -> anyhow::Result<ScyllaConfig> {
        let nodes: Vec<String> = self
            .scylla_nodes
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        anyhow::ensure!(!nodes.is_empty(), "--scylla-nodes names no node");
        anyhow::ensure!(
            tillstream_storage::schema::valid_keyspace(&self.scylla_keyspace),
            "--scylla-keyspace {:?}: lower-case letters, digits and '_', a letter first",
            self.scylla_keyspace
        );
        let mut cfg = ScyllaConfig::new(nodes);
        cfg.keyspace = self.scylla_keyspace.clone();
        cfg.datacenter = self.scylla_dc.clone();
        cfg.consistency = scylla_consistency(&self.scylla_consistency)?;
        cfg.max_in_flight = usize::try_from(self.scylla_max_in_flight).unwrap_or(256);
        cfg.request_timeout = Duration::from_millis(self.scylla_timeout_ms.max(1));
        cfg.credentials = match (&self.scylla_user, &self.scylla_password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (Some(_), None) => {
                anyhow::bail!("--scylla-user needs a password (TILLSTREAM_SCYLLA_PASSWORD)")
            }
            (None, Some(_)) => anyhow::bail!("--scylla-password needs --scylla-user"),
            (None, None) => None,
        };
        cfg.tls_ca = self.scylla_tls_ca.clone();
        Ok(cfg)
    }
}

fn scylla_consistency(s: &str) -> anyhow::Result<Consistency> {
    Consistency::parse_level(s)
        .map_err(anyhow::Error::msg)
        .context("--scylla-consistency")
}

impl StoreArgs {
    /// The backend a read-only tool opens beside a live server.
    pub(crate) fn reader(&self) -> anyhow::Result<StoreChoice> {
        Ok(match self.kind {
            StoreKind::Embedded => StoreChoice::Embedded,
            StoreKind::Scylla => {
                let mut cfg = self.scylla.config()?;
                cfg.read_only = true;
                StoreChoice::Scylla(cfg)
            }
        })
    }

    /// The backend `serve` writes as node `writer`.
    pub(crate) fn writer(&self, writer: &WriterArgs) -> anyhow::Result<StoreChoice> {
        Ok(match self.kind {
            StoreKind::Embedded => StoreChoice::Embedded,
            StoreKind::Scylla => {
                anyhow::ensure!(
                    !writer.scylla_node_id.is_empty(),
                    "--scylla-node-id must not be empty"
                );
                let mut cfg = self.scylla.config()?;
                cfg.node_id = writer.scylla_node_id.clone();
                StoreChoice::Scylla(cfg)
            }
        })
    }

    /// Which backend.
    pub(crate) fn kind(&self) -> StoreKind {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        writer: WriterArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<StoreChoice> {
        let cli = Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))?;
        cli.store.writer(&cli.writer)
    }

    /// A reader (`query`, `export`, `verify`) does not offer what only a
    /// writer names.
    #[test]
    fn readers_do_not_offer_the_writers_node_id() {
        #[derive(Debug, Parser)]
        struct Reader {
            #[command(flatten)]
            store: StoreArgs,
        }
        let refused = Reader::try_parse_from(["t", "--scylla-node-id", "eu-1"]);
        assert!(refused.is_err());
        let help = <Reader as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(!help.contains("node-id"), "{help}");
    }

    #[test]
    fn the_embedded_store_is_the_default() -> anyhow::Result<()> {
        assert!(matches!(parse(&[])?, StoreChoice::Embedded));
        Ok(())
    }

    #[test]
    fn scylla_flags_land_in_the_driver_config() -> anyhow::Result<()> {
        let StoreChoice::Scylla(cfg) = parse(&[
            "--store",
            "scylla",
            "--scylla-nodes",
            "a:9042, b:9042",
            "--scylla-keyspace",
            "chain_eu",
            "--scylla-node-id",
            "eu-1",
            "--scylla-dc",
            "eu-west",
            "--scylla-consistency",
            "QUORUM",
            "--scylla-user",
            "ingest",
            "--scylla-password",
            "secret",
        ])?
        else {
            anyhow::bail!("not a ScyllaDB choice");
        };
        assert_eq!(cfg.nodes, ["a:9042", "b:9042"]);
        assert_eq!(
            (cfg.keyspace.as_str(), cfg.node_id.as_str()),
            ("chain_eu", "eu-1")
        );
        assert_eq!(cfg.datacenter.as_deref(), Some("eu-west"));
        assert_eq!(cfg.consistency, Consistency::Quorum);
        assert_eq!(cfg.credentials, Some(("ingest".into(), "secret".into())));
        assert!(!cfg.read_only);
        Ok(())
    }

    #[test]
    fn bad_scylla_flags_are_clear_errors() {
        for (args, says) in [
            (&["--scylla-consistency", "most"][..], "unknown consistency"),
            (&["--scylla-user", "ingest"][..], "needs a password"),
            (&["--scylla-keyspace", "Chain"][..], "lower-case"),
            (&["--scylla-nodes", " "][..], "names no node"),
        ] {
            let all: Vec<&str> = ["--store", "scylla"].iter().chain(args).copied().collect();
            let err = parse(&all).err().map(|e| format!("{e:#}"));
            assert!(
                err.as_deref().is_some_and(|e| e.contains(says)),
                "{args:?}: {err:?}"
            );
        }
    }
}
