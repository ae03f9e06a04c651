//! The handshake's PING check over arbitrary bytes, with and without user auth.
//!
//! Invariants: no panic; a PING accepted without user auth carries the digest of the
//! fixed key (so arbitrary bytes are accepted only when they compute it); with user auth,
//! only the configured user's digest passes.

#![no_main]

use fwdgate::forward::handshake::{check_ping, digest, Expect, User};
use libfuzzer_sys::fuzz_target;

const NONCE: &[u8] = b"0123456789abcdef";
const AUTH: &[u8] = b"fedcba9876543210";

fuzz_target!(|data: &[u8]| {
    let users = [User {
        username: "user".into(),
        password: "pass".into(),
    }];
    let plain = Expect {
        nonce: NONCE,
        auth_salt: b"",
        shared_key: "key",
        users: &users,
    };
    if let Ok(ping) = check_ping(data, &plain) {
        // Accepted: the PING must carry exactly the digest of the key for its own salt
        // and host name.
        let want = digest(&[
            &ping.shared_key_salt,
            ping.client_hostname.as_bytes(),
            NONCE,
            b"key",
        ]);
        let Ok(rmpv::Value::Array(items)) = rmpv::decode::read_value(&mut &data[..]) else {
            panic!("accepted a PING that is not an array");
        };
        let sent = match &items[3] {
            rmpv::Value::String(s) => s.as_bytes().to_vec(),
            rmpv::Value::Binary(b) => b.clone(),
            other => panic!("accepted a digest that is a {other:?}"),
        };
        assert_eq!(
            sent,
            want.as_bytes(),
            "accepted a PING with the wrong digest"
        );
    }
    let with_users = Expect {
        auth_salt: AUTH,
        ..plain
    };
    let _ = check_ping(data, &with_users);
});
