//! Stock blocks assembled from a commit's rows: each sale line with the
//! movement it made, and the other movements, packed by (partition, hour)
//! into [`BlockSet`]s, then joined into one stock block each
//! (`packed::stock` has the bytes and why they are laid out so).
//!
//! Apart from `packed::stock` so that the byte layout knows nothing of
//! how a commit groups its rows (`blocks`).

use crate::blocks::{BlockKey, BlockSet, ROWS_AHEAD, block_key_of};
use crate::packed::stock::{LAYOUT, STOCK_HEADER, from_a_line, movement_of, pack_moved, rows_of};
use crate::packed::{MAGIC, Packed};
use tillstream_storage::rows::*;
use tillstream_storage::store::StoreError;

/// Packs the sale lines and stock movements of `parts`, read in place:
/// each line, with its movement where the next movement of its part not
/// yet packed is the line's, into `lines`; every other movement into
/// `others`; both by (partition, hour). The shards write a line's
/// movement after the movements of the events before it and before the
/// next line's, so in their rows the two come in step.
pub(crate) fn pack(parts: &[RowSet], lines: &mut BlockSet, others: &mut BlockSet) {
    lines.begin();
    others.begin();
    for part in parts {
        let (ls, ms) = (&part.sale_lines, &part.stock_movements);
        let mut next = 0;
        for (i, l) in ls.iter().enumerate() {
            // Out of cache, written a flush interval ago (`BlockSet::pack_parts`).
            if let Some(ahead) = ls.get(i + ROWS_AHEAD) {
                tillstream_storage::hint::prefetch(ahead);
            }
            if let Some(ahead) = ms.get(next + ROWS_AHEAD) {
                tillstream_storage::hint::prefetch(ahead);
            }
            while let Some(m) = ms.get(next).filter(|m| !from_a_line(m)) {
                others.push_row(m);
                next += 1;
            }
            let moved = ms
                .get(next)
                .filter(|m| **m == movement_of(l, m.level_after, m.applied));
            if moved.is_some() {
                next += 1;
            }
            lines.push_with(Table::SaleLines, block_key_of(l), |w| {
                l.pack(w);
                pack_moved(w, moved.map(|m| (m.level_after, m.applied)));
            });
        }
        for m in ms.get(next..).unwrap_or_default() {
            others.push_row(m);
        }
    }
    lines.end();
    others.end();
}

/// One block to stage after [`pack`]: its pieces, to be written one after
/// the other, and whether the `sale_lines` and `stock_movements` keys of
/// its (partition, hour) point to it.
pub(crate) struct StockBlock<'a> {
    pub(crate) key: BlockKey,
    pub(crate) header: [u8; STOCK_HEADER],
    pub(crate) pieces: [&'a [u8]; 2],
    /// A stock block (both keys); else a plain `stock_movements` block
    /// (`header` unused, `pieces[0]` the whole block).
    pub(crate) stock: bool,
}

impl StockBlock<'_> {
    /// The block's bytes, in pieces.
    pub(crate) fn bytes(&self) -> [&[u8]; 3] {
        if self.stock {
            [&self.header, self.pieces[0], self.pieces[1]]
        } else {
            [self.pieces[0], &[], &[]]
        }
    }
}

/// The blocks of the last [`pack`], in key order: a stock block for each
/// (partition, hour) with lines, a plain movement block for one with
/// movements alone.
pub(crate) fn blocks<'a>(
    lines: &'a mut BlockSet,
    others: &'a mut BlockSet,
) -> Result<Vec<StockBlock<'a>>, StoreError> {
    let mut out = Vec::new();
    let mut ms = others.blocks().peekable();
    for (key, block) in lines.blocks() {
        while let Some((k, m)) = ms.next_if(|(k, _)| *k < key) {
            out.push(plain(k, m));
        }
        let (n1, body1) = rows_of(block)?;
        let (n2, body2) = match ms.next_if(|(k, _)| *k == key) {
            Some((_, m)) => rows_of(m)?,
            None => (0, &[][..]),
        };
        let len1 = u32::try_from(body1.len()).map_err(|_| too_big(body1.len()))?;
        let mut header = [0u8; STOCK_HEADER];
        header[..4].copy_from_slice(MAGIC);
        header[4] = Table::SaleLines as u8;
        header[5] = LAYOUT;
        header[8..12].copy_from_slice(&n1.to_le_bytes());
        header[12..16].copy_from_slice(&n2.to_le_bytes());
        header[16..20].copy_from_slice(&len1.to_le_bytes());
        out.push(StockBlock {
            key,
            header,
            pieces: [body1, body2],
            stock: true,
        });
    }
    out.extend(ms.map(|(k, m)| plain(k, m)));
    Ok(out)
}

fn plain(key: BlockKey, block: &[u8]) -> StockBlock<'_> {
    StockBlock {
        key,
        header: [0; STOCK_HEADER],
        pieces: [block, &[]],
        stock: false,
    }
}

fn too_big(bytes: usize) -> StoreError {
    StoreError::Backend {
        op: "packing a stock block",
        source: format!("{bytes} bytes of lines in one block, over 4 GiB").into(),
    }
}
