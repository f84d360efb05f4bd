//! `tillstream cluster status`: the members of a cluster of tillstream
//! nodes, their leases, and the stores and devices each serves, read from
//! the cluster tables (the same answer as `GET /v1/cluster` on any node,
//! and it works with every node down).

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use tillstream_engine::{ClusterStatus, cluster_status};

use super::store_args::ScyllaArgs;

/// Several tillstream nodes over one ScyllaDB keyspace (`serve --cluster`).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Show each member (live, leaving, gone or fenced), its addresses,
    /// the age of its lease, the stores and devices it serves, and the
    /// journal records it acknowledged that are not in the tables yet.
    /// Exits 1 when a member is gone or fenced with such records (its
    /// stores are waiting for their replay).
    Status {
        /// Print the status as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cluster: Box<ScyllaArgs>,
    },
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Command::Status { json, cluster } = args.command;
    let mut cfg = cluster.config()?;
    cfg.read_only = true;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let status = rt
        .block_on(cluster_status(&cfg))
        .context("reading the cluster tables")?;
    let text = if json {
        format!("{}\n", serde_json::to_string_pretty(&status)?)
    } else {
        table(&status)
    };
    crate::print_all(text.as_bytes())?;
    let stuck = status
        .members
        .iter()
        .any(|m| matches!(m.state.as_str(), "gone" | "fenced") && m.journal_behind > 0);
    Ok(if stuck {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The status as an aligned table.
fn table(s: &ClusterStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:<22} {:<22} {:>9} {:>7} {:>8} {:>8}  version",
        "node", "state", "quic", "http", "lease_ms", "stores", "devices", "behind"
    );
    for m in &s.members {
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:<22} {:<22} {:>9} {:>7} {:>8} {:>8}  {}",
            m.node,
            m.state,
            m.quic_addr,
            m.http_addr,
            m.lease_age_ms,
            m.stores,
            m.devices,
            m.journal_behind,
            m.version
        );
    }
    let live = s.members.iter().filter(|m| m.state == "live").count();
    let _ = writeln!(
        out,
        "{live} live of {} members; {} stores, {} released and not yet taken again; lease {} ms",
        s.members.len(),
        s.stores,
        s.stores_released,
        s.lease_ms
    );
    out
}
