//! The resend buffer and send window of one device, free of I/O.
//!
//! Invariants: `pending` holds every batch that was queued and is neither
//! acknowledged nor refused, in strictly increasing seq order, each above
//! `durable`; `pending[..written]` have been written on the current
//! connection (and only those); `written <= pending.len()`.

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

/// The resend buffer and the send window of one device.
#[derive(Debug)]
pub struct Window {
    pending: VecDeque<Pending>,
    written: usize,
    durable: u64,
    last_seq: u64,
    max_inflight: usize,
    server_max: Option<usize>,
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
        }
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

    /// Queues a batch. Seqs must start at 1 and grow; the caller checks
    /// [`has_room`](Self::has_room) first (a full window still takes it).
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

    /// A cumulative acknowledgement: removes and returns every batch at or
    /// below `durable_seq`. A lower value than already known changes nothing.
    pub fn on_ack(&mut self, durable_seq: u64) -> Vec<AckedBatch> {
        self.durable = self.durable.max(durable_seq);
        let mut acked = Vec::new();
        while let Some(p) = self.pending.front() {
            if p.batch.seq > self.durable {
                break;
            }
            if let Some(p) = self.pending.pop_front() {
                acked.push(AckedBatch {
                    seq: p.batch.seq,
                    events: p.batch.events,
                    first_sent: p.first_sent,
                });
            }
            self.written = self.written.saturating_sub(1);
        }
        acked
    }

    /// A new session: the server's watermark and limits. Drops what is
    /// durable (returned) and makes everything else due for writing again.
    pub fn on_welcome(&mut self, durable_seq: u64, limits: &Limits) -> Vec<AckedBatch> {
        self.server_max = Some(usize::try_from(limits.max_inflight_batches).unwrap_or(usize::MAX));
        self.written = 0;
        self.on_ack(durable_seq)
    }

    /// The connection is gone: nothing counts as written any more.
    pub fn on_disconnect(&mut self) {
        self.written = 0;
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
        let acked = w.on_ack(2);
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
        let acked = w.on_welcome(2, &limits(64));
        assert_eq!(acked.len(), 2);
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
        assert_eq!(w.on_ack(2).len(), 2);
        assert!(w.on_ack(1).is_empty());
        assert_eq!(w.durable(), 2);
        assert_eq!(w.on_ack(u64::MAX).len(), 1);
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
}
