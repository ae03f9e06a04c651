//! Capped decompression of arbitrary input, gzip and zstd alike.
//!
//! The first byte of the input picks the cap (0..=4080 bytes, in steps of 16); the rest
//! is decompressed with both codecs. Invariants: no panic, and never more than the cap
//! comes back; a stream that succeeds under a cap succeeds identically under a larger
//! one.

#![no_main]

use fwdgate::forward::compression::{decompress, DecompressError};
use fwdgate::forward::Compression;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let cap = usize::from(first) * 16;
    for codec in [Compression::Gzip, Compression::Zstd] {
        match decompress(codec, input, cap) {
            Ok(out) => {
                assert!(
                    out.len() <= cap,
                    "{codec:?}: {} bytes over the cap of {cap}",
                    out.len()
                );
                let again = decompress(codec, input, cap + 4096).expect("a larger cap succeeds");
                assert_eq!(out, again, "{codec:?}: output depends on the cap");
            }
            Err(DecompressError::TooLarge(c)) => assert_eq!(c, cap),
            Err(DecompressError::Corrupt { .. }) => {}
        }
    }
});
