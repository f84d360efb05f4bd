use std::sync::Arc;

use tillstream_protocol::Batch;
use tillstream_protocol::frame::encode;

use crate::ClientError;

/// A batch already encoded into its whole frame (header and payload), built
/// before a load test's clock starts and shared, not copied, when resent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedBatch {
    /// The batch's seq (from 1, one more per batch of a device).
    pub seq: u64,
    /// Events in it.
    pub events: u32,
    /// The whole frame as written to the stream.
    pub frame: Arc<[u8]>,
}

impl PreparedBatch {
    /// Encodes `batch` into a frame.
    pub fn encode(batch: &Batch) -> Result<Self, ClientError> {
        let mut out = Vec::new();
        encode(batch, &mut out).map_err(|source| ClientError::Encode {
            seq: batch.seq,
            source,
        })?;
        Ok(Self {
            seq: batch.seq,
            events: u32::try_from(batch.events.len()).unwrap_or(u32::MAX),
            frame: out.into(),
        })
    }

    /// Bytes of the frame.
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Whether the frame is empty (never, for an encoded batch).
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use tillstream_protocol::frame::{FrameHeader, HEADER_LEN, aligned};
    use tillstream_protocol::{MsgType, ValidatedBatch};

    use super::*;

    #[test]
    fn encodes_a_valid_frame() -> Result<(), Box<dyn std::error::Error>> {
        let batch = Batch {
            seq: 7,
            sent_at_us: 1,
            events: Vec::new(),
        };
        let p = PreparedBatch::encode(&batch)?;
        assert_eq!((p.seq, p.events), (7, 0));
        let h = FrameHeader::parse(&p.frame, u32::MAX)?;
        assert_eq!(h.msg_type, MsgType::Batch);
        let payload = &p.frame[HEADER_LEN..];
        h.check_payload(payload)?;
        let v = ValidatedBatch::new(aligned(payload), 4096)?;
        assert_eq!(v.get().seq.to_native(), 7);
        Ok(())
    }
}
