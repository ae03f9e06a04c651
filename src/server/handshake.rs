//! The handshake on a connection, when a shared key is configured: HELO, read the PING
//! within the timeout, answer PONG, and close on failure.

use crate::config::{ClientMatch, Config};
use crate::forward::handshake::{self, Expect, User};
use std::net::IpAddr;
use std::time::Duration;

/// The resolved `[security]` settings.
pub struct Security {
    shared_key: String,
    self_hostname: String,
    user_auth: bool,
    users: Vec<User>,
    allow_anonymous_source: bool,
    clients: Vec<(ClientMatch, String)>,
    pub timeout: Duration,
    /// Close each connection after its first request (`deny_keepalive`).
    pub deny_keepalive: bool,
}

/// Why a handshake failed (the PONG's reason, where one is sent).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Ping(#[from] handshake::PingError),
    #[error("source {0} is not allowed")]
    SourceNotAllowed(String),
    #[error("no PING within the handshake timeout")]
    Timeout,
    #[error("closed before PING")]
    ClosedBeforePing,
}

/// What to send first, and how to check the answer, for one connection.
pub struct Challenge {
    nonce: [u8; 16],
    auth_salt: Vec<u8>,
}

impl Security {
    /// `None` when no shared key is configured (no handshake).
    pub fn from_config(config: &Config) -> Option<Security> {
        let sec = &config.security;
        if sec.shared_key.is_empty() {
            return None;
        }
        let self_hostname = if sec.self_hostname.is_empty() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "fwdgate".into())
        } else {
            sec.self_hostname.clone()
        };
        Some(Security {
            shared_key: sec.shared_key.clone(),
            self_hostname,
            user_auth: sec.user_auth,
            users: sec
                .users
                .iter()
                .map(|u| User {
                    username: u.username.clone(),
                    password: u.password.clone(),
                })
                .collect(),
            allow_anonymous_source: sec.allow_anonymous_source,
            clients: config.client_matches(),
            timeout: Duration::from_millis(sec.handshake_timeout_ms),
            deny_keepalive: sec.deny_keepalive,
        })
    }

    /// A fresh nonce (and user-auth salt) for one connection.
    pub fn challenge(&self) -> Result<Challenge, std::io::Error> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut auth_salt = Vec::new();
        if self.user_auth {
            auth_salt = vec![0u8; 16];
            getrandom::fill(&mut auth_salt).map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(Challenge { nonce, auth_salt })
    }

    pub fn helo(&self, c: &Challenge) -> Vec<u8> {
        handshake::helo(&c.nonce, &c.auth_salt, !self.deny_keepalive)
    }

    /// True when some `clients` entry names a host, so the client's name is needed.
    pub fn needs_hostname(&self) -> bool {
        self.clients
            .iter()
            .any(|(m, _)| matches!(m, ClientMatch::Host(_)))
    }

    /// The shared key for a client at `ip` named `host` (unix clients have neither),
    /// or why it is refused. The first matching `clients` entry wins.
    fn key_for(&self, ip: Option<IpAddr>, host: Option<&str>) -> Result<&str, HandshakeError> {
        let matched = self.clients.iter().find(|(m, _)| match m {
            ClientMatch::Network(net) => ip.is_some_and(|ip| net.contains(&ip)),
            ClientMatch::Host(name) => host.is_some_and(|h| h.eq_ignore_ascii_case(name)),
        });
        match matched {
            Some((_, key)) if !key.is_empty() => Ok(key),
            Some(_) => Ok(&self.shared_key),
            None if self.allow_anonymous_source => Ok(&self.shared_key),
            None => Err(HandshakeError::SourceNotAllowed(
                ip.map_or_else(|| "unix socket".to_owned(), |ip| ip.to_string()),
            )),
        }
    }

    /// Checks a PING; returns the PONG to send and, on failure, why.
    pub fn answer(
        &self,
        c: &Challenge,
        ip: Option<IpAddr>,
        host: Option<&str>,
        ping: &[u8],
    ) -> (Vec<u8>, Result<(), HandshakeError>) {
        let checked = self.key_for(ip, host).and_then(|key| {
            let expect = Expect {
                nonce: &c.nonce,
                auth_salt: &c.auth_salt,
                shared_key: key,
                users: &self.users,
            };
            handshake::check_ping(ping, &expect)
                .map(|p| (p, key))
                .map_err(HandshakeError::Ping)
        });
        match checked {
            Ok((ping, key)) => (
                handshake::pong(
                    true,
                    "",
                    &self.self_hostname,
                    &ping.shared_key_salt,
                    &c.nonce,
                    key,
                ),
                Ok(()),
            ),
            Err(reason) => (
                handshake::pong(
                    false,
                    &reason.to_string(),
                    &self.self_hostname,
                    b"",
                    &c.nonce,
                    "",
                ),
                Err(reason),
            ),
        }
    }
}
