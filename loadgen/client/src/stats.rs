use std::collections::BTreeMap;
use std::time::Duration;

/// Counters of one device client, read with
/// [`DeviceClient::stats`](crate::DeviceClient::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Sessions that reached `Welcome`.
    pub connects: u64,
    /// Sessions that reached `Welcome` after an earlier one was lost.
    pub reconnects: u64,
    /// `Redirect`s received: a node sent the device to the one that serves
    /// its store (followed or not; see [`Dialer`](crate::Dialer)).
    pub redirects: u64,
    /// Connection attempts that failed before `Welcome` (handshake, timeout,
    /// retryable `Reject`).
    pub connect_failures: u64,
    /// Sessions lost after `Welcome`.
    pub disconnects: u64,
    /// Batch frames written, resends included.
    pub batches_written: u64,
    /// Batch frames written again after a reconnect.
    pub resent_batches: u64,
    /// Batches acknowledged.
    pub acked_batches: u64,
    /// Events in acknowledged batches.
    pub acked_events: u64,
    /// Batches the server refused for good.
    pub refused_batches: u64,
    /// Batches refused as stale: the server already held their seq though
    /// this client never sent them (the device id was used before).
    pub stale_batches: u64,
    /// Events the server refused on semantic grounds (reported in acks).
    pub rejected_events: u64,
    /// Those events by the server's wire code
    /// ([`RejectCode`](tillstream_protocol::RejectCode) value): what a
    /// diagnosis of them rests on.
    pub rejected_by_code: BTreeMap<u16, u64>,
    /// `Error` frames received, by wire code.
    pub errors_by_code: BTreeMap<u16, u64>,
    /// `Reject` answers to `Hello`, by wire code.
    pub rejects_by_code: BTreeMap<u16, u64>,
    /// Times the server announced a durable seq below one it had announced
    /// before (it lost data, or it is not the same server).
    pub watermark_regressions: u64,
    /// Recoveries measured: a session was lost, and a later one got an ack.
    pub recoveries: u64,
    /// Sum of the recovery times (loss of a session to first ack after).
    pub recovery_total: Duration,
    /// Longest recovery time.
    pub recovery_max: Duration,
    /// The largest UDP payload the current or last connection's path
    /// carries, as QUIC's path MTU discovery found it (1200 before it
    /// did; over a fleet, the largest).
    pub path_mtu: u16,
    /// Path MTU probes sent, over every connection. A connection that
    /// starts at the path MTU an earlier one found sends none.
    pub mtu_probes: u64,
    /// QUIC packets sent, over every connection.
    pub quic_sent_packets: u64,
    /// QUIC packets declared lost (and their data sent again), over every
    /// connection: on loopback, datagrams the kernel dropped at a full
    /// receive buffer, or late enough to be taken for lost.
    pub quic_lost_packets: u64,
    /// The last reason a session ended or failed, for logs.
    pub last_error: Option<String>,
}

impl ClientStats {
    /// Adds another device's counters to these (for fleet totals).
    pub fn merge(&mut self, o: &ClientStats) {
        self.connects += o.connects;
        self.reconnects += o.reconnects;
        self.redirects += o.redirects;
        self.connect_failures += o.connect_failures;
        self.disconnects += o.disconnects;
        self.batches_written += o.batches_written;
        self.resent_batches += o.resent_batches;
        self.acked_batches += o.acked_batches;
        self.acked_events += o.acked_events;
        self.refused_batches += o.refused_batches;
        self.path_mtu = self.path_mtu.max(o.path_mtu);
        self.mtu_probes += o.mtu_probes;
        self.stale_batches += o.stale_batches;
        self.quic_sent_packets += o.quic_sent_packets;
        self.quic_lost_packets += o.quic_lost_packets;
        self.rejected_events += o.rejected_events;
        for (k, v) in &o.rejected_by_code {
            *self.rejected_by_code.entry(*k).or_default() += v;
        }
        for (k, v) in &o.errors_by_code {
            *self.errors_by_code.entry(*k).or_default() += v;
        }
        for (k, v) in &o.rejects_by_code {
            *self.rejects_by_code.entry(*k).or_default() += v;
        }
        self.watermark_regressions += o.watermark_regressions;
        self.recoveries += o.recoveries;
        self.recovery_total += o.recovery_total;
        self.recovery_max = self.recovery_max.max(o.recovery_max);
        if o.last_error.is_some() {
            self.last_error.clone_from(&o.last_error);
        }
    }

    /// Adds one connection's QUIC counters.
    pub(crate) fn add_quic(&mut self, path: &quinn::PathStats) {
        self.quic_sent_packets += path.sent_packets;
        self.quic_lost_packets += path.lost_packets;
    }

    /// Records one recovery time.
    pub(crate) fn record_recovery(&mut self, d: Duration) {
        self.recoveries += 1;
        self.recovery_total += d;
        self.recovery_max = self.recovery_max.max(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_and_keeps_max() {
        let mut a = ClientStats {
            connects: 1,
            recovery_max: Duration::from_millis(5),
            ..ClientStats::default()
        };
        a.errors_by_code.insert(10, 2);
        let mut b = ClientStats {
            connects: 2,
            redirects: 3,
            ..ClientStats::default()
        };
        b.errors_by_code.insert(10, 1);
        b.errors_by_code.insert(13, 1);
        a.rejected_by_code.insert(105, 4);
        b.rejected_by_code.insert(105, 1);
        b.rejected_by_code.insert(102, 2);
        b.record_recovery(Duration::from_millis(9));
        a.merge(&b);
        assert_eq!(a.connects, 3);
        assert_eq!(a.redirects, 3);
        assert_eq!(a.errors_by_code.get(&10), Some(&3));
        assert_eq!(a.errors_by_code.get(&13), Some(&1));
        assert_eq!(
            a.rejected_by_code,
            BTreeMap::from([(102, 2), (105, 5)]),
            "refusals add up by code"
        );
        assert_eq!(a.recovery_max, Duration::from_millis(9));
        assert_eq!(a.recoveries, 1);
    }
}
