//! The command line: subcommands and the flags that override the configuration file.
//! Every gateway flag has an `FWDGATE_*` environment variable (clap reads it when the
//! flag is absent) and a key in the TOML file.
//!
//! `layers` merges file, variables and flags into one configuration and, when the result
//! is invalid, names the flag, variable or file line that made it so; `usage` turns
//! clap's own errors into messages that name the variable a bad value came from;
//! `proxy` turns the options of `fwdgate proxy` into its settings.

mod layers;
mod proxy;
mod report;
mod usage;

pub use layers::{LoadError, Origin};
pub use report::error_chain;
pub use usage::{parse, ParseOutcome};

use crate::config::{Format, LogFormat};
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `0.1.0 (commit 1a2b3c4d5e6f)`: the package version and the commit built (build.rs).
pub const VERSION: &str = env!("FWDGATE_VERSION");

#[derive(Debug, Parser)]
#[command(
    name = "fwdgate",
    version = VERSION,
    about = "Fluentd forward protocol in, tenant-tagged ZeroMQ out",
    long_about = "Fluentd forward protocol in, tenant-tagged ZeroMQ out.\n\n\
        fwdgate accepts the Fluentd forward protocol from unmodified log clients (Docker's \
        fluentd log driver, Fluent Bit, Fluentd, the fluent-logger libraries) and republishes \
        every record as a ZeroMQ publication whose first frame is the record's tenant.\n\n\
        Without a command it runs the gateway. Every option is also a key of the TOML file \
        given with --config and an FWDGATE_* environment variable; a flag beats its \
        variable, which beats the file.",
    // `fwdgate --listen ADDR` runs the gateway; a command takes its own options after it
    // (`fwdgate check-config --listen ADDR`), so `fwdgate tail --help` lists only tail's.
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default when no command is given).
    Run(GatewayArgs),
    /// Validate the configuration and print the effective configuration as TOML.
    CheckConfig(GatewayArgs),
    /// Subscribe to a gateway and print one tenant's lines as they arrive.
    Tail(TailArgs),
    /// Run a ZeroMQ proxy (XSUB in, XPUB out) between many gateways and their subscribers.
    #[command(
        long_about = "Run a ZeroMQ proxy (XSUB in, XPUB out) between many gateways and their \
        subscribers.\n\n\
        Gateways connect their PUB socket to the XSUB side (output.zmq_connect); collectors \
        connect their SUB sockets to the XPUB side. Subscriptions travel upstream, so each \
        gateway sees which topics somebody downstream subscribes to: a topic once when its \
        first subscriber arrives, and its removal when the last one leaves. SIGTERM or SIGINT \
        stops the proxy and exits 0. Every option is also an FWDGATE_PROXY_* environment \
        variable; a flag beats its variable."
    )]
    Proxy(ProxyArgs),
    /// Print the completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write one page per command into a directory.
    Man {
        /// Write fwdgate.1 and fwdgate-COMMAND.1 into DIR instead of printing fwdgate.1.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

impl Cli {
    /// The gateway options that apply: those of `run` or `check-config`, else the
    /// top-level ones (no command means `run`).
    pub fn gateway_args(&self) -> &GatewayArgs {
        match &self.command {
            Some(Command::Run(g)) | Some(Command::CheckConfig(g)) => g,
            _ => &self.gateway,
        }
    }

    fn gateway_args_mut(&mut self) -> &mut GatewayArgs {
        match &mut self.command {
            Some(Command::Run(g)) | Some(Command::CheckConfig(g)) => g,
            _ => &mut self.gateway,
        }
    }
}

/// Options of the gateway; each replaces the file's value when given.
#[derive(Debug, Clone, Args, Default)]
pub struct GatewayArgs {
    /// TOML configuration file.
    #[arg(long, env = "FWDGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// TCP address to accept the forward protocol on (repeatable).
    #[arg(
        long,
        env = "FWDGATE_LISTEN",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub listen: Vec<String>,
    /// Unix socket path to accept the forward protocol on (repeatable).
    #[arg(long, env = "FWDGATE_UNIX", value_name = "PATH", value_delimiter = ',')]
    pub unix: Vec<PathBuf>,
    /// Octal file mode of the unix sockets.
    #[arg(long, env = "FWDGATE_UNIX_MODE", value_name = "MODE")]
    pub unix_mode: Option<String>,
    /// ZeroMQ endpoint for the PUB socket to bind (repeatable).
    #[arg(
        long,
        env = "FWDGATE_ZMQ_BIND",
        value_name = "ENDPOINT",
        value_delimiter = ','
    )]
    pub zmq_bind: Vec<String>,
    /// ZeroMQ endpoint for the PUB socket to connect to (repeatable).
    #[arg(
        long,
        env = "FWDGATE_ZMQ_CONNECT",
        value_name = "ENDPOINT",
        value_delimiter = ','
    )]
    pub zmq_connect: Vec<String>,
    /// Output format.
    #[arg(long, env = "FWDGATE_FORMAT", value_enum)]
    pub format: Option<Format>,
    /// Record key for the tenant, tried in order (repeatable).
    #[arg(
        long = "tenant-key",
        env = "FWDGATE_TENANT_KEY",
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub tenant_keys: Vec<String>,
    /// Record key for the service, tried in order (repeatable).
    #[arg(
        long = "service-key",
        env = "FWDGATE_SERVICE_KEY",
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub service_keys: Vec<String>,
    /// Regex on the tag with named groups `tenant` and `service`.
    #[arg(long, env = "FWDGATE_TAG_REGEX", value_name = "REGEX")]
    pub tag_regex: Option<String>,
    /// Bytes appended to the tenant frame, for exact subscriptions.
    #[arg(long, env = "FWDGATE_TOPIC_SUFFIX", value_name = "STR")]
    pub topic_suffix: Option<String>,
    /// Address of the HTTP endpoint for /metrics, /healthz and /readyz.
    #[arg(long, env = "FWDGATE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Format of the gateway's own log.
    #[arg(long, env = "FWDGATE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// File for the gateway's own log (reopened on SIGHUP); default standard error.
    #[arg(long, env = "FWDGATE_LOG_FILE", value_name = "FILE")]
    pub log_file: Option<String>,
    /// Log level or tracing filter.
    #[arg(long, env = "FWDGATE_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Where each option given came from, by field name (filled in by [`parse`]).
    #[arg(skip)]
    pub origins: BTreeMap<String, Origin>,
}

/// Options of `fwdgate proxy`. A repeatable flag (or its comma-separated variable)
/// replaces the default list.
#[derive(Debug, Args, Default)]
pub struct ProxyArgs {
    /// ZeroMQ endpoint the XSUB socket binds, where gateways connect their PUB (repeatable).
    #[arg(
        long,
        env = "FWDGATE_PROXY_XSUB_BIND",
        value_name = "ENDPOINT",
        value_delimiter = ',',
        default_value = "tcp://0.0.0.0:6363"
    )]
    pub xsub_bind: Vec<String>,
    /// ZeroMQ endpoint the XPUB socket binds, where subscribers connect (repeatable).
    #[arg(
        long,
        env = "FWDGATE_PROXY_XPUB_BIND",
        value_name = "ENDPOINT",
        value_delimiter = ',',
        default_value = "tcp://0.0.0.0:6364"
    )]
    pub xpub_bind: Vec<String>,
    /// Messages that may wait for one subscriber at the XPUB socket (ZMQ_SNDHWM); past
    /// it libzmq drops that subscriber's messages. A subscriber stopped for a while gets
    /// what waited once it reads again, up to this many. libzmq's own default, 1000,
    /// loses messages in bursts.
    #[arg(
        long,
        env = "FWDGATE_PROXY_SEND_HWM",
        value_name = "MESSAGES",
        default_value_t = 100_000
    )]
    pub send_hwm: i32,
    /// Address of the HTTP endpoint for /metrics, /healthz and /readyz (off by default).
    #[arg(long, env = "FWDGATE_PROXY_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Format of the proxy's own log.
    #[arg(
        long,
        env = "FWDGATE_PROXY_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    /// Log level or tracing filter.
    #[arg(
        long,
        env = "FWDGATE_PROXY_LOG_LEVEL",
        value_name = "LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
    /// Where each option came from, by field name (filled in by [`parse`]).
    #[arg(skip)]
    pub origins: BTreeMap<String, Origin>,
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
    /// The gateway's TOML file: its `output.topic_suffix` and route keys apply.
    #[arg(long, env = "FWDGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The gateway's `topic_suffix` (default: the file's, else none).
    #[arg(long, env = "FWDGATE_TOPIC_SUFFIX", value_name = "STR")]
    pub topic_suffix: Option<String>,
}
