//! The ack a server owes for a request that carried `option.chunk`.

/// Encodes `{"ack": <chunk>}` in msgpack, with the chunk value's own bytes (header
/// included) copied as received, so the client sees exactly the id it sent.
pub fn encode_ack(chunk_value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + chunk_value.len());
    out.extend_from_slice(&[0x81, 0xa3, b'a', b'c', b'k']);
    out.extend_from_slice(chunk_value);
    out
}

/// Encodes `{"ack":<chunk>}` as JSON, for connections that speak JSON: Fluentd's
/// in_forward answers each connection in the serialization it used. `chunk_json` is the
/// chunk value already rendered as JSON.
pub fn encode_json_ack(chunk_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + chunk_json.len());
    out.extend_from_slice(b"{\"ack\":");
    out.extend_from_slice(chunk_json);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ack_bytes() {
        assert_eq!(
            super::encode_ack(&[0xa2, b'i', b'd']),
            [0x81, 0xa3, b'a', b'c', b'k', 0xa2, b'i', b'd']
        );
    }
}
