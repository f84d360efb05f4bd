//! Arbitrary bytes as the first frame of a session: the header parsed
//! with the Hello limit (16 KiB, as the session does), then the payload
//! decoded as a `Hello` (bytecheck, then deserialize).
//!
//! The CRC is checked but does not gate the decode: the fuzzer could
//! almost never forge a valid CRC-32, and the decoder must be safe on any
//! bytes anyway. When the header names another small message type
//! (Welcome, Ack, Error, Reject: what a client decodes), that is decoded
//! too.
//!
//! Property besides "no panic": a decoded Hello encodes back to a frame
//! that parses and decodes to the same Hello.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tillstream_protocol::frame::{FrameHeader, HEADER_LEN, aligned, decode, encode_to_vec};
use tillstream_protocol::{Ack, Error, Hello, MsgType, Reject, Welcome};

/// The session's limit for the first frame (engine session/mod.rs).
const HELLO_MAX_BYTES: u32 = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = FrameHeader::parse(data, HELLO_MAX_BYTES) else {
        return;
    };
    let rest = &data[HEADER_LEN..];
    let payload = &rest[..rest.len().min(header.len as usize)];
    let _ = header.check_payload(payload);
    let buf = aligned(payload);

    if let Ok(hello) = decode::<Hello>(&buf) {
        let frame = encode_to_vec(&hello).expect("a decoded Hello encodes");
        let h2 = FrameHeader::parse(&frame, u32::MAX).expect("own header parses");
        assert_eq!(h2.msg_type, MsgType::Hello);
        h2.check_payload(&frame[HEADER_LEN..])
            .expect("own payload checks");
        let again = decode::<Hello>(&aligned(&frame[HEADER_LEN..])).expect("own Hello decodes");
        assert_eq!(again, hello);
    }
    match header.msg_type {
        MsgType::Welcome => drop(decode::<Welcome>(&buf)),
        MsgType::Ack => drop(decode::<Ack>(&buf)),
        MsgType::Error => drop(decode::<Error>(&buf)),
        MsgType::Reject => drop(decode::<Reject>(&buf)),
        _ => {}
    }
});
