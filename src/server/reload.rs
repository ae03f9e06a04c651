//! SIGHUP: the configuration is loaded again (file, variables and flags, as at start)
//! and what can change while connections stay open is applied: routing rules, keys
//! and users, limits and source networks, and the ZeroMQ endpoints. What needs a
//! restart (listeners, formats, the buffer and spool, …) is named in a warning and left
//! as it was. A configuration that does not load or build changes nothing.

use super::connection::Shared;
use crate::config::Config;
use crate::publish;
use crate::route::Router;
use std::sync::mpsc::Sender;
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// Applies each configuration that comes, until the sender goes or the gateway (whose
/// `shared` this only borrows, so that shutdown is not held up) is gone.
pub async fn serve(
    mut configs: UnboundedReceiver<Config>,
    mut current: Config,
    shared: Weak<Shared>,
    publisher: Sender<publish::Reload>,
) {
    while let Some(new) = configs.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let router = match Router::new(&new.route) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: configuration not reloaded: invalid routing");
                continue;
            }
        };
        let mut kept = Vec::new();
        shared.live.update(&new, router);
        shared.admission.update(&new);
        let budget = usize::try_from(new.limits.intake_memory_bytes).unwrap_or(usize::MAX);
        if !shared.memory.resize(budget) {
            kept.push("limits.intake_memory_bytes (turning the budget on or off)".to_string());
        }
        let sent = publisher.send(publish::Reload {
            route: new.route.clone(),
            events_per_second: new.limits.tenant_events_per_second,
            burst: new.limits.tenant_burst,
            zmq_bind: new.output.zmq_bind.clone(),
            zmq_connect: new.output.zmq_connect.clone(),
            resolve_interval: Duration::from_millis(new.output.resolve_interval_ms),
        });
        if sent.is_err() {
            return;
        }
        let changed = changed_keys(&current, &new);
        let mut unchanged = new.clone();
        take_reloadable(&mut unchanged, &current);
        kept.extend(changed_keys(&current, &unchanged));
        let applied: Vec<&String> = changed.iter().filter(|k| !kept.contains(k)).collect();
        tracing::info!(changed = ?applied, "SIGHUP: configuration reloaded");
        if !kept.is_empty() {
            tracing::warn!(settings = ?kept, "SIGHUP: these settings take effect only at a restart and were left as they were");
        }
        // What was left is what still applies: a later reload compares with it.
        let mut applied_config = current.clone();
        take_reloadable(&mut applied_config, &new);
        applied_config.limits.intake_memory_bytes = if kept
            .iter()
            .any(|k| k.starts_with("limits.intake_memory_bytes"))
        {
            current.limits.intake_memory_bytes
        } else {
            new.limits.intake_memory_bytes
        };
        current = applied_config;
    }
}

/// Copies into `to` what a reload applies, from `from`.
fn take_reloadable(to: &mut Config, from: &Config) {
    to.route = from.route.clone();
    to.security = from.security.clone();
    to.limits = from.limits.clone();
    to.input.allow = from.input.allow.clone();
    to.input.deny = from.input.deny.clone();
    to.output.zmq_bind = from.output.zmq_bind.clone();
    to.output.zmq_connect = from.output.zmq_connect.clone();
    to.output.resolve_interval_ms = from.output.resolve_interval_ms;
}

/// The keys (`section.key`) whose values differ between `a` and `b`.
fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let (Ok(a), Ok(b)) = (toml::Value::try_from(a), toml::Value::try_from(b)) else {
        return vec!["(the configuration cannot be compared)".into()];
    };
    let mut out = Vec::new();
    diff("", &a, &b, &mut out);
    out
}

fn diff(path: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(ta), toml::Value::Table(tb)) => {
            let keys: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
            for key in keys {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (ta.get(key), tb.get(key)) {
                    (Some(x), Some(y)) => diff(&sub, x, y, out),
                    _ => out.push(sub),
                }
            }
        }
        _ if a != b => out.push(path.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_named_by_section_and_key() {
        let a = Config::default().finalize().unwrap();
        let mut b = a.clone();
        b.route.tenant_keys = vec!["OTHER".into()];
        b.input.listen = vec!["127.0.0.1:1".into()];
        assert_eq!(changed_keys(&a, &b), ["input.listen", "route.tenant_keys"]);
        let mut restart_only = b.clone();
        take_reloadable(&mut restart_only, &a);
        assert_eq!(changed_keys(&a, &restart_only), ["input.listen"]);
    }
}
