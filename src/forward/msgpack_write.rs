//! Writing msgpack: the headers of strings, binaries, arrays and maps, and unsigned
//! integers, each in its smallest form; the one writer every encoder uses (the `batch`
//! body, JSON requests re-encoded, joined lines, the decode bench's inputs). `msgpack`
//! reads; this writes.

/// A msgpack header (type byte and big-endian length), at most 5 bytes, on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    bytes: [u8; 5],
    len: u8,
}

impl Head {
    /// A header whose length is in its type byte (fixstr, fixarray, fixmap).
    fn fix(byte: u8) -> Head {
        Head {
            bytes: [byte, 0, 0, 0, 0],
            len: 1,
        }
    }

    /// A type byte followed by the length in `width` bytes (1, 2 or 4).
    fn sized(byte: u8, n: u32, width: usize) -> Head {
        let mut bytes = [byte, 0, 0, 0, 0];
        bytes[1..1 + width].copy_from_slice(&n.to_be_bytes()[4 - width..]);
        Head {
            bytes,
            len: 1 + width as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn size(&self) -> usize {
        usize::from(self.len)
    }
}

/// The header of a string of `len` bytes: fixstr, str8, str16 or str32. Lengths here
/// come from spans of a batch, which are 32-bit.
pub fn str_head(len: usize) -> Head {
    let n = u32::try_from(len).unwrap_or(u32::MAX);
    match n {
        0..=31 => Head::fix(0xa0 | n as u8),
        32..=0xff => Head::sized(0xd9, n, 1),
        0x100..=0xffff => Head::sized(0xda, n, 2),
        _ => Head::sized(0xdb, n, 4),
    }
}

/// The header of an array of `n` items: fixarray, array16 or array32.
pub fn array_head(n: usize) -> Head {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    match n {
        0..=15 => Head::fix(0x90 | n as u8),
        16..=0xffff => Head::sized(0xdc, n, 2),
        _ => Head::sized(0xdd, n, 4),
    }
}

/// The header of a map of `n` entries: fixmap, map16 or map32.
pub fn map_head(n: u32) -> Head {
    match n {
        0..=15 => Head::fix(0x80 | n as u8),
        16..=0xffff => Head::sized(0xde, n, 2),
        _ => Head::sized(0xdf, n, 4),
    }
}

/// The header of a binary of `len` bytes: bin8, bin16 or bin32.
pub fn bin_head(len: usize) -> Head {
    let n = u32::try_from(len).unwrap_or(u32::MAX);
    match n {
        0..=0xff => Head::sized(0xc4, n, 1),
        0x100..=0xffff => Head::sized(0xc5, n, 2),
        _ => Head::sized(0xc6, n, 4),
    }
}

/// Writes `n` as the smallest unsigned integer: positive fixint, uint8 to uint64.
pub fn write_uint(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=0x7f => out.push(n as u8),
        0x80..=0xff => out.extend_from_slice(&[0xcc, n as u8]),
        0x100..=0xffff => {
            out.push(0xcd);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xce);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(0xcf);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header rmpv writes for a value of each kind and size, to check ours against.
    fn rmpv_head(v: &rmpv::Value, payload: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, v).unwrap();
        bytes[..bytes.len() - payload].to_vec()
    }

    #[test]
    fn integers_in_their_smallest_form() {
        for n in [
            0u64,
            127,
            128,
            255,
            256,
            65535,
            65536,
            0xffff_ffff,
            0x1_0000_0000,
            u64::MAX,
        ] {
            let mut ours = Vec::new();
            write_uint(&mut ours, n);
            let mut theirs = Vec::new();
            rmpv::encode::write_value(&mut theirs, &rmpv::Value::from(n)).unwrap();
            assert_eq!(ours, theirs, "{n}");
        }
    }

    #[test]
    fn headers_at_every_size_boundary() {
        for n in [0usize, 1, 15, 16, 31, 32, 255, 256, 65535, 65536] {
            let s = rmpv::Value::String("x".repeat(n).into());
            assert_eq!(str_head(n).as_bytes(), rmpv_head(&s, n), "str {n}");
            let a = rmpv::Value::Array(vec![rmpv::Value::Nil; n]);
            assert_eq!(array_head(n).as_bytes(), rmpv_head(&a, n), "array {n}");
            let m = rmpv::Value::Map(vec![(rmpv::Value::Nil, rmpv::Value::Nil); n]);
            assert_eq!(
                map_head(n as u32).as_bytes(),
                rmpv_head(&m, 2 * n),
                "map {n}"
            );
            let b = rmpv::Value::Binary(vec![0; n]);
            assert_eq!(bin_head(n).as_bytes(), rmpv_head(&b, n), "bin {n}");
        }
    }
}
