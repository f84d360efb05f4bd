//! Stock blocks (data format 3): one store's sale lines of an hour of one
//! commit, each with the stock movement it made, and the store's other
//! movements of that hour, in one packed block that both tables' keys
//! point to.
//!
//! Why: a sale line and its movement repeat each other. Of a movement's
//! twelve fields, the store, SKU, time, event key and line are the
//! line's, and the reason and delta follow from its kind and quantity;
//! only the level after and whether it applied are its own. Packed apart,
//! the movements were a third of the rows packed, and packing was the
//! biggest single cost of the server's CPU after the shards' apply. Here
//! a line carries its movement in three more fields (a flag, the level
//! after and applied), and a movement is derived from them on read.
//!
//! # Bytes
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `TSP1` |
//! | 4 | the table: `sale_lines` |
//! | 5 | [`LAYOUT`] (1); 0 is a block of one table (`packed`) |
//! | 6..8 | zero |
//! | 8..12 | line rows, u32 little-endian |
//! | 12..16 | other movement rows, u32 little-endian |
//! | 16..20 | bytes of the line rows, u32 little-endian |
//! | 20.. | the line rows, then the other movements |
//!
//! A line row is a `sale_lines` row's fields (`packed/rows.rs`), then a
//! flag (whether the line made a movement), the movement's level after
//! (0 without one) and its applied flag (0 without one), all delta-coded
//! as one row of 16 fields. The other movements are `stock_movements`
//! rows, their deltas starting again from 0. A line's movement is
//! [`movement_of`] the line: it is packed with the line only when that
//! gives back exactly the row the shard wrote, and as an other movement
//! otherwise.

use super::{MAGIC, MAX_FIELDS, Packed, RowWriter, StoredRow, Unpacker};
use tillstream_storage::rows::*;
use tillstream_storage::store::StoreError;

/// The layout byte (header byte 5) of a stock block.
pub(crate) const LAYOUT: u8 = 1;

/// Bytes of a stock block's header.
pub(crate) const STOCK_HEADER: usize = 20;

/// The stock movement a sale or refund line made, given what only the
/// movement knows: the level after it and whether it applied (the shards
/// write both rows, the movement's by `SaleKind::stock_change` too).
#[inline(always)]
pub(crate) fn movement_of(line: &SaleLineRow, level_after: i64, applied: bool) -> StockMovementRow {
    let (reason, delta) = line.kind.stock_change(line.quantity);
    StockMovementRow {
        store: line.store,
        sku: line.sku,
        ts_us: line.ts_us,
        key: line.key,
        line: line.line,
        reason,
        delta,
        counted: 0,
        level_after,
        applied,
    }
}

/// Whether `m` could be a line's movement (a sale's or a refund's).
#[inline(always)]
pub(crate) fn from_a_line(m: &StockMovementRow) -> bool {
    matches!(m.reason, MovementReason::Sale | MovementReason::Refund)
}

#[inline(always)]
pub(crate) fn pack_moved(w: &mut RowWriter<'_>, moved: Option<Moved>) {
    w.num(u64::from(moved.is_some()));
    w.int(moved.map_or(0, |(level, _)| level));
    w.num(u64::from(moved.is_some_and(|(_, applied)| applied)));
}

/// A packed block of one table (`Packer::finish`): its row count and the
/// rows' bytes.
pub(crate) fn rows_of(block: &[u8]) -> Result<(u32, &[u8]), StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: "a packed block",
        reason: "a block the packer finished has no header".into(),
    };
    let (head, body) = block
        .split_first_chunk::<{ super::HEADER }>()
        .ok_or_else(corrupt)?;
    // The count was written as a u32 (`Packer::finish`).
    Ok((super::claimed_rows(head) as u32, body))
}

/// [`super::decode_each`] of a stock block: each row of `T`'s table, a
/// line or a movement, handed to `row`.
///
/// Its loops are written out as `packed::decode_each`'s are, not shared
/// with it through a generic helper taking the row's decoder: shared, a
/// full scan (`store_scan`) took 13.3 ms against 12.0.
pub(super) fn decode_each<T: Packed + StoredRow>(
    bytes: &[u8],
    mut row: impl FnMut(T),
) -> Result<(), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: T::WHAT,
        reason,
    };
    let Some((head, body)) = bytes.split_first_chunk::<STOCK_HEADER>() else {
        return Err(corrupt(format!(
            "a stock block of {} bytes has no header",
            bytes.len()
        )));
    };
    if head[..4] != *MAGIC
        || head[4] != Table::SaleLines as u8
        || head[5] != LAYOUT
        || head[6..8] != [0, 0]
        || !T::IN_STOCK_BLOCKS
    {
        return Err(corrupt(
            "a stock block's header is not one of this table".into(),
        ));
    }
    let word = |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let (n1, n2, len1) = (word(8) as usize, word(12) as usize, word(16) as usize);
    let Some((lines, others)) = body.split_at_checked(len1) else {
        return Err(corrupt(format!(
            "a stock block claims {len1} bytes of lines in {} bytes",
            body.len()
        )));
    };
    // Every row takes a byte at least: a count past that is corrupt.
    if n1 > lines.len() || n2 > others.len() {
        return Err(corrupt(format!(
            "a stock block claims {n1} lines in {} bytes and {n2} movements in {}",
            lines.len(),
            others.len()
        )));
    }
    let mut u = Unpacker {
        bytes: lines,
        pos: 0,
        prev: [0; MAX_FIELDS],
        at: 0,
    };
    for i in 0..n1 {
        u.at = 0;
        let (line, moved) = unpack_line(&mut u)
            .map_err(|why| corrupt(format!("line {i} of a stock block: {why}")))?;
        if let Some(r) = T::from_stock_line(&line, moved) {
            row(r);
        }
    }
    if u.pos != lines.len() {
        return Err(corrupt(format!(
            "{} bytes follow the last line of a stock block",
            lines.len() - u.pos
        )));
    }
    if T::TABLE != Table::StockMovements {
        return Ok(());
    }
    let mut u = Unpacker {
        bytes: others,
        pos: 0,
        prev: [0; MAX_FIELDS],
        at: 0,
    };
    for i in 0..n2 {
        u.at = 0;
        let m = StockMovementRow::unpack(&mut u)
            .map_err(|why| corrupt(format!("movement {i} of a stock block: {why}")))?;
        if let Some(r) = T::from_stock_movement(m) {
            row(r);
        }
    }
    if u.pos != others.len() {
        return Err(corrupt(format!(
            "{} bytes follow the last movement of a stock block",
            others.len() - u.pos
        )));
    }
    Ok(())
}

/// The movement a line made, as its line row holds it: the level after,
/// and whether it applied.
pub(crate) type Moved = (i64, bool);

/// A line row: the line, and its movement.
#[inline(always)]
fn unpack_line(u: &mut Unpacker<'_>) -> Result<(SaleLineRow, Option<Moved>), &'static str> {
    let line = SaleLineRow::unpack(u)?;
    let moved = u.flag()?;
    let level_after = u.int()?;
    let applied = u.flag()?;
    Ok((line, moved.then_some((level_after, applied))))
}

#[cfg(test)]
#[path = "tests_stock.rs"]
mod tests;
