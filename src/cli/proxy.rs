//! The options of `fwdgate proxy` as the proxy's settings, each value labelled with
//! where it came from, so that an error about it names the flag, variable or default.

use super::ProxyArgs;
use crate::proxy::{Given, Settings};

impl ProxyArgs {
    /// Where the option with field name `id` came from (`flag --xsub-bind`,
    /// `environment variable FWDGATE_PROXY_XSUB_BIND`, `the default of --xsub-bind`).
    pub fn origin_of(&self, id: &str) -> String {
        match self.origins.get(id) {
            Some(origin) => origin.to_string(),
            None => format!("option {id}"),
        }
    }

    /// The proxy's settings; the values are checked when the proxy starts.
    pub fn settings(&self) -> Settings {
        let given = |id: &str, value: &String| Given {
            value: value.clone(),
            origin: self.origin_of(id),
        };
        Settings {
            xsub_bind: self
                .xsub_bind
                .iter()
                .map(|e| given("xsub_bind", e))
                .collect(),
            xpub_bind: self
                .xpub_bind
                .iter()
                .map(|e| given("xpub_bind", e))
                .collect(),
            send_hwm: self.send_hwm,
            metrics_listen: self
                .metrics_listen
                .as_ref()
                .map(|a| given("metrics_listen", a)),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::{parse, Command, ParseOutcome};

    #[test]
    fn settings_name_where_each_value_came_from() {
        let ParseOutcome::Parsed(cli) = parse([
            "fwdgate",
            "proxy",
            "--xsub-bind",
            "tcp://127.0.0.1:1",
            "--xsub-bind",
            "ipc:///x",
            "--metrics-listen",
            "127.0.0.1:0",
        ]) else {
            panic!("not parsed")
        };
        let Some(Command::Proxy(args)) = &cli.command else {
            panic!("not the proxy")
        };
        let s = args.settings();
        let xsub: Vec<_> = s
            .xsub_bind
            .iter()
            .map(|g| (g.value.as_str(), g.origin.as_str()))
            .collect();
        assert_eq!(
            xsub,
            [
                ("tcp://127.0.0.1:1", "flag --xsub-bind"),
                ("ipc:///x", "flag --xsub-bind")
            ]
        );
        assert_eq!(s.xpub_bind[0].value, "tcp://0.0.0.0:6364");
        assert_eq!(s.xpub_bind[0].origin, "the default of --xpub-bind");
        let metrics = s.metrics_listen.expect("metrics address");
        assert_eq!(metrics.origin, "flag --metrics-listen");
    }
}
