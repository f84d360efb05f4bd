//! Arbitrary bytes as a device's credential: as the token of a `Hello`
//! (verified with a fixed test key: signature, claims, expiry) and as a
//! client certificate's DER (the claims reader; in the server only
//! certificates the TLS verifier accepted get there, but it must be safe
//! on any bytes).
//!
//! Property besides "no panic": whatever verifies carries claims that
//! agree with their role (a device role names a device and a store, an
//! API role neither).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tillstream_auth::token::SigningKey;

/// A key for fuzzing only (also in examples/seed.rs, which signs seeds).
pub const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIEuKKbC0dYv0bl3WDapyID3W93NT++e7DEODRYevaARF
-----END PRIVATE KEY-----
";

static KEY: OnceLock<SigningKey> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let key = KEY.get_or_init(|| SigningKey::from_pem(TEST_KEY_PEM).expect("the test key"));
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(c) = key.verify(text, 0)
    {
        assert_eq!(c.role.is_device(), c.device.is_some() && c.store.is_some());
    }
    if let Ok(c) = tillstream_auth::ca::claims_from_cert(data) {
        assert!(c.role.is_device() && c.device.is_some() && c.store.is_some());
    }
});
