//! The `rainbond` format: one single-frame message per record, laid out as Rainbond's
//! eventlog reads it in its `zmq` mode (`api/eventlog/store/manager.go`,
//! `handleDockerLog`), the layout goodrain's own Docker driver wrote:
//!
//! ```text
//! bytes 0..12    the container id's first 12 characters (right-padded with spaces
//!                when shorter, e.g. a short tag standing in for it)
//! byte  12       ','
//! bytes 13..     the service id, then the line, with nothing between them
//! ```
//!
//! The eventlog takes bytes 13..45 as the service id (32 characters, Rainbond's
//! component ids), or, when those bytes contain one of its own components' names
//! (`rbd-api`, `rbd-worker`, `rbd-gateway`, `rbd-chaos`), that name; the line is what
//! follows it. Any other service id would be cut into a wrong one, and its line filed
//! under it: such a record is not published but dropped, counted under the reason
//! `rainbond_service_id`, with a warning naming the service id. The eventlog also
//! ignores every message shorter than 47 bytes (so a line of 0 or 1 byte under a
//! 32-character id): those are published as they are, and Rainbond drops them.
//! A line is published as it came, newlines and all.

/// Length of the container id prefix.
pub const CONTAINER_ID_LEN: usize = 12;

/// Length of a Rainbond service (component) id: 32 hex characters.
pub const SERVICE_ID_LEN: usize = 32;

/// Rainbond's own components, which its eventlog recognises by name.
pub const SYSTEM_SERVICES: [&[u8]; 4] = [b"rbd-api", b"rbd-worker", b"rbd-gateway", b"rbd-chaos"];

/// True when the eventlog reads `service` back as it is.
pub fn publishable_service(service: &[u8]) -> bool {
    service.len() == SERVICE_ID_LEN || SYSTEM_SERVICES.contains(&service)
}

/// Length of the message for `service` and `line`.
pub fn message_len(service: &[u8], line: &[u8]) -> usize {
    CONTAINER_ID_LEN + 1 + service.len() + line.len()
}

/// Writes the message into `buf`, of exactly [`message_len`] bytes.
pub fn write_message(buf: &mut [u8], container: &[u8], service: &[u8], line: &[u8]) {
    let (id, rest) = buf.split_at_mut(CONTAINER_ID_LEN);
    let container = &container[..container.len().min(CONTAINER_ID_LEN)];
    id[..container.len()].copy_from_slice(container);
    id[container.len()..].fill(b' ');
    let (comma, rest) = rest.split_at_mut(1);
    comma[0] = b',';
    let (svc, text) = rest.split_at_mut(service.len());
    svc.copy_from_slice(service);
    text.copy_from_slice(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(container: &[u8], service: &[u8], line: &[u8]) -> Vec<u8> {
        let mut buf = vec![0; message_len(service, line)];
        write_message(&mut buf, container, service, line);
        buf
    }

    /// What the eventlog's `handleDockerLog` does with a message: container id, service
    /// id and line, or `None` where it drops the message.
    fn eventlog_reads(m: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
        if m.len() < 47 {
            return None;
        }
        let container = &m[0..12];
        let mut service = &m[13..45];
        for name in SYSTEM_SERVICES {
            if service.windows(name.len()).any(|w| w == name) {
                service = name;
            }
        }
        Some((container, service, &m[13 + service.len()..]))
    }

    #[test]
    fn the_eventlog_reads_back_what_was_written() {
        let service = b"0123456789abcdef0123456789abcdef";
        let m = message(b"4f1c8a1e2b3c", service, b"GET / 200\nnext");
        assert_eq!(&m[..14], b"4f1c8a1e2b3c,0");
        assert_eq!(
            eventlog_reads(&m),
            Some((&b"4f1c8a1e2b3c"[..], &service[..], &b"GET / 200\nnext"[..]))
        );
        let line = b"a line long enough for the slice to hold the name";
        let m = message(b"abc", b"rbd-gateway", line);
        assert_eq!(&m[..13], b"abc         ,");
        assert_eq!(
            eventlog_reads(&m),
            Some((&b"abc         "[..], &b"rbd-gateway"[..], &line[..]))
        );
        // A longer container id is cut to its first 12 characters.
        let m = message(b"0123456789abcdef", service, b"xy");
        assert_eq!(eventlog_reads(&m).map(|r| r.0), Some(&b"0123456789ab"[..]));
        // 45 bytes of header and a 1-byte line: the eventlog drops it.
        assert_eq!(eventlog_reads(&message(b"c", service, b"x")), None);
    }

    #[test]
    fn only_ids_the_eventlog_can_cut_out_are_publishable() {
        assert!(publishable_service(&[b'a'; 32]));
        for name in SYSTEM_SERVICES {
            assert!(publishable_service(name));
        }
        assert!(!publishable_service(b"default"));
        assert!(!publishable_service(&[b'a'; 31]));
        assert!(!publishable_service(&[b'a'; 33]));
        assert!(!publishable_service(b""));
    }
}
