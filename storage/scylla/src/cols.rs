//! Reading a CQL row's columns in order, each checked against the type
//! the schema gives it (mapping.rs).

use scylla::value::{CqlValue, Row};

use tillstream_storage::rows::{EventKey, MovementReason, SaleKind};
use tillstream_storage::store::StoreError;

/// Reads a row's columns in order, checking each type.
pub(super) struct Cols {
    table: &'static str,
    cols: std::vec::IntoIter<Option<CqlValue>>,
    at: usize,
}

impl Cols {
    pub(super) fn new(table: &'static str, row: Row, expected: usize) -> Result<Cols, StoreError> {
        if row.columns.len() != expected {
            return Err(corrupt(
                table,
                format!("{} columns, expected {expected}", row.columns.len()),
            ));
        }
        Ok(Cols {
            table,
            cols: row.columns.into_iter(),
            at: 0,
        })
    }

    pub(super) fn next(&mut self) -> Option<CqlValue> {
        self.at += 1;
        self.cols.next().flatten()
    }

    pub(super) fn bad(&self, what: &str) -> StoreError {
        corrupt(self.table, format!("column {} is not {what}", self.at))
    }

    pub(super) fn opt_i64(&mut self) -> Result<Option<i64>, StoreError> {
        match self.next() {
            None => Ok(None),
            Some(CqlValue::BigInt(v)) => Ok(Some(v)),
            Some(_) => Err(self.bad("a bigint")),
        }
    }
    pub(super) fn i64(&mut self) -> Result<i64, StoreError> {
        self.opt_i64()?.ok_or_else(|| self.bad("a bigint"))
    }
    pub(super) fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(self.i64()? as u64)
    }
    pub(super) fn u32(&mut self) -> Result<u32, StoreError> {
        let v = self.i64()?;
        u32::try_from(v).map_err(|_| self.bad("a u32"))
    }
    pub(super) fn opt_i32(&mut self) -> Result<Option<i32>, StoreError> {
        match self.next() {
            None => Ok(None),
            Some(CqlValue::Int(v)) => Ok(Some(v)),
            Some(_) => Err(self.bad("an int")),
        }
    }
    pub(super) fn i32(&mut self) -> Result<i32, StoreError> {
        self.opt_i32()?.ok_or_else(|| self.bad("an int"))
    }
    pub(super) fn int_u32(&mut self) -> Result<u32, StoreError> {
        let v = self.i32()?;
        u32::try_from(v).map_err(|_| self.bad("a u32"))
    }
    pub(super) fn int_u16(&mut self) -> Result<u16, StoreError> {
        let v = self.i32()?;
        u16::try_from(v).map_err(|_| self.bad("a u16"))
    }
    pub(super) fn i16(&mut self) -> Result<i16, StoreError> {
        match self.next() {
            Some(CqlValue::SmallInt(v)) => Ok(v),
            _ => Err(self.bad("a smallint")),
        }
    }
    pub(super) fn u8(&mut self) -> Result<u8, StoreError> {
        let v = self.i16()?;
        u8::try_from(v).map_err(|_| self.bad("a u8"))
    }
    pub(super) fn bool(&mut self) -> Result<bool, StoreError> {
        match self.next() {
            Some(CqlValue::Boolean(v)) => Ok(v),
            _ => Err(self.bad("a boolean")),
        }
    }
    pub(super) fn blob(&mut self) -> Result<Vec<u8>, StoreError> {
        match self.next() {
            Some(CqlValue::Blob(v)) => Ok(v),
            None => Ok(Vec::new()),
            _ => Err(self.bad("a blob")),
        }
    }
    pub(super) fn text(&mut self) -> Result<String, StoreError> {
        match self.next() {
            Some(CqlValue::Text(v) | CqlValue::Ascii(v)) => Ok(v),
            None => Ok(String::new()),
            _ => Err(self.bad("text")),
        }
    }
    pub(super) fn key(&mut self) -> Result<EventKey, StoreError> {
        Ok(EventKey {
            device: self.u64()?,
            seq: self.u64()?,
            idx: self.int_u32()?,
        })
    }
    pub(super) fn sale_kind(&mut self) -> Result<SaleKind, StoreError> {
        match self.i16()? {
            0 => Ok(SaleKind::Sale),
            1 => Ok(SaleKind::Refund),
            _ => Err(self.bad("a sale kind")),
        }
    }
    pub(super) fn reason(&mut self) -> Result<MovementReason, StoreError> {
        use MovementReason::*;
        Ok(match self.i16()? {
            0 => Sale,
            1 => Refund,
            2 => Receipt,
            3 => Shrink,
            4 => TransferIn,
            5 => TransferOut,
            6 => CountCorrection,
            _ => return Err(self.bad("a movement reason")),
        })
    }
}

pub(super) fn corrupt(table: &'static str, reason: String) -> StoreError {
    StoreError::Corrupt {
        what: table,
        reason,
    }
}
