//! Who may connect: source allow/deny networks, and the caps on connections in total
//! and per source address. Each refusal is counted and logged.

use crate::config::Config;
use crate::metrics::Counters;
use crate::sync::lock;
use arc_swap::ArcSwap;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

pub struct Admission {
    /// The rules, which a SIGHUP may change (for connections that come after).
    rules: ArcSwap<Rules>,
    per_source: Mutex<HashMap<IpAddr, u64>>,
    counters: Arc<Counters>,
}

struct Rules {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    max_connections: u64,
    max_per_source: u64,
}

impl Rules {
    fn new(config: &Config) -> Rules {
        let nets = |list: &[String]| {
            list.iter()
                .filter_map(|n| crate::config::parse_network(n))
                .collect()
        };
        Rules {
            allow: nets(&config.input.allow),
            deny: nets(&config.input.deny),
            max_connections: config.limits.max_connections,
            max_per_source: config.limits.max_connections_per_source,
        }
    }
}

/// Why a connection is refused at accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("source {0} is denied by input.deny")]
    Denied(IpAddr),
    #[error("source {0} is not in input.allow")]
    NotAllowed(IpAddr),
    #[error("{0} connections open: at limits.max_connections")]
    AtMaxConnections(u64),
    #[error("{open} connections open from {ip}: at limits.max_connections_per_source")]
    AtMaxPerSource { open: u64, ip: IpAddr },
}

/// Holds a connection's place; released when dropped.
pub struct Place {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
}

impl Drop for Place {
    fn drop(&mut self) {
        Counters::decrease(&self.admission.counters.connections_admitted, 1);
        if let Some(ip) = self.ip {
            let mut m = lock(&self.admission.per_source);
            if let Some(n) = m.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

impl Admission {
    pub fn new(config: &Config, counters: Arc<Counters>) -> Admission {
        Admission {
            rules: ArcSwap::from_pointee(Rules::new(config)),
            per_source: Mutex::new(HashMap::new()),
            counters,
        }
    }

    /// Takes the networks and caps of `config`. Connections open stay; the caps count
    /// them.
    pub fn update(&self, config: &Config) {
        self.rules.store(Arc::new(Rules::new(config)));
    }

    /// Admits a connection from `ip` (`None` for unix sockets, which only the total cap
    /// applies to), or says why not.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Place, Refusal> {
        let rules = self.rules.load();
        if let Some(ip) = ip {
            if rules.deny.iter().any(|n| n.contains(&ip)) {
                return self.refuse(Refusal::Denied(ip));
            }
            if !rules.allow.is_empty() && !rules.allow.iter().any(|n| n.contains(&ip)) {
                return self.refuse(Refusal::NotAllowed(ip));
            }
        }
        let open = self
            .counters
            .connections_admitted
            .fetch_add(1, Ordering::SeqCst);
        // From here the place exists: dropping it undoes both counts.
        let mut place = Place {
            admission: self.clone(),
            ip: None,
        };
        if rules.max_connections > 0 && open >= rules.max_connections {
            drop(place);
            return self.refuse(Refusal::AtMaxConnections(open));
        }
        if let Some(ip) = ip {
            let mut m = lock(&self.per_source);
            let n = m.entry(ip).or_insert(0);
            if rules.max_per_source > 0 && *n >= rules.max_per_source {
                let n = *n;
                drop(m);
                drop(place);
                return self.refuse(Refusal::AtMaxPerSource { open: n, ip });
            }
            *n += 1;
            place.ip = Some(ip);
        }
        Ok(place)
    }

    fn refuse(&self, reason: Refusal) -> Result<Place, Refusal> {
        self.counters
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        Err(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(text: &str) -> Arc<Admission> {
        let config = Config::from_toml(text).unwrap().finalize().unwrap();
        Arc::new(Admission::new(&config, Arc::new(Counters::default())))
    }

    #[test]
    fn networks_then_caps_and_a_reload_changes_them_for_what_comes_after() {
        let a = admission("[input]\ndeny = [\"10.0.0.0/8\"]\n[limits]\nmax_connections = 2\nmax_connections_per_source = 1\n");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            a.admit(Some(ip("10.1.2.3"))).err(),
            Some(Refusal::Denied(ip("10.1.2.3")))
        );
        let first = a.admit(Some(ip("192.0.2.1"))).unwrap();
        assert_eq!(
            a.admit(Some(ip("192.0.2.1"))).err(),
            Some(Refusal::AtMaxPerSource {
                open: 1,
                ip: ip("192.0.2.1")
            })
        );
        let second = a.admit(None).unwrap();
        assert_eq!(
            a.admit(Some(ip("192.0.2.9"))).err(),
            Some(Refusal::AtMaxConnections(2))
        );
        let reloaded = Config::from_toml("[input]\nallow = [\"192.0.2.0/24\"]\n")
            .unwrap()
            .finalize()
            .unwrap();
        a.update(&reloaded);
        assert_eq!(
            a.admit(Some(ip("10.1.2.3"))).err(),
            Some(Refusal::NotAllowed(ip("10.1.2.3")))
        );
        // The open connections still count against the source's cap (none now).
        let again = a.admit(Some(ip("192.0.2.1"))).unwrap();
        drop((first, second, again));
        assert_eq!(a.counters.connections_admitted.load(Ordering::Relaxed), 0);
    }
}
