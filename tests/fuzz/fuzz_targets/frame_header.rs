//! Arbitrary bytes as a frame: the 16-byte header through
//! `FrameHeader::parse`, and when it parses, the rest through
//! `check_payload` (length and CRC-32).
//!
//! Properties besides "no panic": a parsed header respects the limit it
//! was parsed with, and a header whose payload checks out is exactly the
//! header `FrameHeader::write` produces for that payload.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tillstream_protocol::frame::{DEFAULT_MAX_PAYLOAD, FrameHeader, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    // The session's default limit, and a small one taken from the input
    // (the Hello limit is 16 KiB; tests use smaller ones).
    let small = data.first().map_or(0, |&b| u32::from(b) << 6);
    for max in [DEFAULT_MAX_PAYLOAD, small] {
        let header = match FrameHeader::parse(data, max) {
            Ok(h) => h,
            Err(e) => {
                // The error's mapping and message must not panic either.
                let _ = (e.code(), e.keeps_framing(), e.to_string());
                continue;
            }
        };
        assert!(header.len <= max, "{header:?} over {max}");
        let payload = &data[HEADER_LEN..];
        match header.check_payload(payload) {
            Ok(()) => {
                let mut again = Vec::with_capacity(HEADER_LEN);
                FrameHeader::write(header.msg_type, payload, &mut again);
                assert_eq!(&again[..], &data[..HEADER_LEN], "header not canonical");
            }
            Err(e) => {
                let _ = (e.code(), e.keeps_framing(), e.to_string());
            }
        }
        // The payload as the session reads it: exactly `len` bytes, when
        // that many arrived.
        if let Some(exact) = payload.get(..header.len as usize) {
            let _ = header.check_payload(exact);
        }
    }
});
