//! fwdgate: a Fluentd forward protocol gateway that republishes every record as a
//! tenant-tagged ZeroMQ publication.
//!
//! `forward` is the protocol without I/O; `server` does the I/O; `route` decides where
//! each record goes; `buffer` holds what is accepted until it is published (memory,
//! then the disk spool); `publish` owns the ZeroMQ socket. `proxy` is a separate
//! program in the same binary: libzmq's XSUB/XPUB proxy between gateways and their
//! subscribers.

pub mod buffer;
pub mod cli;
pub mod config;
pub mod dedup;
pub mod event;
pub mod expand;
pub mod forward;
pub mod http_endpoint;
pub mod logfile;
pub mod metrics;
pub mod partial;
pub mod proxy;
pub mod publish;
pub mod route;
pub mod server;
pub mod sync;
pub mod tail;
