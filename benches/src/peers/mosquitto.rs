//! Mosquitto: persistence on, one MQTT connection per device publishing each
//! batch's frame (the bytes tillstream gets) at QoS 1; the ack is the
//! PUBACK; at most `--inflight` unacknowledged per device.
//!
//! A QoS 1 message that no one subscribed to is dropped by the broker, so
//! that the broker keeps what it acknowledges (and persistence has
//! something to save), a persistent session (`clean_session = false`)
//! subscribes to every device's topic at QoS 1 and goes offline before the
//! clock starts: each message is then queued for it.

use std::collections::{HashMap, VecDeque};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::procs::{self, ServerProc};
use crate::tally::{Measured, Tally};
use crate::workload::Prepared;
use crate::{Settings, Started};

/// What an ack promises.
pub(crate) const DURABILITY: &str = "PUBACK once the broker holds the message in memory (queued \
     for a persistent subscriber); persistence saves memory to disk only every autosave_interval \
     (30 min by default) and at shutdown: a crash loses what was acked since";

/// Largest MQTT packet either side takes.
const MAX_PACKET: usize = 64 << 20;

fn config(port: u16, dir: &std::path::Path) -> String {
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence true\n\
         persistence_location {}/\n\
         max_queued_messages 0\n\
         max_queued_bytes 0\n\
         user root\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n",
        dir.display()
    )
}

fn options(id: &str, port: u16, inflight: usize) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    o.set_inflight(u16::try_from(inflight.max(1)).unwrap_or(u16::MAX));
    o
}

/// Polls until the CONNACK.
async fn connected(el: &mut EventLoop) -> anyhow::Result<()> {
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await? {
            return Ok(());
        }
    }
}

/// Starts the broker, runs the fleet, stops the broker.
pub(crate) async fn run(
    prep: &Prepared,
    s: &Settings,
    started: &mut Started,
) -> anyhow::Result<Measured> {
    let bin = procs::find_or_install("mosquitto", "mosquitto", s.install)?;
    started.server = procs::version_line(&bin, &["-h"]);
    let dir = tempfile::Builder::new()
        .prefix("tillstream-peers-mosquitto")
        .tempdir()
        .context("creating a temporary directory")?;
    let data = dir.path().join("data");
    std::fs::create_dir(&data)?;
    let port = procs::free_port()?;
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(&conf, config(port, &data))?;
    let proc = ServerProc::spawn(
        "mosquitto",
        Command::new(&bin).arg("-c").arg(&conf),
        &dir.path().join("mosquitto.log"),
    )?;
    let result = proc
        .measure(
            port,
            Duration::from_secs(30),
            s.give_up_after,
            measure(prep, s, port),
        )
        .await;
    drop(dir);
    result
}

/// The persistent subscriber: subscribes, then goes away.
async fn park_subscriber(port: u16) -> anyhow::Result<()> {
    let mut o = options("archive", port, 16);
    o.set_clean_session(false);
    let (client, mut el) = AsyncClient::new(o, 8);
    connected(&mut el).await.context("subscriber connecting")?;
    client.subscribe("sales/#", QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await? {
            break;
        }
    }
    client.disconnect().await?;
    loop {
        match el.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

type Sent = Arc<Mutex<VecDeque<(Instant, u32)>>>;

async fn measure(prep: &Prepared, s: &Settings, port: u16) -> anyhow::Result<Measured> {
    park_subscriber(port).await?;
    let mut devices = Vec::new();
    for plan in prep.work.devices.iter().filter(|p| !p.batches.is_empty()) {
        let o = options(&format!("device-{}", plan.device), port, s.inflight);
        let (client, mut el) = AsyncClient::new(o, s.inflight + 4);
        connected(&mut el)
            .await
            .with_context(|| format!("device {} connecting", plan.device))?;
        let frames: Vec<(Bytes, u32)> = plan
            .batches
            .iter()
            .map(|b| (Bytes::from_owner(b.batch.frame.clone()), b.batch.events))
            .collect();
        devices.push((plan.device, client, el, frames));
    }

    let tally = Tally::start()?;
    let mut tasks = JoinSet::new();
    for (device, client, mut el, frames) in devices {
        let window = Arc::new(Semaphore::new(s.inflight));
        let sent: Sent = Arc::default();
        let total = frames.len();
        // The event loop: pairs packet ids with send times, PUBACKs with them.
        let (w, q, tally) = (window.clone(), sent.clone(), tally.clone());
        tasks.spawn(async move {
            let mut pending: HashMap<u16, (Instant, u32)> = HashMap::new();
            let mut acked = 0;
            while acked < total {
                match el.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let first = q.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
                        let Some(first) = first else {
                            bail!("device {device}: a publish that was not sent");
                        };
                        pending.insert(pkid, first);
                    }
                    Ok(Event::Incoming(Packet::PubAck(a))) => {
                        let at = Instant::now();
                        if let Some((t, events)) = pending.remove(&a.pkid) {
                            tally.ack(t, at, events);
                            acked += 1;
                            w.add_permits(1);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => bail!("device {device}: {e}"),
                }
            }
            anyhow::Ok(())
        });
        // The sender.
        tasks.spawn(async move {
            let topic = format!("sales/{device}");
            for (bytes, events) in frames {
                window.acquire().await?.forget();
                sent.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_back((Instant::now(), events));
                client
                    .publish_bytes(topic.clone(), QoS::AtLeastOnce, false, bytes)
                    .await
                    .with_context(|| format!("device {device}: publishing"))?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.context("device task").and_then(|r| r) {
            tasks.abort_all();
            return Err(e);
        }
    }
    Ok(tally.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_persists_on_loopback() {
        let c = config(1883, std::path::Path::new("/tmp/m"));
        assert!(c.contains("listener 1883 127.0.0.1\n"));
        assert!(c.contains("persistence true\n"));
        assert!(c.contains("persistence_location /tmp/m/\n"));
        assert!(c.contains("allow_anonymous true\n"));
    }
}
