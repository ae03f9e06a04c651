//! The Fluentd forward protocol, pure: no I/O here. Frame scanning, request modes, event
//! time, compression, JSON requests and ack encoding.

pub mod ack;
pub mod compression;
pub mod handshake;
pub mod json;
pub mod msgpack;
pub mod msgpack_write;
pub mod request;
pub mod scan;
pub mod time;
pub mod to_json;

pub use request::{decode_request, Compression, Entries, Event, EventError, Request, RequestError};
pub use scan::{Limits, ScanError, Scanner};
pub use time::EventTime;
