//! The command line: subcommands and the flags that override the configuration file.
//! Every gateway flag has an `FWDGATE_*` environment variable (clap reads it when the
//! flag is absent) and a key in the TOML file.

use crate::config::{Config, ConfigError, Format, LogFormat};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "fwdgate",
    version,
    about = "Fluentd forward protocol in, tenant-tagged ZeroMQ out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and print the effective configuration as TOML.
    CheckConfig,
    /// Subscribe to a gateway and print one tenant's lines as they arrive.
    Tail(TailArgs),
}

/// Options of the gateway; each replaces the file's value when given.
#[derive(Debug, Args, Default)]
pub struct GatewayArgs {
    /// TOML configuration file.
    #[arg(long, env = "FWDGATE_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// TCP address to accept the forward protocol on (repeatable).
    #[arg(
        long,
        env = "FWDGATE_LISTEN",
        global = true,
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub listen: Vec<String>,
    /// Unix socket path to accept the forward protocol on (repeatable).
    #[arg(
        long,
        env = "FWDGATE_UNIX",
        global = true,
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub unix: Vec<PathBuf>,
    /// Octal file mode of the unix sockets.
    #[arg(long, env = "FWDGATE_UNIX_MODE", global = true, value_name = "MODE")]
    pub unix_mode: Option<String>,
    /// ZeroMQ endpoint for the PUB socket to bind (repeatable).
    #[arg(
        long,
        env = "FWDGATE_ZMQ_BIND",
        global = true,
        value_name = "ENDPOINT",
        value_delimiter = ','
    )]
    pub zmq_bind: Vec<String>,
    /// ZeroMQ endpoint for the PUB socket to connect to (repeatable).
    #[arg(
        long,
        env = "FWDGATE_ZMQ_CONNECT",
        global = true,
        value_name = "ENDPOINT",
        value_delimiter = ','
    )]
    pub zmq_connect: Vec<String>,
    /// Output format.
    #[arg(long, env = "FWDGATE_FORMAT", global = true, value_enum)]
    pub format: Option<Format>,
    /// Record key for the tenant, tried in order (repeatable).
    #[arg(
        long = "tenant-key",
        env = "FWDGATE_TENANT_KEY",
        global = true,
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub tenant_keys: Vec<String>,
    /// Record key for the service, tried in order (repeatable).
    #[arg(
        long = "service-key",
        env = "FWDGATE_SERVICE_KEY",
        global = true,
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub service_keys: Vec<String>,
    /// Regex on the tag with named groups `tenant` and `service`.
    #[arg(long, env = "FWDGATE_TAG_REGEX", global = true, value_name = "REGEX")]
    pub tag_regex: Option<String>,
    /// Bytes appended to the tenant frame, for exact subscriptions.
    #[arg(long, env = "FWDGATE_TOPIC_SUFFIX", global = true, value_name = "STR")]
    pub topic_suffix: Option<String>,
    /// Address of the HTTP endpoint for /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "FWDGATE_METRICS_LISTEN",
        global = true,
        value_name = "ADDR"
    )]
    pub metrics_listen: Option<String>,
    /// Format of the gateway's own log.
    #[arg(long, env = "FWDGATE_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// File for the gateway's own log (reopened on SIGHUP); default standard error.
    #[arg(long, env = "FWDGATE_LOG_FILE", global = true, value_name = "FILE")]
    pub log_file: Option<String>,
    /// Log level or tracing filter.
    #[arg(long, env = "FWDGATE_LOG_LEVEL", global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// ZeroMQ endpoint of the gateway's PUB socket (repeatable).
    #[arg(long, required = true, value_name = "ENDPOINT")]
    pub connect: Vec<String>,
    /// The tenant whose lines to print (exactly this tenant, not others it prefixes).
    #[arg(long, value_name = "TENANT")]
    pub tenant: String,
    /// Only this service's lines.
    #[arg(long, value_name = "SERVICE")]
    pub service: Option<String>,
}

impl GatewayArgs {
    /// Loads the file (if any), applies these overrides, fills in and checks defaults.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let replace = |target: &mut Vec<String>, from: &Vec<String>| {
            if !from.is_empty() {
                target.clone_from(from);
            }
        };
        replace(&mut c.input.listen, &self.listen);
        if !self.unix.is_empty() {
            c.input.unix.clone_from(&self.unix);
        }
        replace(&mut c.output.zmq_bind, &self.zmq_bind);
        replace(&mut c.output.zmq_connect, &self.zmq_connect);
        replace(&mut c.route.tenant_keys, &self.tenant_keys);
        replace(&mut c.route.service_keys, &self.service_keys);
        if let Some(v) = &self.unix_mode {
            c.input.unix_mode.clone_from(v);
        }
        if let Some(v) = self.format {
            c.output.format = v;
        }
        if let Some(v) = &self.tag_regex {
            c.route.tag_regex.clone_from(v);
        }
        if let Some(v) = &self.topic_suffix {
            c.output.topic_suffix.clone_from(v);
        }
        if let Some(v) = &self.metrics_listen {
            c.metrics.listen.clone_from(v);
        }
        if let Some(v) = self.log_format {
            c.log.format = v;
        }
        if let Some(v) = &self.log_file {
            c.log.file.clone_from(v);
        }
        if let Some(v) = &self.log_level {
            c.log.level.clone_from(v);
        }
        c.finalize()
    }
}
