//! `output.zmq_connect` endpoints by name. libzmq resolves a `tcp://name:port` endpoint
//! to one address, once per (re)connect. Collectors that run as several processes
//! behind one name — a Kubernetes headless Service, Swarm's `tasks.<service>` — need
//! every address, and the addresses of those that come and go: the gateway resolves
//! each name itself, connects to every address, and resolves again every
//! `output.resolve_interval_ms`, connecting to new addresses and letting go of those
//! the name no longer has.
//!
//! A resolver thread does the lookups (they block, and DNS may be slow) and hands the
//! set of addresses to the publisher thread, which owns the socket and applies the
//! difference between its loops.

use crate::metrics::Counters;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

/// One `zmq_connect` endpoint: given to libzmq as it is, or a host name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address, another transport (`ipc://`), or an endpoint with options libzmq
    /// reads itself (`tcp://source;host:port`): connected as written.
    Fixed(String),
    /// `tcp://host:port` with a host name.
    Named { host: String, port: u16 },
}

impl Target {
    pub fn parse(endpoint: &str) -> Target {
        let fixed = || Target::Fixed(endpoint.to_string());
        let Some(rest) = endpoint.strip_prefix("tcp://") else {
            return fixed();
        };
        let Some((host, port)) = rest.rsplit_once(':') else {
            return fixed();
        };
        let Ok(port) = port.parse::<u16>() else {
            return fixed();
        };
        let literal = host.parse::<IpAddr>().is_ok() || host.starts_with('[') || host == "*";
        if literal || host.is_empty() || host.contains(';') {
            return fixed();
        }
        Target::Named {
            host: host.to_string(),
            port,
        }
    }
}

/// The endpoint libzmq connects to for `ip` and `port`.
fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("tcp://{v4}:{port}"),
        IpAddr::V6(v6) => format!("tcp://[{v6}]:{port}"),
    }
}

/// What the publisher thread keeps of its connect endpoints: those connected as written,
/// the addresses its host names resolve to, what it is connected to, and the resolver's
/// news.
pub struct Dialer {
    fixed: BTreeSet<String>,
    resolved: BTreeSet<String>,
    connected: BTreeSet<String>,
    updates: Option<Receiver<BTreeSet<String>>>,
    /// Tells the current resolver thread to end (a reload starts another).
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    ipv6: bool,
}

impl Dialer {
    /// `fixed`: endpoints already connected as written. The host names among `named`
    /// are resolved every `interval`; nothing of them is connected yet: the first
    /// [`Dialer::apply`] does it, with the first answers, which are ready before it
    /// (start-up waits for one lookup per name).
    pub fn start(
        fixed: &[String],
        named: Vec<Target>,
        interval: Duration,
        counters: Arc<Counters>,
    ) -> Dialer {
        let fixed: BTreeSet<String> = fixed.iter().cloned().collect();
        let mut dialer = Dialer {
            connected: fixed.clone(),
            fixed,
            resolved: BTreeSet::new(),
            updates: None,
            stop: Arc::new(AtomicBool::new(false)),
            counters,
            ipv6: false,
        };
        dialer.resolve(named, interval);
        dialer
    }

    /// Starts a resolver thread for the host names among `targets`, if any, after
    /// telling the current one to end.
    fn resolve(&mut self, targets: Vec<Target>, interval: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.stop = Arc::new(AtomicBool::new(false));
        self.updates = None;
        if targets.is_empty() {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let mut resolver = Resolver {
            targets,
            failing: BTreeMap::new(),
        };
        let _ = tx.send(resolver.resolve());
        let stop = self.stop.clone();
        let spawned = std::thread::Builder::new()
            .name("fwdgate-resolver".into())
            .spawn(move || resolver.run(interval, tx, &stop));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the resolver thread: zmq_connect names are resolved once");
        }
        self.updates = Some(rx);
    }

    /// Takes a reloaded configuration's connect endpoints: those written as they are
    /// are connected or let go now, host names once resolved.
    pub fn reload(&mut self, socket: &zmq::Socket, endpoints: &[String], interval: Duration) {
        let mut fixed = BTreeSet::new();
        let mut named = Vec::new();
        for endpoint in endpoints {
            match Target::parse(endpoint) {
                target @ Target::Named { .. } if !interval.is_zero() => named.push(target),
                _ => {
                    fixed.insert(endpoint.clone());
                }
            }
        }
        self.fixed = fixed;
        self.resolved.clear();
        self.resolve(named, interval);
        self.apply(socket);
        self.reconcile(socket);
    }

    /// Connects to the endpoints the names gained and lets go of those they lost, if
    /// the resolver has news. Costs one atomic load otherwise.
    pub fn apply(&mut self, socket: &zmq::Socket) {
        let Some(updates) = &self.updates else {
            return;
        };
        let mut latest = None;
        loop {
            match updates.try_recv() {
                Ok(set) => latest = Some(set),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.updates = None;
                    break;
                }
            }
        }
        if let Some(resolved) = latest {
            self.resolved = resolved;
            self.reconcile(socket);
        }
    }

    /// Connects what is wanted and not connected, disconnects the rest.
    fn reconcile(&mut self, socket: &zmq::Socket) {
        let wanted: BTreeSet<String> = self.fixed.union(&self.resolved).cloned().collect();
        for gone in self.connected.difference(&wanted) {
            match socket.disconnect(gone) {
                Ok(()) => {
                    tracing::info!(endpoint = %gone, "ZeroMQ endpoint no longer configured or resolved: disconnected")
                }
                Err(e) => {
                    tracing::warn!(endpoint = %gone, error = %e, "cannot disconnect ZeroMQ endpoint")
                }
            }
        }
        let mut now = BTreeSet::new();
        for ep in &wanted {
            if self.connected.contains(ep) {
                now.insert(ep.clone());
                continue;
            }
            if ep.starts_with("tcp://[") && !self.ipv6 {
                // libzmq refuses IPv6 peers unless asked.
                match socket.set_ipv6(true) {
                    Ok(()) => self.ipv6 = true,
                    Err(e) => tracing::warn!(error = %e, "cannot enable IPv6 on the ZeroMQ socket"),
                }
            }
            match socket.connect(ep) {
                Ok(()) => {
                    tracing::info!(endpoint = %ep, "connecting to ZeroMQ endpoint");
                    now.insert(ep.clone());
                }
                Err(e) => {
                    tracing::warn!(endpoint = %ep, error = %e, "cannot connect ZeroMQ endpoint")
                }
            }
        }
        self.connected = now;
        let from_names = self.connected.intersection(&self.resolved).count();
        self.counters
            .zmq_connect_addresses
            .store(from_names as u64, Ordering::Relaxed);
    }
}

impl Drop for Dialer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The resolver thread's state.
struct Resolver {
    targets: Vec<Target>,
    /// Names whose last lookup failed, with the error (logged when it changes).
    failing: BTreeMap<String, String>,
}

impl Resolver {
    /// Resolves every `interval` and sends the set of endpoints when it changed; ends
    /// when told to, or when the publisher thread is gone.
    fn run(mut self, interval: Duration, updates: Sender<BTreeSet<String>>, stop: &AtomicBool) {
        let mut last: Option<BTreeSet<String>> = None;
        loop {
            std::thread::sleep(interval);
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let now = self.resolve();
            if last.as_ref() == Some(&now) {
                continue;
            }
            if updates.send(now.clone()).is_err() {
                return;
            }
            last = Some(now);
        }
    }

    /// Every endpoint to connect to now. A name that does not resolve (yet) adds none;
    /// it is logged when it starts or stops failing, not at every lookup.
    fn resolve(&mut self) -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        for target in &self.targets {
            match target {
                Target::Fixed(ep) => {
                    set.insert(ep.clone());
                }
                Target::Named { host, port } => match dns_lookup::lookup_host(host) {
                    Ok(ips) => {
                        let before = set.len();
                        set.extend(ips.map(|ip| endpoint(ip, *port)));
                        if self.failing.remove(host).is_some() {
                            tracing::info!(name = %host, addresses = set.len() - before, "zmq_connect name resolves again");
                        }
                    }
                    Err(e) => {
                        let error = e.to_string();
                        if self.failing.get(host) != Some(&error) {
                            tracing::warn!(name = %host, error = %error, "zmq_connect name does not resolve: nothing to connect to under it until it does");
                            self.failing.insert(host.clone(), error);
                        }
                    }
                },
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_resolved_and_the_rest_is_left_to_libzmq() {
        let named = |h: &str, p| Target::Named {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            Target::parse("tcp://collectors:6362"),
            named("collectors", 6362)
        );
        assert_eq!(
            Target::parse("tcp://tasks.collector.svc:1"),
            named("tasks.collector.svc", 1)
        );
        for fixed in [
            "tcp://127.0.0.1:6362",
            "tcp://[::1]:6362",
            "tcp://*:6362",
            "tcp://eth0;collectors:6362",
            "tcp://collectors:*",
            "ipc:///run/collector.sock",
            "tcp://collectors",
        ] {
            assert_eq!(Target::parse(fixed), Target::Fixed(fixed.into()), "{fixed}");
        }
    }

    #[test]
    fn every_address_of_a_name_becomes_an_endpoint() {
        let mut r = Resolver {
            targets: vec![
                Target::parse("tcp://localhost:7000"),
                Target::parse("ipc:///x"),
                Target::parse("tcp://no-such-host.invalid:1"),
            ],
            failing: BTreeMap::new(),
        };
        let set = r.resolve();
        assert!(set.contains("tcp://127.0.0.1:7000"), "{set:?}");
        assert!(set.contains("ipc:///x"));
        assert!(!set.iter().any(|e| e.contains("invalid")));
        assert!(r.failing.contains_key("no-such-host.invalid"));
        assert_eq!(endpoint("::1".parse().unwrap(), 5), "tcp://[::1]:5");
    }
}
