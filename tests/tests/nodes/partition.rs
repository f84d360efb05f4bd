//! A node cut off from the cluster while its devices still reach it, and
//! then a node that dies: the partition and the kill of issue 72's tests.
//! Node 3 runs in a network namespace (`tillstream_tests::netns`), so
//! that its link to the Cassandra nodes can go down while its link to the
//! devices stays up. Needs root; `.ci/run` runs it in its root pass.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tillstream_tests::is_root;
use tillstream_tests::netns::NetNs;

use super::Fleet;
use crate::cluster::{acked, hold};

/// While cut off, node 3 cannot renew its membership: it says so on
/// `/readyz`, acknowledges nothing more, and sends its devices away. The
/// others find it gone, replay its journal (which fences its node id) and
/// serve its stores. Joined again, it finds itself fenced, and nothing it
/// had in flight lands. Then node 2 is SIGKILLed: its stores move too,
/// to node 1. Every acknowledged batch is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (a network namespace) and the Cassandra cluster of deploy/cassandra/run.sh; .ci/run runs it as root: cargo test -p tillstream-tests --test e2e -- --ignored nodes::partition"]
async fn a_node_cut_off_from_the_cluster_but_not_its_devices_is_fenced_and_loses_nothing()
-> anyhow::Result<()> {
    ensure!(is_root(), "a network namespace needs root");
    let hold = hold()?;
    let c = &hold.cluster;
    let ns = NetNs::new()?;
    let mut fleet = Fleet::start(c, "partition", 2)?;
    fleet.add_in(c, &ns)?;
    let run = fleet.stream(9_000, 150)?;
    let fleet = tokio::task::spawn_blocking(move || -> anyhow::Result<Fleet> {
        let mut fleet = fleet;
        fleet
            .node(3)?
            .wait_acked(20, Duration::from_secs(120))
            .context("node 3 acknowledged nothing")?;
        ns.cut()?;
        let cut_at = Instant::now();
        // Not ready: its writes time out, and it cannot renew its row.
        fleet.wait_readyz(3, "", Duration::from_secs(30))?;
        let isolated_at = cut_at.elapsed();
        let acked_isolated = acked(fleet.node(3)?);
        let moved = fleet.wait_member(1, "node-3", "fenced", Some(0), Duration::from_secs(120))?;
        eprintln!(
            "node-3 cut off: isolated after {isolated_at:?}; fenced and its stores taken {:?} after the cut",
            cut_at.elapsed().max(moved)
        );
        // The others serve its devices meanwhile.
        let others = || -> anyhow::Result<f64> { Ok(acked(fleet.node(1)?) + acked(fleet.node(2)?)) };
        let before = others()?;
        let t0 = Instant::now();
        while others()? < before + 20.0 {
            ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "nodes 1 and 2 acknowledged nothing while node 3 was cut off"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        ns.heal()?;
        // Back in touch, it learns another node took its node id.
        fleet.wait_readyz(3, "another", Duration::from_secs(60))?;
        let after = acked(fleet.node(3)?);
        ensure!(
            after == acked_isolated,
            "node 3 acknowledged {} batches after it was cut off",
            after - acked_isolated
        );
        // Fenced, it stays so until replaced; a restart taking its share
        // back is the frozen-node test's.
        fleet.take(3)?.kill9()?;
        // Node 2 dies without a word.
        let killed_at = Instant::now();
        fleet.take(2)?.kill9()?;
        let taken = fleet.wait_member(1, "node-2", "fenced", Some(0), Duration::from_secs(120))?;
        eprintln!(
            "node-2 SIGKILLed: its journal replayed and its stores taken {:?} after",
            killed_at.elapsed().max(taken)
        );
        Ok(fleet)
    })
    .await??;
    let report = fleet.finish(c, run).await?;
    eprintln!(
        "partition and kill: {} events acked, {} reconnects, {} redirects, ack p99 {:.0} ms",
        report.events_acked, report.reconnects, report.redirects, report.ack_latency_ms.p99
    );
    Ok(())
}
