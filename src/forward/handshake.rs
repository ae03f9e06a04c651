//! The forward protocol's handshake (used when a shared key is configured):
//!
//! - server → client `["HELO", {"nonce": bin, "auth": bin (empty: no user auth), "keepalive": bool}]`
//! - client → server `["PING", hostname, shared_key_salt, hex(sha512(salt + hostname + nonce + key)),
//!   username, hex(sha512(auth_salt + username + password))]`
//! - server → client `["PONG", ok, reason, server_hostname, hex(sha512(salt + server_hostname + nonce + key))]`
//!
//! This module is pure: message encoding and the checks. Digests are compared in
//! constant time.

use rmpv::Value;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// A username and password for user authentication.
#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    pub password: String,
}

/// What the server expects of one client's PING.
pub struct Expect<'a> {
    pub nonce: &'a [u8],
    /// Empty when user authentication is off.
    pub auth_salt: &'a [u8],
    pub shared_key: &'a str,
    pub users: &'a [User],
}

/// A PING that passed.
#[derive(Debug, PartialEq, Eq)]
pub struct Ping {
    pub client_hostname: String,
    pub shared_key_salt: Vec<u8>,
}

/// `hex(sha512(parts...))`, as both sides compute their digests.
pub fn digest(parts: &[&[u8]]) -> String {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    let out = h.finalize();
    let mut hex = String::with_capacity(out.len() * 2);
    for b in out {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, v);
    out
}

/// The HELO the server sends first.
pub fn helo(nonce: &[u8], auth_salt: &[u8], keepalive: bool) -> Vec<u8> {
    encode(&Value::Array(vec![
        Value::from("HELO"),
        Value::Map(vec![
            (Value::from("nonce"), Value::Binary(nonce.to_vec())),
            (Value::from("auth"), Value::Binary(auth_salt.to_vec())),
            (Value::from("keepalive"), Value::Boolean(keepalive)),
        ]),
    ]))
}

/// The PONG answering a PING: on success it proves the server knows the key too.
pub fn pong(
    ok: bool,
    reason: &str,
    server_hostname: &str,
    ping_salt: &[u8],
    nonce: &[u8],
    shared_key: &str,
) -> Vec<u8> {
    let proof = if ok {
        digest(&[
            ping_salt,
            server_hostname.as_bytes(),
            nonce,
            shared_key.as_bytes(),
        ])
    } else {
        String::new()
    };
    encode(&Value::Array(vec![
        Value::from("PONG"),
        Value::Boolean(ok),
        Value::from(reason),
        Value::from(server_hostname),
        Value::from(proof),
    ]))
}

fn text(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Binary(b) => Some(b.clone()),
        _ => None,
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Why a PING is refused. Its text is the reason sent back in the PONG.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    #[error("PING is not msgpack")]
    NotMsgpack,
    #[error("expected a PING array")]
    NotArray,
    #[error("expected [\"PING\", hostname, salt, digest, username, password digest]")]
    Shape,
    #[error("PING fields must be strings")]
    FieldNotString,
    #[error("shared_key mismatch")]
    SharedKey,
    #[error("username/password mismatch")]
    User,
}

/// Checks a PING frame.
pub fn check_ping(frame: &[u8], expect: &Expect<'_>) -> Result<Ping, PingError> {
    let value = rmpv::decode::read_value(&mut &frame[..]).map_err(|_| PingError::NotMsgpack)?;
    let Value::Array(items) = value else {
        return Err(PingError::NotArray);
    };
    if items.len() != 6 || items[0].as_str() != Some("PING") {
        return Err(PingError::Shape);
    }
    let fields: Vec<Vec<u8>> = items[1..]
        .iter()
        .map(|v| text(v).ok_or(PingError::FieldNotString))
        .collect::<Result<_, _>>()?;
    let (hostname, salt, key_digest, username, password_digest) =
        (&fields[0], &fields[1], &fields[2], &fields[3], &fields[4]);
    let want = digest(&[salt, hostname, expect.nonce, expect.shared_key.as_bytes()]);
    if !same(want.as_bytes(), key_digest) {
        return Err(PingError::SharedKey);
    }
    if !expect.auth_salt.is_empty() {
        // Every user is checked, so the time taken does not tell which name exists.
        let mut found = false;
        for user in expect.users {
            let want = digest(&[
                expect.auth_salt,
                user.username.as_bytes(),
                user.password.as_bytes(),
            ]);
            let name_ok = same(user.username.as_bytes(), username);
            let pass_ok = same(want.as_bytes(), password_digest);
            found |= name_ok & pass_ok;
        }
        if !found {
            return Err(PingError::User);
        }
    }
    Ok(Ping {
        client_hostname: String::from_utf8_lossy(hostname).into_owned(),
        shared_key_salt: salt.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(
        hostname: &str,
        salt: &str,
        key: &str,
        nonce: &[u8],
        user: (&str, &str),
        auth: &[u8],
    ) -> Vec<u8> {
        let key_digest = digest(&[salt.as_bytes(), hostname.as_bytes(), nonce, key.as_bytes()]);
        let pass = if auth.is_empty() {
            String::new()
        } else {
            digest(&[auth, user.0.as_bytes(), user.1.as_bytes()])
        };
        encode(&Value::Array(vec![
            "PING".into(),
            hostname.into(),
            salt.into(),
            key_digest.into(),
            user.0.into(),
            pass.into(),
        ]))
    }

    #[test]
    fn digest_matches_an_independent_computation() {
        // sha512("abc"), a published test vector.
        assert!(digest(&[b"a", b"bc"]).starts_with("ddaf35a193617aba"));
    }

    #[test]
    fn shared_key_and_users() {
        let users = [User {
            username: "alice".into(),
            password: "pw".into(),
        }];
        let expect = Expect {
            nonce: b"nonce",
            auth_salt: b"",
            shared_key: "secret",
            users: &users,
        };
        let ok = ping("client", "salt", "secret", b"nonce", ("", ""), b"");
        assert_eq!(check_ping(&ok, &expect).unwrap().client_hostname, "client");
        let bad = ping("client", "salt", "wrong", b"nonce", ("", ""), b"");
        assert_eq!(check_ping(&bad, &expect).unwrap_err(), PingError::SharedKey);
        assert_eq!(PingError::SharedKey.to_string(), "shared_key mismatch");
        let with_auth = Expect {
            auth_salt: b"auth",
            ..expect
        };
        let good_user = ping("c", "s", "secret", b"nonce", ("alice", "pw"), b"auth");
        assert!(check_ping(&good_user, &with_auth).is_ok());
        let bad_user = ping("c", "s", "secret", b"nonce", ("alice", "nope"), b"auth");
        assert_eq!(
            check_ping(&bad_user, &with_auth).unwrap_err(),
            PingError::User
        );
        assert_eq!(
            check_ping(&[0x91, 0xa4, b'P', b'I', b'N', b'G'], &expect).unwrap_err(),
            PingError::Shape
        );
        assert_eq!(check_ping(&[], &expect).unwrap_err(), PingError::NotMsgpack);
        assert_eq!(
            check_ping(&[0x01], &expect).unwrap_err(),
            PingError::NotArray
        );
    }
}
