//! What one append writes: whole records, either encoded already by the
//! caller ([`encode_record`]) or handed over unencoded
//! ([`JournalRecords`]) and encoded once, straight into the buffer the
//! write goes out from.
//!
//! Why the second kind: the engine's sequencer had copied every batch
//! frame into a group buffer under its lock, and a direct append copied
//! that group again into its block-aligned buffer: two copies of every
//! byte acknowledged, 3.5% of the server's CPU at the peak. Unencoded,
//! the frames are copied once, by the journal's writer thread, outside
//! the sequencer's lock.

use rkyv::util::AlignedVec;

use super::JournalError;
use super::format::{
    MAX_RECORD_PAYLOAD, RECORD_HEADER, check_group, push_record, salt_crcs_in_place,
};
use crate::direct_io::BLOCK;

/// Records to append, not yet encoded: each is its LSN and its payload in
/// two parts (a header of the caller's, then the body), written one after
/// the other as [`encode_record`](super::encode_record) would.
pub trait JournalRecords {
    /// How many records.
    fn count(&self) -> usize;
    /// Record `i` (below [`count`](JournalRecords::count)): its LSN and
    /// the two parts of its payload.
    fn record(&self, i: usize) -> (u64, [&[u8]; 2]);
}

/// `records` encoded by [`encode_record`](super::encode_record), one after
/// the other: for a backend that stores encoded groups as they are.
pub fn encode_records(records: &dyn JournalRecords) -> Vec<u8> {
    let mut encoded = Vec::new();
    for i in 0..records.count() {
        let (lsn, parts) = records.record(i);
        super::encode_record(lsn, &parts, &mut encoded);
    }
    encoded
}

/// The records of one append.
#[derive(Clone, Copy)]
pub(super) enum Group<'a> {
    /// Encoded by [`encode_record`](super::encode_record).
    Encoded(&'a [u8]),
    /// Encoded as they are written.
    Records(&'a dyn JournalRecords),
}

impl Group<'_> {
    /// Checks the group as an append after `prev` ending at `last` must
    /// be (LSNs `prev + 1`, `prev + 2`, ..., each payload 1 to
    /// [`MAX_RECORD_PAYLOAD`] bytes) and returns its first LSN and its
    /// encoded size; None for an empty group.
    pub(super) fn check(&self, prev: u64, last: u64) -> Result<Option<(u64, usize)>, JournalError> {
        match *self {
            Group::Encoded([]) => Ok(None),
            Group::Encoded(bytes) => {
                check_group(bytes, prev, last).map(|first| Some((first, bytes.len())))
            }
            Group::Records(records) => check_records(records, prev, last),
        }
    }

    /// Appends the group's records to `out` (the direct writer's
    /// block-aligned buffer, or the writer's own for a write through the
    /// page cache) as they are stored: each CRC XORed with `salt`.
    /// Fails, with nothing to write, if the records encode to other than
    /// the `bytes` [`Group::check`] counted: a [`JournalRecords`] that
    /// answered differently the second time would otherwise put the
    /// segment's length out of step with its bytes.
    pub(super) fn encode_into(
        &self,
        out: &mut AlignedVec<BLOCK>,
        salt: u32,
        bytes: usize,
    ) -> std::io::Result<()> {
        out.reserve(bytes);
        let before = out.len();
        match *self {
            Group::Encoded(encoded) => {
                let start = out.len();
                out.extend_from_slice(encoded);
                if salt != 0 {
                    salt_crcs_in_place(&mut out.as_mut_slice()[start..], salt);
                }
            }
            Group::Records(records) => {
                for i in 0..records.count() {
                    let (lsn, parts) = records.record(i);
                    push_record(out, lsn, &parts, salt);
                }
            }
        }
        let encoded = out.len() - before;
        if encoded != bytes {
            out.resize(before, 0);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a group checked as {bytes} bytes encoded to {encoded}"),
            ));
        }
        Ok(())
    }
}

/// [`Group::check`] of unencoded records.
fn check_records(
    records: &dyn JournalRecords,
    prev: u64,
    last: u64,
) -> Result<Option<(u64, usize)>, JournalError> {
    let invalid = |reason: String| Err(JournalError::InvalidAppend(reason));
    let mut at = prev;
    let mut bytes = 0usize;
    for i in 0..records.count() {
        let (lsn, [head, body]) = records.record(i);
        if Some(lsn) != at.checked_add(1) {
            return invalid(format!(
                "record {i} has LSN {lsn}, expected {} (the last LSN is {prev})",
                at.saturating_add(1)
            ));
        }
        let len = head.len() + body.len();
        if len == 0 || len > MAX_RECORD_PAYLOAD as usize {
            return invalid(format!("record {lsn} has an invalid length {len}"));
        }
        bytes += RECORD_HEADER + len;
        at = lsn;
    }
    if bytes == 0 {
        return Ok(None);
    }
    if at != last {
        return invalid(format!("the group ends at LSN {at}, but `last` is {last}"));
    }
    Ok(Some((prev + 1, bytes)))
}
