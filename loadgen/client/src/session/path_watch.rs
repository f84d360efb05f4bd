//! What a session records of its connection's path (`crate::path`): the
//! path MTU its discovery reached, for the endpoint's next connections to
//! the same server, and the QUIC counters, into the device's stats.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use super::Session;

/// When a session records its path MTU again, in ms after the one before,
/// once the first record (`watch_path`) is made.
const PATH_SAMPLES_MS: [u64; 5] = [80, 300, 1_200, 4_800, 19_200];

/// How often the path is looked at until its search settles.
const SETTLE_STEP: Duration = Duration::from_millis(5);
/// The least quiet that tells a settled search: quinn sends each probe
/// as soon as the one before is acknowledged, so on a path that loses
/// none, a few round trips without a probe mean there is none left.
const SETTLE_QUIET: Duration = Duration::from_millis(20);
/// The first record is made by then, settled or not: where probes are
/// lost, each waits out its loss timer.
const SETTLE_MAX: Duration = Duration::from_secs(2);

impl Session {
    /// Records, a while after the handshake and then less and less often,
    /// the path MTU the connection reached (`path`): discovery takes a few
    /// round trips where the path carries every probe, and a few seconds
    /// where probes are lost and wait for their timeouts. Never returns.
    pub(super) async fn watch_path(
        &self,
        conn: &quinn::Connection,
        server: SocketAddr,
        probes_before: u64,
    ) -> Infallible {
        // The first record is what a fleet's other devices, waiting on
        // this one (`EndpointOptions::scout_wait`), start from: made while
        // the search still climbs, each of them would search the rest for
        // itself.
        let started = tokio::time::Instant::now();
        let mut probes = conn.stats().path.sent_plpmtud_probes;
        let mut quiet_since = started;
        while started.elapsed() < SETTLE_MAX {
            tokio::time::sleep(SETTLE_STEP).await;
            let now = conn.stats().path.sent_plpmtud_probes;
            if now != probes {
                (probes, quiet_since) = (now, tokio::time::Instant::now());
            } else if (probes > 0 || started.elapsed() >= SETTLE_QUIET * 5)
                && quiet_since.elapsed() >= SETTLE_QUIET.max(conn.rtt() * 3)
            {
                // (No probe at all by then: this connection started where
                // the path was known, or cannot search.)
                break;
            }
        }
        self.learn_path(conn, server, probes_before, false);
        for wait_ms in PATH_SAMPLES_MS {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            self.learn_path(conn, server, probes_before, false);
        }
        std::future::pending().await
    }

    /// Records what `conn`'s path (to `server`) came to; once the session
    /// `ended`, its QUIC counters also join those of the sessions before it
    /// (until then [`crate::DeviceClient::stats`] reads them off the live
    /// one).
    pub(super) fn learn_path(
        &self,
        conn: &quinn::Connection,
        server: SocketAddr,
        probes_before: u64,
        ended: bool,
    ) {
        let path = conn.stats().path;
        self.endpoint.learn(server, path.current_mtu);
        let mut st = self.shared.lock();
        st.stats.path_mtu = path.current_mtu;
        st.stats.mtu_probes = probes_before + path.sent_plpmtud_probes;
        if ended {
            st.live = None;
            st.stats.add_quic(&path);
        }
    }
}
