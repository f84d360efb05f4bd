//! The packed block format: how the block log stores raw rows, each field
//! a varint of its change from the row before. About a quarter of the
//! rows' rkyv size.
//!
//! Why: in rkyv a row keeps every field at full width and alignment, so
//! the store, the event key's device and seq, and the high bytes of every
//! time and amount were written again in every row: 577 bytes an event,
//! where the device had sent 207. Copying those bytes into the page cache
//! took 14% of the server's CPU at peak, and writing them back kept the
//! disk busy under the journal's fsyncs, which acknowledgements wait for.
//! Within a block (one partition and hour of one commit) consecutive rows
//! mostly share their store, device and seq, and their times differ by
//! little, so most fields take one byte here.
//!
//! # Bytes
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `TSP1` |
//! | 4 | the table (`Table as u8`) |
//! | 5 | the layout: 0 here; 1 is a stock block (`stock`: a store's sale lines with their movements, and its other movements) |
//! | 6..8 | zero |
//! | 8..12 | rows, u32 little-endian |
//! | 12.. | the rows, one after the other, nothing after the last |
//!
//! A row is its fields in the order its [`Packed`] impl gives them. A
//! number field is the LEB128 varint of the zigzag of (its value − the
//! same field's value in the previous row), in wrapping u64 arithmetic;
//! the first row's previous values are 0. Signed fields are taken as their
//! sign-extended two's complement, narrow fields as their widened value, a
//! bool as 0 or 1, an enum as its `repr(u8)` code, an `Option` as a flag
//! field (0 or 1) then its value (0 if none). A bytes field (text is
//! UTF-8) is a varint length then the bytes, not delta-coded; a fixed
//! array is its bytes as they are.
//!
//! Decoding trusts nothing: a truncated row, an overlong varint, a value
//! out of its field's range, an unknown enum code, bad UTF-8, a wrong
//! magic or table, or bytes after the last row are
//! [`StoreError::Corrupt`], never a panic.

use rkyv::util::AlignedVec;

use crate::archive::StoredRow;
use tillstream_storage::rows::*;
use tillstream_storage::store::StoreError;

mod rows;
pub(crate) mod stock;
#[cfg(test)]
pub(crate) use rows::reason_of;

pub(crate) const MAGIC: &[u8; 4] = b"TSP1";
const HEADER: usize = 12;
/// Most number fields a row type has (a `SaleRow` has 20).
const MAX_FIELDS: usize = 24;
/// The row buffer: every varint of a row fits (10 bytes each at most),
/// so it is copied into the output once a row, not once a field.
const SCRATCH: usize = 512;

/// A kept buffer may hold up to this many times its recent peak use
/// (plus a floor of room): between that and half of it, commits' sizes
/// come and go without a reallocation.
const SPARE_SHARE: usize = 4;

/// The recent peak falls by 1/`PEAK_DECAY` a commit when uses are
/// smaller: a buffer lets go of a backlog's room about ten commits (half
/// a second at the default interval) after it, not at the first small
/// commit. Commits under load alternate big and small (what gathered
/// during the last write is written next), and letting go at once made
/// the next big one grow the buffer again, page by page.
const PEAK_DECAY: usize = 8;

/// Room every packer's buffer may keep, whatever it packed last.
const KEPT_ROOM: usize = 64 * 1024;

/// The biggest use of a buffer kept from commit to commit, over recent
/// commits (decaying, see [`PEAK_DECAY`]): how much room it may keep. The
/// packers' buffers and the levels' scratch (`levels::LevelScratch`)
/// follow it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RecentPeak(usize);

impl RecentPeak {
    /// Records this commit's `used`; if `capacity` is far past the recent
    /// peak (over [`SPARE_SHARE`] times it, plus `floor`), the room to
    /// keep instead: twice the peak.
    pub(crate) fn note(&mut self, used: usize, capacity: usize, floor: usize) -> Option<usize> {
        self.0 = used.max(self.0 - self.0 / PEAK_DECAY);
        (capacity > SPARE_SHARE * self.0 + floor).then_some(2 * self.0)
    }
}

/// A row type the packed format can hold: the block log's raw rows, and
/// the level blocks of `stock_levels` (`levels`).
pub(crate) trait Packed: Sized {
    /// Its table, in the block's header.
    const TABLE: Table;
    /// Writes the row's fields.
    fn pack(&self, p: &mut RowWriter<'_>);
    /// Reads a row's fields, in the order `pack` wrote them.
    fn unpack(u: &mut Unpacker<'_>) -> Result<Self, &'static str>;
    /// Whether the table's rows are read from stock blocks too (`stock`):
    /// sale lines and stock movements.
    const IN_STOCK_BLOCKS: bool = false;
    /// The table's row of a stock block's sale line, `moved` the level
    /// after and `applied` of the movement it made, if it made one.
    #[inline(always)]
    fn from_stock_line(_line: &SaleLineRow, _moved: Option<(i64, bool)>) -> Option<Self> {
        None
    }
    /// The table's row of one of a stock block's other movements.
    #[inline(always)]
    fn from_stock_movement(_m: StockMovementRow) -> Option<Self> {
        None
    }
}

/// Packs rows into one block of one table (see the module docs), in a
/// buffer it owns, so that a `blocks::BlockSet` can keep one per block
/// and reuse them from commit to commit.
pub(crate) struct Packer {
    out: AlignedVec,
    prev: [u64; MAX_FIELDS],
    row: [u8; SCRATCH],
    n: usize,
    rows: u32,
    table: Table,
    /// The biggest block of recent commits (`release_spare`).
    recent_peak: RecentPeak,
}

impl Packer {
    /// An empty block of `table`.
    pub(crate) fn new(table: Table) -> Self {
        let mut p = Packer {
            out: AlignedVec::new(),
            prev: [0; MAX_FIELDS],
            row: [0; SCRATCH],
            n: 0,
            rows: 0,
            table,
            recent_peak: RecentPeak::default(),
        };
        p.restart(table);
        p
    }

    /// Starts a new block of `table`, keeping the buffer's capacity.
    pub(crate) fn restart(&mut self, table: Table) {
        self.out.clear();
        self.out.extend_from_slice(MAGIC);
        self.out.extend_from_slice(&[table as u8, 0, 0, 0]);
        self.out.extend_from_slice(&[0; 4]);
        self.prev = [0; MAX_FIELDS];
        self.n = 0;
        self.rows = 0;
        self.table = table;
    }

    /// Appends one row.
    ///
    /// Its fields are written through a [`RowWriter`] that holds the
    /// write position and the field index in locals: kept in the packer,
    /// they were loaded and stored again around every byte written to the
    /// row buffer (the compiler cannot tell that those bytes do not
    /// overlap them), and that was most of packing's time. Locals only
    /// if each row type's `pack` is inlined here: called, it took the
    /// writer by pointer, and the position and index went through memory
    /// at every field again (hence `#[inline(always)]` on every `pack`,
    /// `packed/rows.rs`).
    #[inline]
    pub(crate) fn push<T: Packed>(&mut self, row: &T) {
        self.push_fields(|w| row.pack(w));
    }

    /// Appends one row whose fields `fields` writes.
    #[inline]
    pub(crate) fn push_fields(&mut self, fields: impl FnOnce(&mut RowWriter<'_>)) {
        let mut w = RowWriter {
            out: &mut self.out,
            row: &mut self.row,
            prev: &mut self.prev,
            n: self.n,
            at: 0,
        };
        fields(&mut w);
        self.n = w.n;
        self.rows += 1;
    }

    /// The block's bytes, header and every row pushed so far.
    pub(crate) fn finish(&mut self) -> &AlignedVec {
        self.out.extend_from_slice(&self.row[..self.n]);
        self.n = 0;
        self.out[8..HEADER].copy_from_slice(&self.rows.to_le_bytes());
        &self.out
    }

    /// Bytes of the block so far (its header included).
    pub(crate) fn packed_bytes(&self) -> usize {
        self.out.len()
    }

    /// Bytes the buffer holds room for.
    pub(crate) fn capacity(&self) -> usize {
        self.out.capacity()
    }

    /// Records `used`, the bytes this packer packed in the last commit,
    /// and lets go of buffer room far past its recent peak: a buffer kept
    /// the capacity of the biggest block it ever held, and after a
    /// backlog's big commit tens of MB sat idle (`BlockSet::trim`). What
    /// it held is dropped: the packer is left as an empty block of its
    /// table.
    pub(crate) fn release_spare(&mut self, used: usize) {
        if let Some(keep) = self.recent_peak.note(used, self.capacity(), KEPT_ROOM) {
            self.out = AlignedVec::with_capacity(keep.max(HEADER));
            self.restart(self.table);
        }
    }
}

/// Writes one row's fields into a [`Packer`] (see [`Packer::push`]).
pub(crate) struct RowWriter<'p> {
    out: &'p mut AlignedVec,
    row: &'p mut [u8; SCRATCH],
    prev: &'p mut [u64; MAX_FIELDS],
    /// Bytes of `row` in use.
    n: usize,
    /// The next field's index.
    at: usize,
}

impl RowWriter<'_> {
    /// Makes room for `bytes` more in the row buffer.
    fn room(&mut self, bytes: usize) {
        if self.n + bytes > SCRATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.out.extend_from_slice(&self.row[..self.n]);
        self.n = 0;
    }

    #[inline]
    fn varint(&mut self, mut v: u64) {
        if self.n > SCRATCH - 10 {
            self.flush();
        }
        // Written straight into the row buffer, byte by byte: building it
        // in a local array and copying that as words stalled on store
        // forwarding (twice the time). The flush above leaves 10 bytes, so
        // the chunk is always there; nine 7-bit groups carry 63 bits, the
        // tenth byte the last.
        let Some(dst) = self
            .row
            .get_mut(self.n..)
            .and_then(|r| r.first_chunk_mut::<10>())
        else {
            return;
        };
        let mut len = 0;
        while v >= 0x80 && len < 9 {
            dst[len] = (v as u8) | 0x80;
            v >>= 7;
            len += 1;
        }
        dst[len] = v as u8;
        self.n += len + 1;
    }

    /// A number field.
    #[inline]
    pub(crate) fn num(&mut self, v: u64) {
        let prev = self
            .prev
            .get_mut(self.at)
            .map_or(0, |p| std::mem::replace(p, v));
        self.at += 1;
        let d = v.wrapping_sub(prev) as i64;
        self.varint(((d << 1) ^ (d >> 63)) as u64);
    }

    /// A signed number field.
    #[inline]
    pub(crate) fn int(&mut self, v: i64) {
        self.num(v as u64);
    }

    /// An optional number: a flag field, then the value field.
    #[inline]
    pub(crate) fn opt(&mut self, v: Option<u64>) {
        self.num(u64::from(v.is_some()));
        self.num(v.unwrap_or(0));
    }

    /// A bytes field.
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.bytes_raw(b);
    }

    /// A fixed array, as it is.
    #[inline]
    pub(crate) fn fixed<const N: usize>(&mut self, b: &[u8; N]) {
        self.bytes_raw(b);
    }

    #[inline]
    fn bytes_raw(&mut self, b: &[u8]) {
        if b.len() > SCRATCH / 2 {
            self.flush();
            self.out.extend_from_slice(b);
            return;
        }
        self.room(b.len());
        if let Some(dst) = self.row.get_mut(self.n..self.n + b.len()) {
            dst.copy_from_slice(b);
        }
        self.n += b.len();
    }
}

/// Reads rows written by a [`Packer`].
pub(crate) struct Unpacker<'a> {
    bytes: &'a [u8],
    pos: usize,
    prev: [u64; MAX_FIELDS],
    at: usize,
}

impl<'a> Unpacker<'a> {
    /// Most fields are a change of under 64 from the row before: one byte,
    /// taken here without the loop (decoding is most of a restart, which
    /// reads every movement of the last hour back).
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, &'static str> {
        match self.bytes.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(u64::from(b))
            }
            _ => self.varint_long(),
        }
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Result<u64, &'static str> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = *self.bytes.get(self.pos).ok_or("a row is cut short")?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err("a varint overflows 64 bits");
            }
            v |= u64::from(b & 0x7F) << shift;
            if b < 0x80 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err("a varint overflows 64 bits");
            }
        }
    }

    /// A number field.
    #[inline(always)]
    pub(crate) fn num(&mut self) -> Result<u64, &'static str> {
        let z = self.varint()?;
        let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let p = self
            .prev
            .get_mut(self.at)
            .ok_or("a row has more fields than its type")?;
        *p = p.wrapping_add(d as u64);
        self.at += 1;
        Ok(*p)
    }

    /// A signed number field.
    #[inline(always)]
    pub(crate) fn int(&mut self) -> Result<i64, &'static str> {
        self.num().map(|v| v as i64)
    }

    /// A number field that must fit `T`.
    #[inline(always)]
    pub(crate) fn narrow<T: TryFrom<u64>>(&mut self) -> Result<T, &'static str> {
        T::try_from(self.num()?).map_err(|_| "a field is out of its range")
    }

    /// A signed number field that must fit `T`.
    #[inline(always)]
    pub(crate) fn narrow_int<T: TryFrom<i64>>(&mut self) -> Result<T, &'static str> {
        T::try_from(self.int()?).map_err(|_| "a field is out of its range")
    }

    /// A bool field.
    #[inline(always)]
    pub(crate) fn flag(&mut self) -> Result<bool, &'static str> {
        match self.num()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("a flag is neither 0 nor 1"),
        }
    }

    /// An optional number.
    #[inline(always)]
    pub(crate) fn opt(&mut self) -> Result<Option<u64>, &'static str> {
        let some = self.flag()?;
        let v = self.num()?;
        Ok(some.then_some(v))
    }

    /// A bytes field.
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let len = usize::try_from(self.varint()?).map_err(|_| "a length is too large")?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("a bytes field runs past the block")?;
        let b = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    /// A text field.
    pub(crate) fn text(&mut self) -> Result<String, &'static str> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| "a text field is not UTF-8")
    }

    /// A fixed array.
    pub(crate) fn fixed<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let end = self
            .pos
            .checked_add(N)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("a row is cut short")?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.pos..end]);
        self.pos = end;
        Ok(out)
    }
}

/// The rows a packed block's header claims, at most one a byte of its
/// body (what [`decode_each`] accepts); `None` if `bytes` is not a packed
/// block. For sizing a vector before decoding into it.
pub(crate) fn row_count(bytes: &[u8]) -> Option<usize> {
    let (head, body) = bytes.split_first_chunk::<HEADER>()?;
    if &head[..4] != MAGIC {
        return None;
    }
    Some(claimed_rows(head).min(body.len()))
}

/// The row count a block's header claims.
fn claimed_rows(head: &[u8; HEADER]) -> usize {
    u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize
}

/// The rows of a packed block of `T`'s table.
pub(crate) fn decode<T: Packed + StoredRow>(bytes: &[u8]) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::with_capacity(row_count(bytes).unwrap_or(0));
    decode_each(bytes, |row| out.push(row))?;
    Ok(out)
}

/// Hands each row of a packed block of `T`'s table to `row`, in order;
/// none is kept. On an error, the rows before it were handed over.
pub(crate) fn decode_each<T: Packed + StoredRow>(
    bytes: &[u8],
    mut row: impl FnMut(T),
) -> Result<(), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: T::WHAT,
        reason,
    };
    let Some((head, body)) = bytes.split_first_chunk::<HEADER>() else {
        return Err(corrupt(format!(
            "a packed block of {} bytes has no header",
            bytes.len()
        )));
    };
    if head[..4] == *MAGIC && head[5] == stock::LAYOUT {
        return stock::decode_each(bytes, row);
    }
    if &head[..4] != MAGIC || head[4] != T::TABLE as u8 || head[5..8] != [0, 0, 0] {
        return Err(corrupt(
            "a packed block's header is not one of this table".into(),
        ));
    }
    let rows = claimed_rows(head);
    // Every row takes a byte at least: a count past that is corrupt, and
    // is not allocated for.
    if rows > body.len() {
        return Err(corrupt(format!(
            "a packed block claims {rows} rows in {} bytes",
            body.len()
        )));
    }
    let mut u = Unpacker {
        bytes: body,
        pos: 0,
        prev: [0; MAX_FIELDS],
        at: 0,
    };
    for i in 0..rows {
        u.at = 0;
        row(T::unpack(&mut u)
            .map_err(|why| corrupt(format!("row {i} of a packed block: {why}")))?);
    }
    if u.pos != body.len() {
        return Err(corrupt(format!(
            "{} bytes follow the last row of a packed block",
            body.len() - u.pos
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "tests_packed.rs"]
mod tests;
