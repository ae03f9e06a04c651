//! The whole configuration: serde structs with their defaults, loading and validation.
//! Every field is documented here and in `examples/fwdgate.toml`.

use serde::{Deserialize, Serialize};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where fwdgate listens when neither `input.listen` nor `input.unix` is set.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:24224";
/// The largest request, decompressed payload or joined line that may be configured.
pub const MAX_REQUEST_BYTES: usize = 1 << 30;
/// Where the PUB socket binds when neither `output.zmq_bind` nor `output.zmq_connect` is
/// set: the port of the reference driver's consumer.
pub const DEFAULT_ZMQ_BIND: &str = "tcp://0.0.0.0:6362";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    /// A value that cannot be used: `key` names it (`section.key`, for matching);
    /// `message` says why, naming the key too.
    #[error("invalid configuration: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The complete configuration of a gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub input: InputConfig,
    pub route: RouteConfig,
    pub output: OutputConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub spool: SpoolConfig,
    pub security: SecurityConfig,
    pub limits: LimitsConfig,
    pub shutdown: ShutdownConfig,
}

/// Forward-protocol listeners and the caps applied to what clients send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    /// TCP addresses (`host:port`) to accept the forward protocol on. Port 0 picks a free
    /// port (the `fwdgate ready` log line tells which). Default: `0.0.0.0:24224` when
    /// `unix` is empty too.
    pub listen: Vec<String>,
    /// Unix socket paths to accept the forward protocol on, for Docker's
    /// `fluentd-address=unix:///path`. A stale socket file is replaced.
    pub unix: Vec<PathBuf>,
    /// File mode of the unix sockets, in octal. Default `"0660"`.
    pub unix_mode: String,
    /// Answer UDP heartbeats (a datagram answered with `0x00`) on the port number of each
    /// TCP listener, as Fluentd's in_forward does. Default `true`.
    pub udp_heartbeat: bool,
    /// Largest request accepted, in bytes; a larger one (or a larger declared length)
    /// closes the connection. Default 16 MiB: above Fluentd's default 8 MiB chunks and
    /// Fluent Bit's 6 MB in_forward buffer.
    pub max_frame_size: usize,
    /// Largest decompressed CompressedPackedForward payload, in bytes. Default 64 MiB.
    pub max_decompressed_size: usize,
    /// Deepest nesting of arrays and maps in a request. Default 128.
    pub max_depth: usize,
    /// Chunk ids remembered per client (its IP address, or the unix socket path), so
    /// that a request resent after a lost ack is acked again but not published twice.
    /// 0 turns this off. Default 1024.
    pub dedup_window: usize,
    /// Clients whose chunk ids are remembered; the least recently active is forgotten
    /// first. Default 4096.
    pub dedup_clients: usize,
    /// Join the pieces Docker splits lines longer than 16 KiB into (`partial_message`,
    /// `partial_id`, `partial_ordinal`, `partial_last`) back into one line before
    /// publishing. Default `false`: pieces are published as they come.
    pub join_partial: bool,
    /// Largest joined line; past it, what was joined so far is published (marked
    /// `partial_message: "true"`). Default 1 MiB.
    pub partial_max_bytes: usize,
    /// How long to wait for the next piece before publishing what was joined
    /// (marked `partial_message: "true"`). Default 5000 ms.
    pub partial_timeout_ms: u64,
    /// Keep each client's requests (its source address, or the unix socket, and the
    /// request's tag) in the order in which their last byte arrived, also across its
    /// connections (Fluentd sends each chunk on a connection of its own, the next one
    /// before the last is acked). Default `true`.
    pub keep_client_order: bool,
    /// Listeners that speak the forward protocol over TLS.
    pub tls: TlsConfig,
    /// Source networks allowed to connect over TCP and TLS (`10.0.0.0/8`, `::1`).
    /// Empty (the default): any.
    pub allow: Vec<String>,
    /// Source networks refused over TCP and TLS, whatever `allow` says.
    pub deny: Vec<String>,
    /// Add the client's IP address to each record under this key (in the `json` and
    /// `batch` formats), as Fluentd's in_forward does. Empty (the default): not added.
    pub source_address_key: String,
    /// Add the client's host name (reverse DNS, looked up once per connection; the
    /// address when that fails) to each record under this key. Empty: not added.
    pub source_hostname_key: String,
}

/// TLS listeners (`[input.tls]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// TCP addresses accepting the forward protocol over TLS (Docker 23+
    /// `fluentd-address=tls://…`, Fluentd and Fluent Bit with TLS on). Empty: none.
    pub listen: Vec<String>,
    /// The server's certificate chain, PEM.
    pub cert_file: String,
    /// The server's private key (PKCS#8, PKCS#1 or SEC1), PEM.
    pub key_file: String,
    /// CA certificates, PEM, that client certificates must chain to (mutual TLS).
    /// Empty: clients are not asked for a certificate.
    pub client_ca_file: String,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            listen: Vec::new(),
            unix: Vec::new(),
            unix_mode: "0660".into(),
            udp_heartbeat: true,
            max_frame_size: 16 << 20,
            max_decompressed_size: 64 << 20,
            max_depth: 128,
            dedup_window: 1024,
            dedup_clients: 4096,
            join_partial: false,
            keep_client_order: true,
            partial_max_bytes: 1 << 20,
            partial_timeout_ms: 5000,
            tls: TlsConfig::default(),
            allow: Vec::new(),
            deny: Vec::new(),
            source_address_key: String::new(),
            source_hostname_key: String::new(),
        }
    }
}

/// How each record finds its tenant, service, container id and line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Record keys tried in order for the tenant; the first with a string value wins.
    /// Default `["TENANT_ID"]` (set by `--log-opt env=TENANT_ID`).
    pub tenant_keys: Vec<String>,
    /// Record keys tried in order for the service. Default `["SERVICE_ID"]`.
    pub service_keys: Vec<String>,
    /// Regex on the tag with named groups `tenant` and/or `service`, used when no
    /// record key gave a value. Empty: not used. Example: `^(?P<tenant>[^.]+)\.(?P<service>[^.]+)`.
    pub tag_regex: String,
    /// Tenant when nothing else gave one. Default `"default"`, as the reference driver.
    pub default_tenant: String,
    /// Service when nothing else gave one. Default `"default"`.
    pub default_service: String,
    /// Record keys tried in order for the line; without any, the line is the whole
    /// record as JSON. Default `["log", "message"]`.
    pub line_keys: Vec<String>,
    /// Record key holding the container id, of which the first 12 characters are used;
    /// without it the tag is used. Default `"container_id"`.
    pub container_id_key: String,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            tenant_keys: vec!["TENANT_ID".into()],
            service_keys: vec!["SERVICE_ID".into()],
            tag_regex: String::new(),
            default_tenant: "default".into(),
            default_service: "default".into(),
            line_keys: vec!["log".into(), "message".into()],
            container_id_key: "container_id".into(),
        }
    }
}

/// The shape of each ZeroMQ publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// tenant, service, `<container id>: <line>`: the reference driver's frames.
    #[default]
    Seed,
    /// tenant, service, the whole record as one JSON object.
    Json,
    /// tenant, service, the batch's events of that tenant and service as one Fluentd
    /// Forward-mode message in msgpack, `[tag, [[time, record], ...]]`.
    Batch,
    /// Publish nothing: events are accepted, counted and dropped. For measuring intake
    /// alone, like Fluentd's and Fluent Bit's null outputs.
    Null,
    /// One frame per record, as Rainbond's eventlog reads it in its `zmq` mode:
    /// `<12-character container id>,<service id><line>` (see `publish::rainbond`).
    Rainbond,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Seed => "seed",
            Format::Json => "json",
            Format::Batch => "batch",
            Format::Null => "null",
            Format::Rainbond => "rainbond",
        }
    }
}

/// What the publisher does when a subscriber reads slower than the gateway publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlowSubscriber {
    /// Past `send_hwm` messages queued for it, that subscriber misses messages (libzmq
    /// drops them for it alone, silently: no counter can see them).
    Drop,
    /// Wait for it (ZMQ_XPUB_NODROP): publishing slows to its pace, the queue fills, and
    /// clients are held back by TCP flow control. Nothing is lost, but a subscriber that
    /// stays connected without reading holds every tenant back. The default.
    #[default]
    Block,
}

/// What a connection does when the publisher queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room: the connection stops reading, its request is acked only once
    /// queued, and TCP flow control holds the client back.
    #[default]
    Block,
    /// Drop the new request (counted, and acked, so the client does not resend it).
    DropNewest,
    /// Drop the oldest queued requests (counted) to make room for the new one.
    DropOldest,
}

/// The ZeroMQ publisher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Output format: `"seed"` (default), `"json"`, `"batch"` (one msgpack Forward-mode
    /// message per tenant and service of each batch), or `"null"` (publish nothing; for
    /// measuring intake).
    pub format: Format,
    /// Endpoints the PUB socket binds (`tcp://host:port`, `ipc://path`; `tcp://host:*`
    /// picks a free port). Default `tcp://0.0.0.0:6362` when `zmq_connect` is empty too.
    pub zmq_bind: Vec<String>,
    /// Endpoints the PUB socket connects to, like the reference driver. ZeroMQ dials in
    /// the background and re-dials by itself; an absent peer does not delay start-up.
    /// A host name (`tcp://collectors:6362`) is connected at every address it resolves
    /// to, and resolved again every `resolve_interval_ms`.
    pub zmq_connect: Vec<String>,
    /// How often the host names of `zmq_connect` are resolved again, in ms: addresses
    /// that appear (a collector added to a Kubernetes headless Service or Swarm's
    /// `tasks.<service>`) are connected, and those that go are let go. Default 5000.
    /// 0: names are given to libzmq as written, which connects to one address.
    pub resolve_interval_ms: u64,
    /// Bytes appended to the tenant frame, so that a subscription to
    /// `tenant + topic_suffix` matches one tenant exactly (ZeroMQ matches prefixes).
    /// Default empty: the tenant frame is the bare tenant, as the reference driver.
    pub topic_suffix: String,
    /// ZeroMQ send high-water mark, in messages per subscriber (ZMQ_SNDHWM). Default
    /// 100000; libzmq's own default of 1000 loses messages in bursts.
    pub send_hwm: i32,
    /// Bytes of `batch` publications that may wait for one subscriber. The high-water
    /// mark counts messages, and a batch message holds up to 1 MiB (a seed message one
    /// event): in the `batch` format the mark is `batch_hwm_bytes / 1 MiB` messages (at
    /// least 1) when that is below `send_hwm`. Default 64 MiB.
    pub batch_hwm_bytes: usize,
    /// Requests that may wait for the publisher before connections stop reading.
    /// Default 1024.
    pub queue_requests: usize,
    /// Bytes of requests (decompressed) that may wait for the publisher; the other
    /// bound of the same queue. Default 64 MiB.
    pub queue_bytes: usize,
    /// What happens when the queue is full: `"block"` (default), `"drop_newest"` or
    /// `"drop_oldest"`.
    pub when_full: WhenFull,
    /// While nobody is subscribed (no subscriber connected to a bound endpoint, no
    /// collector up at a connect endpoint), hold publications in the queue, in order,
    /// and send them once a subscription arrives, instead of letting ZeroMQ discard
    /// them. Default `true`.
    pub hold_without_subscribers: bool,
    /// `"block"` (default) or `"drop"`: see [`SlowSubscriber`].
    pub slow_subscriber: SlowSubscriber,
    /// Per-tenant holds, while somebody is subscribed but not to every tenant: the
    /// events of a tenant that no subscription covers (its collector away), or whose
    /// subscribers are full (with `slow_subscriber = "block"`), wait in that tenant's
    /// hold, in order, and the other tenants go on. This bounds the bytes held (records
    /// and their bookkeeping): past it the oldest held events of tenants that no
    /// subscription covers are dropped (counted as `no_subscriber`); if what is left is
    /// held for full subscribers, the publisher takes nothing new until some goes out.
    /// Held requests stay in the queue's bytes and the spool until published. Default
    /// 32 MiB; 0 turns per-tenant holds off (a full subscriber then holds every tenant
    /// back, and ZeroMQ discards what nobody subscribes to).
    pub tenant_hold_bytes: usize,
    /// How long the events of a tenant that no subscription covers are held before they
    /// are dropped (counted as `no_subscriber`). Events of tenants whose subscribers are
    /// only full never expire. Default 60000 (one minute).
    pub tenant_hold_ms: u64,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            format: Format::Seed,
            zmq_bind: Vec::new(),
            zmq_connect: Vec::new(),
            resolve_interval_ms: 5000,
            topic_suffix: String::new(),
            send_hwm: 100_000,
            batch_hwm_bytes: 64 << 20,
            queue_requests: 1024,
            queue_bytes: 64 << 20,
            when_full: WhenFull::Block,
            hold_without_subscribers: true,
            slow_subscriber: SlowSubscriber::Block,
            tenant_hold_bytes: 32 << 20,
            tenant_hold_ms: 60_000,
        }
    }
}

/// The gateway's own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `"text"` (default) or `"json"` (one JSON object per line).
    pub format: LogFormat,
    /// `error`, `warn`, `info` (default), `debug` or `trace`; also accepts a
    /// tracing filter such as `fwdgate=debug`.
    pub level: String,
    /// File to append the log to, reopened on SIGHUP (for logrotate). Empty (the
    /// default): standard error.
    pub file: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
            file: String::new(),
        }
    }
}

/// The operations endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address (`host:port`) of the HTTP endpoint serving `/metrics` (Prometheus text),
    /// `/healthz` and `/readyz`. Empty (the default): no endpoint.
    pub listen: String,
    /// Tenants that get their own `fwdgate_tenant_events_total` series; events of any
    /// further tenants are summed under `tenant="_other"`. Default 1000.
    pub max_tenants: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: String::new(),
            max_tenants: 1000,
        }
    }
}

/// When the spool syncs its writes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// Before every ack (one sync covers all requests written together).
    #[default]
    Always,
    /// At most every `fsync_interval_ms`: a machine crash may lose that much.
    Interval,
    /// Leave it to the operating system: survives a crash of the gateway, not of the
    /// machine.
    Never,
}

/// The optional disk spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool segments. Empty (the default): no spool. With a spool,
    /// each accepted request is written here before it is acked, and what was not yet
    /// published when the gateway stopped or crashed is published on the next start.
    pub dir: String,
    /// `"always"` (default), `"interval"` or `"never"`.
    pub fsync: Fsync,
    /// The interval for `fsync = "interval"`. Default 1000 ms.
    pub fsync_interval_ms: u64,
    /// Size at which a new segment file is started; a segment is deleted once all of
    /// its requests are published. Default 64 MiB (at most an eighth of `max_bytes`).
    pub segment_bytes: u64,
    /// The most bytes the spool may take on disk. Up to it the gateway keeps accepting
    /// (and acking) while no subscriber takes what it holds; past it `output.when_full`
    /// applies. 0: no bound but the disk's (a full disk refuses requests: not acked,
    /// the client resends). Default 4 GiB.
    pub max_bytes: u64,
    /// How often, at most, the position up to which the spool is published is written
    /// down; after a crash, a restart publishes again what was published since (and in
    /// the second before). Default 1000 ms.
    pub checkpoint_interval_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: String::new(),
            fsync: Fsync::Always,
            fsync_interval_ms: 1000,
            segment_bytes: 64 << 20,
            max_bytes: 4 << 30,
            checkpoint_interval_ms: 1000,
        }
    }
}

/// Limits against abuse of an open port. 0 turns a limit off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections open at once, over all listeners. Default 0 (no limit).
    pub max_connections: u64,
    /// Connections open at once from one source address. Default 0 (no limit).
    pub max_connections_per_source: u64,
    /// Close a connection that sent nothing for this long. Default 0 (never: Docker
    /// keeps a quiet container's connection open).
    pub idle_timeout_ms: u64,
    /// A request that has begun must arrive whole within this long (slow-sender
    /// protection). Default 60000 ms.
    pub request_timeout_ms: u64,
    /// Events per second each tenant may publish; events over it are dropped and
    /// counted per tenant, so one noisy tenant cannot starve the others. Default 0
    /// (no limit).
    pub tenant_events_per_second: u64,
    /// Events a tenant may publish at once above its rate (the bucket's size; at least
    /// the rate). Default 0: the rate.
    pub tenant_burst: u64,
    /// Memory all clients together may make the gateway hold for requests still
    /// arriving or being expanded: read buffers above 128 KiB per connection, room for
    /// a request's declared rest, and decompressed entries. A connection that finds no
    /// room waits without reading (TCP slows its client). At least
    /// `input.max_frame_size` + `input.max_decompressed_size` + 8 MiB (zstd's window),
    /// so that any one request fits. Default 128 MiB; 0: no budget.
    pub intake_memory_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 0,
            max_connections_per_source: 0,
            idle_timeout_ms: 0,
            request_timeout_ms: 60_000,
            tenant_events_per_second: 0,
            tenant_burst: 0,
            intake_memory_bytes: 128 << 20,
        }
    }
}

/// The forward protocol's handshake (HELO/PING/PONG), as Fluentd's `<security>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Shared key every client must prove it knows. Empty (the default): no handshake.
    pub shared_key: String,
    /// Host name the server gives in its PONG. Empty: this machine's host name.
    pub self_hostname: String,
    /// Require a username and password from `users` as well. Default `false`.
    pub user_auth: bool,
    /// Users for `user_auth`.
    pub users: Vec<UserConfig>,
    /// Accept clients that match no entry of `clients` (with the global key).
    /// Default `true`.
    pub allow_anonymous_source: bool,
    /// Per-client settings, by source network: the first match wins.
    pub clients: Vec<ClientConfig>,
    /// How long a client may take to complete the handshake. Default 5000 ms.
    pub handshake_timeout_ms: u64,
    /// Announce `keepalive: false` in the HELO and close each connection after its
    /// first request, as Fluentd's `deny_keepalive`. Default `false`.
    pub deny_keepalive: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            shared_key: String::new(),
            self_hostname: String::new(),
            user_auth: false,
            users: Vec::new(),
            allow_anonymous_source: true,
            clients: Vec::new(),
            handshake_timeout_ms: 5000,
            deny_keepalive: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Source address or network, like `10.1.2.3` or `10.0.0.0/8`.
    #[serde(default)]
    pub network: String,
    /// Or the client's host name, as its address resolves by reverse DNS.
    #[serde(default)]
    pub host: String,
    /// This client's own shared key; empty: the global one.
    #[serde(default)]
    pub shared_key: String,
}

/// Graceful shutdown on SIGTERM or SIGINT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long connections may take to finish the requests they have read; then how
    /// long the publisher may wait for a subscriber to take what it holds, and again
    /// for its socket to flush. Default 5000 ms.
    pub timeout_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { timeout_ms: 5000 }
    }
}

impl Config {
    /// Reads a TOML file; unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source: Box::new(source),
        })
    }

    /// Fills in the defaults that depend on other fields and checks every value.
    pub fn finalize(mut self) -> Result<Config, ConfigError> {
        if self.input.listen.is_empty()
            && self.input.unix.is_empty()
            && self.input.tls.listen.is_empty()
        {
            self.input.listen.push(DEFAULT_LISTEN.into());
        }
        if self.output.zmq_bind.is_empty() && self.output.zmq_connect.is_empty() {
            self.output.zmq_bind.push(DEFAULT_ZMQ_BIND.into());
        }
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |key: &'static str, message: String| Err(ConfigError::Invalid { key, message });
        let tls = &self.input.tls;
        if !tls.listen.is_empty() && (tls.cert_file.is_empty() || tls.key_file.is_empty()) {
            return invalid(
                "input.tls",
                "input.tls.listen needs input.tls.cert_file and input.tls.key_file".into(),
            );
        }
        for addr in self.input.listen.iter().chain(&tls.listen) {
            if addr
                .to_socket_addrs()
                .map(|mut a| a.next().is_none())
                .unwrap_or(true)
            {
                return invalid(
                    "input.listen",
                    format!("input.listen: {addr:?} is not a host:port address"),
                );
            }
        }
        self.unix_mode()?;
        let metrics = &self.metrics.listen;
        if !metrics.is_empty()
            && metrics
                .to_socket_addrs()
                .map(|mut a| a.next().is_none())
                .unwrap_or(true)
        {
            return invalid(
                "metrics.listen",
                format!("metrics.listen: {metrics:?} is not a host:port address"),
            );
        }
        if self.input.max_frame_size < 64 {
            return invalid(
                "input.max_frame_size",
                "input.max_frame_size must be at least 64 bytes".into(),
            );
        }
        if self.input.max_decompressed_size == 0 {
            return invalid(
                "input.max_decompressed_size",
                "input.max_decompressed_size must be above 0".into(),
            );
        }
        // Events point into their request's bytes with 32-bit offsets, and the requests
        // of one read (or a joined line and its record) may share one buffer: 1 GiB
        // each keeps every offset well within 4 GiB.
        for (key, size) in [
            ("input.max_frame_size", self.input.max_frame_size),
            (
                "input.max_decompressed_size",
                self.input.max_decompressed_size,
            ),
            ("input.partial_max_bytes", self.input.partial_max_bytes),
        ] {
            if size > MAX_REQUEST_BYTES {
                return invalid(
                    key,
                    format!("{key} ({size}) must be at most {MAX_REQUEST_BYTES} (1 GiB)"),
                );
            }
        }
        let one_request = (self.input.max_frame_size as u64)
            .saturating_add(self.input.max_decompressed_size as u64)
            .saturating_add(crate::forward::compression::ZSTD_WINDOW as u64);
        if self.limits.intake_memory_bytes != 0 && self.limits.intake_memory_bytes < one_request {
            return invalid(
                "limits.intake_memory_bytes",
                format!(
                    "limits.intake_memory_bytes ({}) must be 0 (no budget) or at least \
                 input.max_frame_size + input.max_decompressed_size + 8 MiB (zstd's window) \
                 = {one_request}, so that the largest request fits",
                    self.limits.intake_memory_bytes
                ),
            );
        }
        if self.input.max_depth < 4 {
            return invalid(
                "input.max_depth",
                "input.max_depth must be at least 4 (a request nests 4 deep)".into(),
            );
        }
        if !self.route.tag_regex.is_empty() {
            let re = regex::bytes::Regex::new(&self.route.tag_regex).map_err(|e| {
                ConfigError::Invalid {
                    key: "route.tag_regex",
                    message: format!("route.tag_regex: {e}"),
                }
            })?;
            let names: Vec<_> = re.capture_names().flatten().collect();
            if !names.contains(&"tenant") && !names.contains(&"service") {
                return invalid(
                    "route.tag_regex",
                    "route.tag_regex needs a named group `tenant` or `service`".into(),
                );
            }
        }
        if self.output.format == Format::Rainbond && !self.output.topic_suffix.is_empty() {
            return invalid(
                "output.topic_suffix",
                "output.topic_suffix cannot be used with output.format = \"rainbond\": its \
                 messages have no tenant frame to append it to"
                    .into(),
            );
        }
        let container = std::slice::from_ref(&self.route.container_id_key);
        for (key, list) in [
            ("route.tenant_keys", &self.route.tenant_keys[..]),
            ("route.service_keys", &self.route.service_keys[..]),
            ("route.line_keys", &self.route.line_keys[..]),
            ("route.container_id_key", container),
        ] {
            for path in list {
                if let Err(e) = crate::route::KeyPath::parse(path) {
                    return invalid(key, format!("{key}: {path:?} is not a valid key path: {e}"));
                }
            }
        }
        let endpoints = (self.output.zmq_bind.iter().map(|e| ("output.zmq_bind", e))).chain(
            self.output
                .zmq_connect
                .iter()
                .map(|e| ("output.zmq_connect", e)),
        );
        for (key, ep) in endpoints {
            if !ep.contains("://") {
                return invalid(
                    key,
                    format!("ZeroMQ endpoint {ep:?} needs a transport, like tcp://host:port"),
                );
            }
        }
        let sec = &self.security;
        if sec.shared_key.is_empty() && (sec.user_auth || !sec.clients.is_empty()) {
            return invalid(
                "security.user_auth",
                "security.user_auth and security.clients need security.shared_key".into(),
            );
        }
        if sec.user_auth && sec.users.is_empty() {
            return invalid(
                "security.user_auth",
                "security.user_auth needs at least one entry in security.users".into(),
            );
        }
        let networks = (self.input.allow.iter().map(|n| ("input.allow", n)))
            .chain(self.input.deny.iter().map(|n| ("input.deny", n)));
        for (key, net) in networks {
            if parse_network(net).is_none() {
                return invalid(
                    key,
                    format!("input.allow/deny: {net:?} is not an address or network"),
                );
            }
        }
        for client in &sec.clients {
            if client.network.is_empty() == client.host.is_empty() {
                return invalid(
                    "security.clients",
                    "each security.clients entry needs either network or host".into(),
                );
            }
            if !client.network.is_empty() && parse_network(&client.network).is_none() {
                return invalid(
                    "security.clients",
                    format!(
                        "security.clients: {:?} is not an address or network like 10.0.0.0/8",
                        client.network
                    ),
                );
            }
        }
        if self.output.send_hwm < 0 {
            return invalid(
                "output.send_hwm",
                "output.send_hwm must be 0 (no limit) or more".into(),
            );
        }
        if self.output.queue_requests == 0 {
            return invalid(
                "output.queue_requests",
                "output.queue_requests must be above 0".into(),
            );
        }
        if self.output.queue_bytes == 0 || self.output.queue_bytes > u32::MAX as usize {
            return invalid(
                "output.queue_bytes",
                "output.queue_bytes must be between 1 and 4294967295".into(),
            );
        }
        if self.spool.segment_bytes < 4096 {
            return invalid(
                "spool.segment_bytes",
                "spool.segment_bytes must be at least 4096".into(),
            );
        }
        if self.spool.checkpoint_interval_ms == 0 || self.spool.fsync_interval_ms == 0 {
            return invalid(
                "spool.checkpoint_interval_ms",
                "spool.checkpoint_interval_ms and spool.fsync_interval_ms must be above 0".into(),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return invalid(
                "log.level",
                format!("log.level: {:?} is not a level", self.log.level),
            );
        }
        Ok(())
    }

    /// `security.clients`, with networks parsed and host names lower-cased.
    pub fn client_matches(&self) -> Vec<(ClientMatch, String)> {
        self.security
            .clients
            .iter()
            .filter_map(|c| {
                let m = if c.host.is_empty() {
                    ClientMatch::Network(parse_network(&c.network)?)
                } else {
                    ClientMatch::Host(c.host.to_ascii_lowercase())
                };
                Some((m, c.shared_key.clone()))
            })
            .collect()
    }

    /// `input.unix_mode` as a number.
    pub fn unix_mode(&self) -> Result<u32, ConfigError> {
        u32::from_str_radix(self.input.unix_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| ConfigError::Invalid {
                key: "input.unix_mode",
                message: format!(
                    "input.unix_mode: {:?} is not an octal file mode like \"0660\"",
                    self.input.unix_mode
                ),
            })
    }

    /// The effective configuration as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// How a `security.clients` entry recognises a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMatch {
    Network(ipnet::IpNet),
    /// A host name, compared case-insensitively with the client's reverse DNS name.
    Host(String),
}

/// An address (a network of one) or a network in CIDR notation.
pub(crate) fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in() {
        let c = Config::default().finalize().unwrap();
        assert_eq!(c.input.listen, [DEFAULT_LISTEN]);
        assert_eq!(c.output.zmq_bind, [DEFAULT_ZMQ_BIND]);
        assert_eq!(c.unix_mode().unwrap(), 0o660);
    }

    #[test]
    fn connect_only_does_not_bind() {
        let mut c = Config::default();
        c.output.zmq_connect.push("tcp://127.0.0.1:1".into());
        assert!(c.finalize().unwrap().output.zmq_bind.is_empty());
    }

    #[test]
    fn a_malformed_key_path_names_its_key_and_position() {
        let mut c = Config::default();
        c.route.service_keys = vec!["SERVICE_ID".into(), "$.kubernetes..labels".into()];
        match c.finalize() {
            Err(ConfigError::Invalid { key, message }) => {
                assert_eq!(key, "route.service_keys");
                assert_eq!(
                    message,
                    "route.service_keys: \"$.kubernetes..labels\" is not a valid key path: \
                     empty key name at character 14"
                );
            }
            other => panic!("{other:?}"),
        }
        let mut c = Config::default();
        c.route.container_id_key = "$['kubernetes'".into();
        assert!(matches!(
            c.finalize(),
            Err(ConfigError::Invalid {
                key: "route.container_id_key",
                ..
            })
        ));
        let mut c = Config::default();
        c.route.tenant_keys = vec!["$.kubernetes.namespace_name".into()];
        c.route.line_keys = vec!["$['kubernetes']['labels']['app.kubernetes.io/name']".into()];
        assert!(c.finalize().is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Config::from_toml("[input]\nlisen = []").is_err());
        assert!(Config::from_toml("[output]\nformat = \"xml\"").is_err());
        let mut c = Config::default();
        c.route.tag_regex = "^(?P<x>.*)".into();
        assert!(matches!(
            c.finalize(),
            Err(ConfigError::Invalid {
                key: "route.tag_regex",
                ..
            })
        ));
    }

    #[test]
    fn example_file_is_valid_and_complete() {
        let text = include_str!("../examples/fwdgate.toml");
        let parsed = Config::from_toml(text).unwrap().finalize().unwrap();
        // The example documents the defaults: loading it changes nothing but the
        // fields `finalize` fills in.
        assert_eq!(parsed, Config::default().finalize().unwrap());
    }

    #[test]
    fn sizes_stay_within_what_an_event_offset_holds() {
        let mut c = Config::default();
        c.input.max_frame_size = MAX_REQUEST_BYTES;
        c.limits.intake_memory_bytes = 0;
        assert!(c.clone().finalize().is_ok());
        let refused = |c: &Config| match c.clone().finalize() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        c.input.max_frame_size = MAX_REQUEST_BYTES + 1;
        assert_eq!(refused(&c), "input.max_frame_size");
        c.input.max_frame_size = 1 << 20;
        c.input.max_decompressed_size = 5 << 30;
        assert_eq!(refused(&c), "input.max_decompressed_size");
        c.input.max_decompressed_size = 1 << 20;
        c.input.partial_max_bytes = usize::MAX;
        assert_eq!(refused(&c), "input.partial_max_bytes");
    }

    #[test]
    fn the_intake_budget_must_hold_the_largest_request() {
        let mut c = Config::default();
        c.input.max_frame_size = 1 << 20;
        c.input.max_decompressed_size = 1 << 20;
        c.limits.intake_memory_bytes = (10 << 20) - 1;
        assert!(matches!(
            c.clone().finalize(),
            Err(ConfigError::Invalid {
                key: "limits.intake_memory_bytes",
                ..
            })
        ));
        c.limits.intake_memory_bytes = 10 << 20;
        assert!(c.clone().finalize().is_ok());
        c.limits.intake_memory_bytes = 0;
        assert!(c.finalize().is_ok(), "0 turns the budget off");
    }

    #[test]
    fn printed_config_round_trips() {
        let c = Config::default().finalize().unwrap();
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }
}
