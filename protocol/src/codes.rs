//! Numeric codes carried in `Reject`, `Error` and per-event rejections.
//!
//! Codes are part of the wire contract: never renumber, only add.

/// Why a frame or a session was refused. Sent in `Reject` and `Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The first four bytes were not the frame magic.
    BadMagic = 1,
    /// The header's protocol version is not one the server accepts.
    UnsupportedVersion = 2,
    /// The declared payload length exceeds the negotiated maximum.
    FrameTooLarge = 3,
    /// The payload's CRC-32 does not match the header.
    ChecksumMismatch = 4,
    /// The payload failed rkyv/bytecheck validation.
    InvalidPayload = 5,
    /// A message type that is not allowed at this point of the session.
    UnexpectedMessage = 6,
    /// A batch holds more events than the negotiated maximum.
    BatchTooLarge = 7,
    /// A batch arrived before a successful `Hello`.
    NotAuthenticated = 8,
    /// The store cannot make data durable (disk full, failed fsync).
    StoreUnavailable = 9,
    /// The server is overloaded; retry later.
    Busy = 10,
    /// The device's credentials were refused.
    AuthFailed = 11,
    /// A protocol rule was broken (batch seq 0, reserved flags set, ...).
    ProtocolViolation = 12,
    /// The server is shutting down; reconnect later.
    Draining = 13,
    /// The stream ended inside a frame.
    Truncated = 14,
    /// Too many bad frames on one connection; it is being closed.
    TooManyErrors = 15,
    /// An unknown message type byte.
    UnknownMessageType = 16,
    /// A batch whose seq is at or below the device's watermark is not the
    /// batch stored under that seq: other content, or none was stored (a
    /// device that lost its seq counter, or another one using its id).
    /// Refused and kept as a dead letter, never acknowledged.
    SeqConflict = 17,
    /// The batch names more stores than one device may send for; refused
    /// whole and kept as a dead letter. A till or sensor belongs to one
    /// store: a device spraying store ids would make the server load every
    /// one of them.
    TooManyStores = 18,
    /// The batch names more terminals than one device may sell on (each
    /// new terminal opens rollup rows); refused whole, kept as a dead
    /// letter.
    TooManyTerminals = 19,
    /// The batch names more distinct SKUs than one device may (each new
    /// one is an entity the server keeps); refused whole, kept as a dead
    /// letter.
    TooManySkus = 20,
    /// The node does not serve the device's store; the reason names the
    /// node that does (`store S is served by ADDR`). Sent in `Reject` to a
    /// version-1 device, which cannot follow a `Redirect` (version 2 gets
    /// that instead). Retryable: the device backs off and tries another
    /// address of the cluster.
    NotOwner = 21,
}

impl ErrorCode {
    /// Every code, in wire order (for metric labels known in advance).
    pub const ALL: [ErrorCode; 21] = {
        use ErrorCode::*;
        [
            BadMagic,
            UnsupportedVersion,
            FrameTooLarge,
            ChecksumMismatch,
            InvalidPayload,
            UnexpectedMessage,
            BatchTooLarge,
            NotAuthenticated,
            StoreUnavailable,
            Busy,
            AuthFailed,
            ProtocolViolation,
            Draining,
            Truncated,
            TooManyErrors,
            UnknownMessageType,
            SeqConflict,
            TooManyStores,
            TooManyTerminals,
            TooManySkus,
            NotOwner,
        ]
    };

    /// The numeric value on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Decodes a wire value; unknown values map to `None`.
    pub fn from_u16(v: u16) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => BadMagic,
            2 => UnsupportedVersion,
            3 => FrameTooLarge,
            4 => ChecksumMismatch,
            5 => InvalidPayload,
            6 => UnexpectedMessage,
            7 => BatchTooLarge,
            8 => NotAuthenticated,
            9 => StoreUnavailable,
            10 => Busy,
            11 => AuthFailed,
            12 => ProtocolViolation,
            13 => Draining,
            14 => Truncated,
            15 => TooManyErrors,
            16 => UnknownMessageType,
            17 => SeqConflict,
            18 => TooManyStores,
            19 => TooManyTerminals,
            20 => TooManySkus,
            21 => NotOwner,
            _ => return None,
        })
    }

    /// A short stable name, used as a metric label and in logs.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadMagic => "bad_magic",
            UnsupportedVersion => "unsupported_version",
            FrameTooLarge => "frame_too_large",
            ChecksumMismatch => "checksum_mismatch",
            InvalidPayload => "invalid_payload",
            UnexpectedMessage => "unexpected_message",
            BatchTooLarge => "batch_too_large",
            NotAuthenticated => "not_authenticated",
            StoreUnavailable => "store_unavailable",
            Busy => "busy",
            AuthFailed => "auth_failed",
            ProtocolViolation => "protocol_violation",
            Draining => "draining",
            Truncated => "truncated",
            TooManyErrors => "too_many_errors",
            UnknownMessageType => "unknown_message_type",
            SeqConflict => "seq_conflict",
            TooManyStores => "too_many_stores",
            TooManyTerminals => "too_many_terminals",
            TooManySkus => "too_many_skus",
            NotOwner => "not_owner",
        }
    }

    /// Whether a device should keep its batches and retry later (as opposed
    /// to a permanent refusal that needs an operator). `not_owner` is: the
    /// device retries at another address of the cluster.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::StoreUnavailable
                | ErrorCode::Busy
                | ErrorCode::Draining
                | ErrorCode::NotOwner
        )
    }
}

/// Why a well-formed event was refused on semantic grounds. The event is
/// stored in `rejected_events` and reported back in the `Ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum RejectCode {
    /// A sale or refund line with a quantity of zero or less.
    NonPositiveQuantity = 100,
    /// A sale or refund without lines.
    NoLines = 101,
    /// A timestamp too far in the future of the server's clock.
    FutureTimestamp = 102,
    /// A timestamp before 2000-01-01 or otherwise implausible.
    ImplausibleTimestamp = 103,
    /// A negative unit price, discount or tax.
    NegativeAmount = 104,
    /// A shelf count older than the SKU's late window: it can no longer be
    /// ordered against the movements it should have seen.
    CountTooLate = 105,
    /// A shelf count with a negative level.
    NegativeLevel = 106,
    /// A stock movement with a delta of zero.
    ZeroDelta = 107,
    /// The event names a store that is not the device's.
    WrongStore = 108,
    /// A sale with more lines or tenders than the server accepts.
    TooManyLines = 109,
    /// The device's credential does not allow this kind of event: a shelf
    /// sensor sent a sale, or a till a shelf count.
    NotPermitted = 110,
}

impl RejectCode {
    /// Every code, in wire order (for metric labels known in advance).
    pub const ALL: [RejectCode; 11] = {
        use RejectCode::*;
        [
            NonPositiveQuantity,
            NoLines,
            FutureTimestamp,
            ImplausibleTimestamp,
            NegativeAmount,
            CountTooLate,
            NegativeLevel,
            ZeroDelta,
            WrongStore,
            TooManyLines,
            NotPermitted,
        ]
    };

    /// The numeric value on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Decodes a wire value; unknown values map to `None`.
    pub fn from_u16(v: u16) -> Option<Self> {
        use RejectCode::*;
        Some(match v {
            100 => NonPositiveQuantity,
            101 => NoLines,
            102 => FutureTimestamp,
            103 => ImplausibleTimestamp,
            104 => NegativeAmount,
            105 => CountTooLate,
            106 => NegativeLevel,
            107 => ZeroDelta,
            108 => WrongStore,
            109 => TooManyLines,
            110 => NotPermitted,
            _ => return None,
        })
    }

    /// A short stable name, used as a metric label and in `rejected_events`.
    pub fn name(self) -> &'static str {
        use RejectCode::*;
        match self {
            NonPositiveQuantity => "non_positive_quantity",
            NoLines => "no_lines",
            FutureTimestamp => "future_timestamp",
            ImplausibleTimestamp => "implausible_timestamp",
            NegativeAmount => "negative_amount",
            CountTooLate => "count_too_late",
            NegativeLevel => "negative_level",
            ZeroDelta => "zero_delta",
            WrongStore => "wrong_store",
            TooManyLines => "too_many_lines",
            NotPermitted => "not_permitted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip() {
        let mut decoded = Vec::new();
        for v in 0..200u16 {
            if let Some(c) = ErrorCode::from_u16(v) {
                assert_eq!(c.as_u16(), v);
                assert!(!c.name().is_empty());
                decoded.push(c);
            }
        }
        assert_eq!(decoded, ErrorCode::ALL, "ALL lists every code, in order");
        assert_eq!(ErrorCode::from_u16(9), Some(ErrorCode::StoreUnavailable));
        assert_eq!(ErrorCode::from_u16(0), None);
    }

    #[test]
    fn not_owner_is_code_21_and_retryable() {
        assert_eq!(ErrorCode::ALL.len(), 21);
        assert_eq!(ErrorCode::from_u16(21), Some(ErrorCode::NotOwner));
        assert_eq!(ErrorCode::NotOwner.name(), "not_owner");
        assert!(ErrorCode::NotOwner.is_retryable());
        let retryable: Vec<&str> = ErrorCode::ALL
            .into_iter()
            .filter(|c| c.is_retryable())
            .map(ErrorCode::name)
            .collect();
        assert_eq!(
            retryable,
            ["store_unavailable", "busy", "draining", "not_owner"],
            "FORMAT.md's list of retryable codes"
        );
    }

    #[test]
    fn reject_codes_round_trip() {
        let mut decoded = Vec::new();
        for v in 0..300u16 {
            if let Some(c) = RejectCode::from_u16(v) {
                assert_eq!(c.as_u16(), v);
                decoded.push(c);
            }
        }
        assert_eq!(decoded, RejectCode::ALL, "ALL lists every code, in order");
        assert_eq!(RejectCode::from_u16(105), Some(RejectCode::CountTooLate));
    }
}
