//! JSON requests: `JsonScanner` over arbitrary bytes, as a connection that started with
//! `[` or `{` uses it, then `json_to_msgpack` on each value it finds.
//!
//! Invariants: no panic; feeding the bytes in pieces (as reads deliver them) finds the
//! same values as feeding them whole; every value found starts with `[` or `{` and ends
//! with `]` or `}`; every value that parses becomes exactly one complete msgpack value
//! that `decode_request` may reject but never panics on.

#![no_main]

use fwdgate::forward::json::{json_to_msgpack, JsonScanner};
use fwdgate::forward::{decode_request, Limits, Scanner};
use libfuzzer_sys::fuzz_target;
use std::ops::Range;

const MAX: usize = 1 << 16;

/// Values found (as absolute ranges) when the visible input grows by `piece()` bytes
/// whenever more are needed; `true` when the scan ended in an error.
fn values(data: &[u8], piece: &mut dyn FnMut() -> usize) -> (Vec<Range<usize>>, bool) {
    let mut scanner = JsonScanner::new(MAX);
    let mut found = Vec::new();
    let mut off = 0;
    let mut avail = 0;
    loop {
        match scanner.scan(&data[off..avail]) {
            Ok(Some(r)) => {
                found.push(off + r.start..off + r.end);
                off += r.end;
            }
            Ok(None) if avail == data.len() => return (found, false),
            Ok(None) => avail = avail.saturating_add(piece().max(1)).min(data.len()),
            Err(_) => return (found, true),
        }
    }
}

fn check_value(value: &[u8]) {
    assert!(matches!(value.first(), Some(b'[' | b'{')), "{value:?}");
    assert!(matches!(value.last(), Some(b']' | b'}')), "{value:?}");
    if let Ok(frame) = json_to_msgpack(value) {
        let mut s = Scanner::new(Limits {
            max_size: usize::MAX,
            max_depth: usize::MAX,
        });
        assert_eq!(s.scan(&frame), Ok(Some(frame.len())), "frame {frame:02x?}");
        let _ = decode_request(&frame);
    }
}

fuzz_target!(|data: &[u8]| {
    let (whole, whole_failed) = values(data, &mut || usize::MAX);
    for r in &whole {
        check_value(&data[r.clone()]);
    }
    // Piece sizes drawn from the input itself, so the fuzzer explores them too.
    let mut sizes = data.iter().cycle().map(|&b| usize::from(b % 17) + 1);
    let (pieces, pieces_failed) = values(data, &mut || sizes.next().unwrap_or(1));
    assert_eq!(whole, pieces, "whole vs piecewise");
    assert_eq!(whole_failed, pieces_failed);
});
