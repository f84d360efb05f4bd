//! tillstream itself, as `tillstream-loadgen` runs it without `--server`:
//! an in-process server over a temporary directory, and the loadgen's fleet
//! runner (one QUIC connection and device client per device) sending the
//! prepared frames.
//!
//! `tillstream_loadgen::run::run` is not called as a whole because it
//! generates its own workload with the clock's time as the first event's:
//! the peers must get the very bytes tillstream gets, so the workload is
//! prepared once here and handed to `fleet::run`.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tillstream_engine::{Server, ServerConfig};
use tillstream_loadgen::fleet::{self, RunConfig};

use crate::Settings;
use crate::tally::Measured;
use crate::workload::Prepared;

/// What an ack promises.
pub(crate) const DURABILITY: &str = "the batch's frame is in the write-ahead journal, fdatasync'ed \
     (group commit), and applied by its shards: survives a crash or power loss";

/// Runs the fleet against an in-process server.
pub(crate) async fn run(prep: &Prepared, s: &Settings) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir().context("creating a temporary data directory")?;
    let mut cfg = ServerConfig::new(dir.path());
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = Server::start(cfg)
        .await
        .context("starting the in-process server")?;
    let limit = server.settings().max_events_per_batch;
    let result = async {
        if s.batch_size > limit {
            bail!(
                "--batch-size {} is above the server's limit of {limit}",
                s.batch_size
            );
        }
        let ca_pem = std::fs::read(server.cert_path())
            .with_context(|| format!("reading {}", server.cert_path().display()))?;
        let rc = RunConfig::flat_out(
            server.quic_addr(),
            ca_pem,
            tillstream_loadgen::credentials::Credentials::of_server(&server)?,
            s.inflight,
            s.give_up_after,
        );
        let out = fleet::run(prep.work.clone(), &rc).await?;
        if let Some(f) = out.failures.first() {
            bail!("{f}");
        }
        if !out.complete(prep.work.events) {
            bail!(
                "{} of {} events acknowledged ({} refused)",
                out.events_acked,
                prep.work.events,
                out.events_refused
            );
        }
        Ok(Measured {
            events: out.events_acked,
            batches: out.acked.len() as u64,
            elapsed: out.elapsed,
            latency_us: out.latency_us,
        })
    }
    .await;
    if let Err(e) = server.shutdown().await {
        eprintln!("[peers] tillstream: the in-process server did not shut down cleanly: {e}");
    }
    drop(dir);
    result
}
