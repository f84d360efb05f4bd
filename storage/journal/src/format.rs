//! The record format: encoding, the check of an encoded group before it is
//! appended, and the sequential reader of one segment file.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::{JournalError, io_err};

/// Bytes of a record header.
pub const RECORD_HEADER: usize = 16;

/// Largest payload of one record. A header announcing more is invalid: it
/// can only be a torn or corrupt header, and reading it would allocate
/// whatever a flipped bit asks for.
pub const MAX_RECORD_PAYLOAD: u32 = 64 << 20;

/// Buffer of the segment reader: large enough that reading small records
/// costs few syscalls; larger payloads bypass it.
const READ_BUFFER: usize = 256 << 10;

/// Encodes one record (header + payload) at the end of `out`. `payload` is
/// given in parts that are concatenated, so the caller can prepend its own
/// small header without copying the big part twice.
///
/// The payload must hold 1 to [`MAX_RECORD_PAYLOAD`] bytes. A record
/// outside that range is still encoded (this function cannot fail), with a
/// length that [`Journal::append`](super::Journal::append) rejects.
pub fn encode_record(lsn: u64, payload: &[&[u8]], out: &mut Vec<u8>) {
    out.reserve(RECORD_HEADER + payload.iter().map(|p| p.len()).sum::<usize>());
    push_record(out, lsn, payload, 0);
}

/// A buffer records are encoded into: a `Vec`, or the direct writer's
/// block-aligned buffer (`group`).
pub(super) trait RecordBuf {
    fn len(&self) -> usize;
    fn extend_from_slice(&mut self, bytes: &[u8]);
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl RecordBuf for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Vec::extend_from_slice(self, bytes);
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl<const A: usize> RecordBuf for rkyv::util::AlignedVec<A> {
    fn len(&self) -> usize {
        rkyv::util::AlignedVec::len(self)
    }
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        rkyv::util::AlignedVec::extend_from_slice(self, bytes);
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

/// The one place a record's bytes are laid out: length, CRC (XORed with
/// `salt`, 0 for none), LSN, then the payload's parts. The CRC covers the
/// LSN and the payload, and is computed over the copy just written, while
/// it is in cache (the caller's payload may not be).
pub(super) fn push_record(out: &mut impl RecordBuf, lsn: u64, payload: &[&[u8]], salt: u32) {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    // Saturating: a length over u32::MAX is also over the maximum, so
    // append rejects the record instead of reading a wrapped length.
    let len_field = u32::try_from(len).unwrap_or(u32::MAX);
    let start = out.len();
    out.extend_from_slice(&len_field.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    for part in payload {
        out.extend_from_slice(part);
    }
    let record = &mut out.bytes_mut()[start..];
    let crc = crc32fast::hash(&record[8..]) ^ salt;
    record[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded record header.
#[derive(Debug, Clone, Copy)]
struct Header {
    len: u32,
    crc: u32,
    lsn: u64,
}

impl Header {
    fn parse(bytes: &[u8; RECORD_HEADER]) -> Header {
        // The header is one little-endian u128: len in the low 32 bits,
        // then crc, then lsn in the high 64.
        let all = u128::from_le_bytes(*bytes);
        Header {
            len: all as u32,
            crc: (all >> 32) as u32,
            lsn: (all >> 64) as u64,
        }
    }

    /// Whether the length can be that of a record.
    fn len_ok(&self) -> bool {
        self.len > 0 && self.len <= MAX_RECORD_PAYLOAD
    }
}

fn crc_of(lsn: u64, payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&lsn.to_le_bytes());
    crc.update(payload);
    crc.finalize()
}

/// Checks the framing of a group about to be appended after `prev` and
/// returns its first LSN: whole records, valid lengths, LSNs `prev + 1`,
/// `prev + 2`, ... ending at `last`. CRCs are not recomputed (the group was
/// made by [`encode_record`]); this walks the headers only, so it costs
/// next to nothing beside the write and sync. What it catches is what
/// [`Journal::open`](super::Journal::open) would otherwise drop as a torn
/// tail after the append was acknowledged.
pub(super) fn check_group(encoded: &[u8], prev: u64, last: u64) -> Result<u64, JournalError> {
    each_record(encoded, prev, last, |_, _| {})
}

/// Walks a group as [`check_group`] does and hands each record's LSN and
/// payload to `f`: a backend that keeps records elsewhere than in segment
/// files (the ScyllaDB journal table) stores them one by one. Nothing is
/// handed out unless the whole group is valid.
pub fn split_records(
    encoded: &[u8],
    prev: u64,
    last: u64,
) -> Result<Vec<(u64, &[u8])>, JournalError> {
    let mut out = Vec::new();
    each_record(encoded, prev, last, |lsn, payload| out.push((lsn, payload)))?;
    Ok(out)
}

fn each_record<'a>(
    encoded: &'a [u8],
    prev: u64,
    last: u64,
    mut f: impl FnMut(u64, &'a [u8]),
) -> Result<u64, JournalError> {
    let invalid = |reason: String| Err(JournalError::InvalidAppend(reason));
    let mut rest = encoded;
    let mut at = prev;
    let mut offset = 0usize;
    while !rest.is_empty() {
        let Some((head, after)) = rest.split_first_chunk::<RECORD_HEADER>() else {
            return invalid(format!("a partial record header at byte {offset}"));
        };
        let h = Header::parse(head);
        if Some(h.lsn) != at.checked_add(1) {
            return invalid(format!(
                "record at byte {offset} has LSN {}, expected {} (the last LSN is {prev})",
                h.lsn,
                at.saturating_add(1)
            ));
        }
        let len = h.len as usize;
        if !h.len_ok() || len > after.len() {
            return invalid(format!(
                "record {} at byte {offset} has an invalid length {}",
                h.lsn, h.len
            ));
        }
        f(h.lsn, &after[..len]);
        rest = &after[len..];
        offset += RECORD_HEADER + len;
        at = h.lsn;
    }
    if at != last {
        return invalid(format!("the group ends at LSN {at}, but `last` is {last}"));
    }
    prev.checked_add(1)
        .ok_or_else(|| JournalError::InvalidAppend("the LSN space is exhausted".into()))
}

/// Copies `group` (whole records, as [`check_group`] passed them) to `out`
/// with every stored CRC XORed with `salt`. A reused segment file is
/// salted anew (see `reuse_spare`): its old records, and any record-like
/// bytes inside their payloads, then fail the CRC under the new salt, so
/// the reader stops at the true end of what was written to it.
#[cfg(test)]
pub(super) fn salt_crcs(group: &[u8], salt: u32, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(group);
    salt_crcs_in_place(out, salt);
}

/// [`salt_crcs`] over a group already where it is written (a direct
/// append's buffer).
pub(super) fn salt_crcs_in_place(group: &mut [u8], salt: u32) {
    let mut at = 0;
    while let Some(head) = group
        .get(at..at + RECORD_HEADER)
        .and_then(|h| <&[u8; RECORD_HEADER]>::try_from(h).ok())
    {
        let h = Header::parse(head);
        let salted = (h.crc ^ salt).to_le_bytes();
        group[at + 4..at + 8].copy_from_slice(&salted);
        at += RECORD_HEADER + h.len as usize;
    }
}

/// What the reader found next.
#[derive(Debug)]
pub(super) enum Step {
    /// A valid record; its payload is [`SegmentReader::payload`].
    Record(u64),
    /// A record at or below the skip LSN: its header is valid, its payload
    /// was skipped unread and unchecked.
    Skipped(u64),
    /// The end, exactly at a record boundary.
    End,
    /// An invalid record starts at [`SegmentReader::offset`].
    Bad(String),
}

/// Reads the records of one segment in order, up to a known end, checking
/// each against the LSN it must carry. Holds one payload buffer, reused.
#[derive(Debug)]
pub(super) struct SegmentReader<'a> {
    path: &'a Path,
    reader: BufReader<File>,
    /// Start of the next record.
    offset: u64,
    /// Bytes of the segment to read.
    end: u64,
    /// The LSN the next record must carry.
    next_lsn: u64,
    /// XORed into every stored CRC of the segment (see [`salt_crcs_in_place`]).
    salt: u32,
    payload: Vec<u8>,
}

impl<'a> SegmentReader<'a> {
    /// Opens `path`, whose first record must carry `first` and whose CRCs
    /// are salted with `salt`; reads up to `end` bytes, or the whole file
    /// if `end` is None.
    pub(super) fn open(
        path: &'a Path,
        first: u64,
        salt: u32,
        end: Option<u64>,
    ) -> Result<Self, JournalError> {
        let file = File::open(path).map_err(io_err("open segment", path))?;
        let end = match end {
            Some(end) => end,
            None => file.metadata().map_err(io_err("stat segment", path))?.len(),
        };
        Ok(SegmentReader {
            path,
            reader: BufReader::with_capacity(READ_BUFFER, file),
            offset: 0,
            end,
            next_lsn: first,
            salt,
            payload: Vec::new(),
        })
    }

    /// Start of the next record: after [`Step::End`] or [`Step::Bad`],
    /// where the valid part of the segment ends.
    pub(super) fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes the reader was told to read.
    pub(super) fn end(&self) -> u64 {
        self.end
    }

    /// The payload of the last [`Step::Record`].
    pub(super) fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Reads the next record. Records with an LSN at or below `skip_through`
    /// are skipped without reading their payload. After `End` or `Bad`,
    /// [`offset`](Self::offset) is where the valid records end; stop there.
    pub(super) fn step(&mut self, skip_through: u64) -> Result<Step, JournalError> {
        let remaining = self.end - self.offset;
        if remaining == 0 {
            return Ok(Step::End);
        }
        if remaining < RECORD_HEADER as u64 {
            return Ok(Step::Bad(format!("a short header ({remaining} bytes)")));
        }
        let mut head = [0u8; RECORD_HEADER];
        self.reader
            .read_exact(&mut head)
            .map_err(io_err("read segment", self.path))?;
        let h = Header::parse(&head);
        if let Some(reason) = self.header_problem(&h, remaining) {
            return Ok(Step::Bad(reason));
        }
        let len = u64::from(h.len);
        if h.lsn <= skip_through {
            // At most MAX_RECORD_PAYLOAD, so the cast cannot wrap.
            self.reader
                .seek_relative(len as i64)
                .map_err(io_err("seek in segment", self.path))?;
            return Ok(self.advance(h.lsn, len, Step::Skipped(h.lsn)));
        }
        self.payload.resize(h.len as usize, 0);
        self.reader
            .read_exact(&mut self.payload)
            .map_err(io_err("read segment", self.path))?;
        if crc_of(h.lsn, &self.payload) ^ self.salt != h.crc {
            return Ok(Step::Bad(format!("a CRC mismatch in record {}", h.lsn)));
        }
        Ok(self.advance(h.lsn, len, Step::Record(h.lsn)))
    }

    fn header_problem(&self, h: &Header, remaining: u64) -> Option<String> {
        if !h.len_ok() {
            return Some(format!("an invalid record length {}", h.len));
        }
        if u64::from(h.len) > remaining - RECORD_HEADER as u64 {
            return Some(format!("a short payload ({} bytes announced)", h.len));
        }
        if h.lsn != self.next_lsn {
            return Some(format!(
                "LSN {} where {} was expected",
                h.lsn, self.next_lsn
            ));
        }
        None
    }

    fn advance(&mut self, lsn: u64, len: u64, step: Step) -> Step {
        self.offset += RECORD_HEADER as u64 + len;
        self.next_lsn = lsn.saturating_add(1);
        step
    }
}
