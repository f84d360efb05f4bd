//! The resend buffer and send window of one device, free of I/O.
//!
//! Invariants: `pending` holds every batch that was queued and is neither
//! acknowledged nor refused, in strictly increasing seq order, each above
//! `durable` (unless the window takes replays, see
//! [`Window::with_replay`]); `pending[..written]` have been written on the
//! current connection (and only those); `written <= pending.len()`.
//!
//! A durable watermark that covers a batch this window never wrote means
//! the server got that seq from someone else: the device id was used
//! before. Such a batch is not taken as acknowledged but refused as stale
//! (again, unless the window takes replays).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tillstream_protocol::Limits;

use crate::{AckedBatch, ClientError, PreparedBatch};

#[derive(Debug)]
struct Pending {
    batch: PreparedBatch,
    first_sent: Option<Instant>,
}

/// A batch the writer should put on the stream next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToWrite {
    /// Its seq.
    pub seq: u64,
    /// The whole frame.
    pub frame: Arc<[u8]>,
    /// Whether it had been written before (on an earlier connection).
    pub resend: bool,
}

/// What a durable watermark (an `Ack`, or the `durable_seq` of a
/// `Welcome`) did to the window.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Batches it acknowledged, in seq order.
    pub acked: Vec<AckedBatch>,
    /// Batches it covers that this window never wrote, in seq order: the
    /// server holds their seqs from an earlier user of the device id, so
    /// they are refused as stale, not acknowledged (empty when the window
    /// takes replays).
    pub stale: Vec<PreparedBatch>,
}

/// The resend buffer and the send window of one device.
#[derive(Debug)]
pub struct Window {
    pending: VecDeque<Pending>,
    written: usize,
    durable: u64,
    last_seq: u64,
    max_inflight: usize,
    server_max: Option<usize>,
    replay: bool,
}

impl Window {
    /// An empty window that holds at most `max_inflight` batches (at least 1).
    pub fn new(max_inflight: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            written: 0,
            durable: 0,
            last_seq: 0,
            max_inflight: max_inflight.max(1),
            server_max: None,
            replay: false,
        }
    }

    /// Whether the window takes replays: batches an earlier life of the
    /// device already sent (a device that rebooted and resends what it
    /// kept). Then a seq at or below the durable seq is queued, and a
    /// watermark covering a batch never written here acknowledges it, as
    /// the protocol's session allows. Off (the default), both mean the
    /// device id was already used with higher seqs, and are refused as
    /// stale.
    #[must_use]
    pub fn with_replay(mut self, replay: bool) -> Self {
        self.replay = replay;
        self
    }

    /// Most batches held unacknowledged: the configured bound, lowered by
    /// the server's `Welcome` limit; at least 1.
    pub fn capacity(&self) -> usize {
        self.server_max
            .map_or(self.max_inflight, |s| s.min(self.max_inflight))
            .max(1)
    }

    /// Whether another batch may be queued.
    pub fn has_room(&self) -> bool {
        self.pending.len() < self.capacity()
    }

    /// Queues a batch. Seqs must start at 1 and grow, and (unless the
    /// window takes replays) be above the server's durable seq; the caller
    /// checks [`has_room`](Self::has_room) first (a full window still takes
    /// it).
    pub fn push(&mut self, batch: PreparedBatch) -> Result<(), ClientError> {
        if batch.seq == 0 {
            return Err(ClientError::ZeroSeq);
        }
        if batch.seq <= self.last_seq {
            return Err(ClientError::OutOfOrder {
                seq: batch.seq,
                last: self.last_seq,
            });
        }
        if batch.seq <= self.durable && !self.replay {
            return Err(ClientError::Stale {
                seq: batch.seq,
                durable: self.durable,
            });
        }
        self.last_seq = batch.seq;
        self.pending.push_back(Pending {
            batch,
            first_sent: None,
        });
        Ok(())
    }

    /// The next batch to write on the current connection, if the window
    /// allows one; it counts as written from now on.
    pub fn next_to_write(&mut self, now: Instant) -> Option<ToWrite> {
        if self.written >= self.capacity() {
            return None;
        }
        let p = self.pending.get_mut(self.written)?;
        self.written += 1;
        let resend = p.first_sent.is_some();
        p.first_sent.get_or_insert(now);
        Some(ToWrite {
            seq: p.batch.seq,
            frame: p.batch.frame.clone(),
            resend,
        })
    }

    /// A cumulative acknowledgement: removes every batch at or below
    /// `durable_seq` and returns them, as acknowledged if this window wrote
    /// them (or takes replays), as stale if it never did. A lower value than
    /// already known changes nothing.
    pub fn on_ack(&mut self, durable_seq: u64) -> Settled {
        self.durable = self.durable.max(durable_seq);
        let mut out = Settled::default();
        while let Some(p) = self.pending.front() {
            if p.batch.seq > self.durable {
                break;
            }
            if let Some(p) = self.pending.pop_front() {
                if p.first_sent.is_none() && !self.replay {
                    out.stale.push(p.batch);
                } else {
                    out.acked.push(AckedBatch {
                        seq: p.batch.seq,
                        events: p.batch.events,
                        first_sent: p.first_sent,
                    });
                }
            }
            self.written = self.written.saturating_sub(1);
        }
        out
    }

    /// A new session: the server's watermark and limits. Drops what is
    /// durable (returned, see [`on_ack`](Self::on_ack)) and makes everything
    /// else due for writing again.
    pub fn on_welcome(&mut self, durable_seq: u64, limits: &Limits) -> Settled {
        self.server_max = Some(usize::try_from(limits.max_inflight_batches).unwrap_or(usize::MAX));
        self.written = 0;
        self.on_ack(durable_seq)
    }

    /// The connection is gone: nothing counts as written any more.
    pub fn on_disconnect(&mut self) {
        self.written = 0;
    }

    /// The server refused, for good, a frame whose seq it could not read
    /// (`Error.batch_seq` 0): it answers frames in order, acks first, so
    /// that is the oldest batch written on this connection that is neither
    /// acknowledged nor refused yet. Removes and returns it (None if
    /// nothing is written).
    pub fn refuse_oldest_written(&mut self) -> Option<PreparedBatch> {
        if self.written == 0 {
            return None;
        }
        let p = self.pending.pop_front()?;
        self.written -= 1;
        Some(p.batch)
    }

    /// The server refused batch `seq` for good: removes and returns it.
    pub fn refuse(&mut self, seq: u64) -> Option<PreparedBatch> {
        let i = self
            .pending
            .binary_search_by_key(&seq, |p| p.batch.seq)
            .ok()?;
        let p = self.pending.remove(i)?;
        if i < self.written {
            self.written -= 1;
        }
        Some(p.batch)
    }

    /// The highest durable seq the server announced.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// The highest seq queued so far.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Batches held (written or not).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Batches written on this connection and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64) -> PreparedBatch {
        PreparedBatch {
            seq,
            events: 10,
            frame: vec![seq as u8; 4].into(),
        }
    }

    fn limits(inflight: u32) -> Limits {
        Limits {
            max_inflight_batches: inflight,
            ..Limits::default()
        }
    }

    fn write_all(w: &mut Window, now: Instant) -> Vec<(u64, bool)> {
        std::iter::from_fn(|| w.next_to_write(now).map(|t| (t.seq, t.resend))).collect()
    }

    #[test]
    fn window_bounds_queueing_and_writing() -> Result<(), ClientError> {
        let now = Instant::now();
        let mut w = Window::new(3);
        for s in 1..=3 {
            assert!(w.has_room());
            w.push(batch(s))?;
        }
        assert!(!w.has_room());
        assert_eq!(
            write_all(&mut w, now),
            vec![(1, false), (2, false), (3, false)]
        );
        assert_eq!(w.in_flight(), 3);
        let acked = w.on_ack(2).acked;
        assert_eq!(acked.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(acked[0].first_sent, Some(now));
        assert_eq!((w.len(), w.in_flight(), w.durable()), (1, 1, 2));
        assert!(w.has_room());
        w.push(batch(4))?;
        assert_eq!(write_all(&mut w, now), vec![(4, false)]);
        Ok(())
    }

    #[test]
    fn seqs_must_grow_from_one() -> Result<(), ClientError> {
        let mut w = Window::new(8);
        assert!(matches!(w.push(batch(0)), Err(ClientError::ZeroSeq)));
        w.push(batch(5))?;
        assert!(matches!(
            w.push(batch(5)),
            Err(ClientError::OutOfOrder { seq: 5, last: 5 })
        ));
        w.push(batch(6))?;
        Ok(())
    }

    #[test]
    fn welcome_drops_durable_and_resends_the_rest_in_order() -> Result<(), ClientError> {
        let now = Instant::now();
        let mut w = Window::new(8);
        for s in 1..=5 {
            w.push(batch(s))?;
        }
        assert_eq!(write_all(&mut w, now).len(), 5);
        w.on_disconnect();
        assert_eq!(w.in_flight(), 0);
        let settled = w.on_welcome(2, &limits(64));
        assert_eq!((settled.acked.len(), settled.stale.len()), (2, 0));
        assert_eq!(
            write_all(&mut w, now),
            vec![(3, true), (4, true), (5, true)]
        );
        w.push(batch(6))?;
        assert_eq!(write_all(&mut w, now), vec![(6, false)]);
        Ok(())
    }

    #[test]
    fn server_limit_lowers_capacity() -> Result<(), ClientError> {
        let now = Instant::now();
        let mut w = Window::new(8);
        for s in 1..=4 {
            w.push(batch(s))?;
        }
        w.on_welcome(0, &limits(2));
        assert_eq!(w.capacity(), 2);
        assert!(!w.has_room());
        assert_eq!(write_all(&mut w, now).len(), 2);
        w.on_ack(1);
        assert_eq!(write_all(&mut w, now), vec![(3, false)]);
        // A zero limit still lets one batch through.
        w.on_welcome(1, &limits(0));
        assert_eq!(w.capacity(), 1);
        Ok(())
    }

    #[test]
    fn stale_and_excessive_acks_are_harmless() -> Result<(), ClientError> {
        let now = Instant::now();
        let mut w = Window::new(4);
        for s in 1..=3 {
            w.push(batch(s))?;
        }
        write_all(&mut w, now);
        assert_eq!(w.on_ack(2).acked.len(), 2);
        assert_eq!(w.on_ack(1), Settled::default());
        assert_eq!(w.durable(), 2);
        assert_eq!(w.on_ack(u64::MAX).acked.len(), 1);
        assert!(w.is_empty());
        assert_eq!(w.in_flight(), 0);
        Ok(())
    }

    #[test]
    fn refusal_removes_one_batch_and_keeps_order() -> Result<(), ClientError> {
        let now = Instant::now();
        let mut w = Window::new(8);
        for s in 1..=4 {
            w.push(batch(s))?;
        }
        assert_eq!(write_all(&mut w, now).len(), 4);
        assert_eq!(w.refuse(2).map(|b| b.seq), Some(2));
        assert_eq!(w.refuse(2), None);
        assert_eq!(w.refuse(99), None);
        assert_eq!((w.len(), w.in_flight()), (3, 3));
        w.on_disconnect();
        w.on_welcome(1, &limits(64));
        assert_eq!(write_all(&mut w, now), vec![(3, true), (4, true)]);
        Ok(())
    }

    #[test]
    fn a_seq_at_or_below_the_durable_seq_is_stale() -> Result<(), ClientError> {
        let mut w = Window::new(8);
        // The server holds seqs up to 10 of this device id already.
        assert!(w.on_welcome(10, &limits(64)) == Settled::default());
        for s in [1, 10] {
            assert!(
                matches!(
                    w.push(batch(s)),
                    Err(ClientError::Stale { seq, durable: 10 }) if seq == s
                ),
                "seq {s}"
            );
        }
        assert!(w.is_empty());
        assert_eq!(w.last_seq(), 0, "a refused push changes nothing");
        w.push(batch(11))?;
        assert_eq!(w.len(), 1);
        Ok(())
    }

    #[test]
    fn welcome_above_never_written_batches_refuses_them_as_stale() -> Result<(), ClientError> {
        let now = Instant::now();
        let mut w = Window::new(8);
        // Queued before the first Welcome, when the durable seq was unknown.
        for s in 1..=4 {
            w.push(batch(s))?;
        }
        let settled = w.on_welcome(3, &limits(64));
        assert!(settled.acked.is_empty(), "{settled:?}");
        assert_eq!(
            settled.stale.iter().map(|b| b.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(write_all(&mut w, now), vec![(4, false)]);
        // Written batches are acknowledged as usual, never-written ones are
        // stale even mid-session.
        w.push(batch(5))?;
        let settled = w.on_ack(5);
        assert_eq!(
            settled.acked.iter().map(|a| a.seq).collect::<Vec<_>>(),
            vec![4]
        );
        assert_eq!(
            settled.stale.iter().map(|b| b.seq).collect::<Vec<_>>(),
            vec![5]
        );
        assert!(w.is_empty());
        assert_eq!(w.in_flight(), 0);
        Ok(())
    }

    #[test]
    fn batches_written_before_a_reconnect_are_acknowledged_not_stale() -> Result<(), ClientError> {
        let now = Instant::now();
        let mut w = Window::new(8);
        w.on_welcome(0, &limits(64));
        for s in 1..=3 {
            w.push(batch(s))?;
        }
        assert_eq!(write_all(&mut w, now).len(), 3);
        w.on_disconnect();
        let settled = w.on_welcome(3, &limits(64));
        assert_eq!(settled.acked.len(), 3);
        assert!(settled.stale.is_empty());
        Ok(())
    }

    #[test]
    fn a_replaying_window_takes_what_the_server_already_has() -> Result<(), ClientError> {
        let now = Instant::now();
        let mut w = Window::new(8).with_replay(true);
        for s in 1..=4 {
            w.push(batch(s))?;
        }
        let settled = w.on_welcome(3, &limits(64));
        assert!(settled.stale.is_empty());
        assert_eq!(
            settled
                .acked
                .iter()
                .map(|a| (a.seq, a.first_sent))
                .collect::<Vec<_>>(),
            vec![(1, None), (2, None), (3, None)]
        );
        assert_eq!(write_all(&mut w, now), vec![(4, false)]);
        Ok(())
    }

    #[test]
    fn an_error_without_a_seq_refuses_the_oldest_written_batch() -> Result<(), ClientError> {
        let now = Instant::now();
        let mut w = Window::new(8);
        for s in 1..=4 {
            w.push(batch(s))?;
        }
        // Nothing written yet on this connection: nothing to refuse.
        assert_eq!(w.refuse_oldest_written(), None);
        assert_eq!(write_all(&mut w, now).len(), 4);
        w.on_ack(1);
        assert_eq!(w.refuse_oldest_written().map(|b| b.seq), Some(2));
        assert_eq!((w.len(), w.in_flight()), (2, 2));
        // A later ack covers 3 and 4 only.
        let settled = w.on_ack(4);
        assert_eq!(
            settled.acked.iter().map(|a| a.seq).collect::<Vec<_>>(),
            vec![3, 4]
        );
        // After a reconnect, what was written before is not "written" yet.
        w.push(batch(5))?;
        write_all(&mut w, now);
        w.on_disconnect();
        assert_eq!(w.refuse_oldest_written(), None);
        Ok(())
    }
}
