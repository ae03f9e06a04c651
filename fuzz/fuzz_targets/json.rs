//! JSON requests: `next_json_request` over arbitrary bytes, as a connection that
//! started with `[` or `{` uses it.
//!
//! Invariants: no panic; every `Some` consumes at least one byte and no more than it
//! was given; every non-empty frame is exactly one complete msgpack value that
//! `decode_request` may reject but never panics on; feeding the bytes in pieces (as
//! reads deliver them) yields the same frames as feeding them whole, up to the first
//! top-level number, `true`, `false` or `null`: those have no closing delimiter, so a
//! read boundary can end one early (`12|3`), make it valid before the bytes that would
//! have made it an error (`null|x`), or end a number that is still incomplete at the
//! end of the input (`7|0.`).

#![no_main]

use fwdgate::forward::json::next_json_request;
use fwdgate::forward::{decode_request, Limits, Scanner};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
enum End {
    Done,
    Incomplete,
    Failed,
    /// Stopped at a top-level value without a closing delimiter.
    Undelimited,
}

/// Arrays, maps and strings (array32, map32, str32 as re-encoded) end with a delimiter.
fn undelimited(frame: &[u8]) -> bool {
    !matches!(frame.first(), Some(0xdd | 0xdf | 0xdb))
}

fn check_frame(frame: &[u8]) {
    let mut s = Scanner::new(Limits {
        max_size: usize::MAX,
        max_depth: usize::MAX,
    });
    assert_eq!(s.scan(frame), Ok(Some(frame.len())), "frame {frame:02x?}");
    let _ = decode_request(frame);
}

/// Frames found when `avail` grows by `piece()` bytes whenever more are needed.
fn frames(data: &[u8], piece: &mut dyn FnMut() -> usize) -> (Vec<Vec<u8>>, End) {
    let mut found = Vec::new();
    let mut off = 0;
    let mut avail = 0;
    loop {
        if off == avail {
            if avail == data.len() {
                return (found, End::Done);
            }
            avail = avail.saturating_add(piece()).min(data.len());
        }
        match next_json_request(&data[off..avail]) {
            Ok(Some((used, frame))) => {
                assert!(
                    used > 0 && used <= avail - off,
                    "used {used} of {}",
                    avail - off
                );
                off += used;
                if frame.is_empty() {
                    continue;
                }
                check_frame(&frame);
                if undelimited(&frame) {
                    return (found, End::Undelimited);
                }
                found.push(frame);
            }
            Ok(None) => {
                if avail == data.len() {
                    return (found, End::Incomplete);
                }
                avail = avail.saturating_add(piece()).min(data.len());
            }
            Err(_) => return (found, End::Failed),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = frames(data, &mut || usize::MAX);
    // Pieces of 1..=16 bytes, sized from the input so a crash reproduces from it.
    let mut state = data.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        1 + (state % 16) as usize
    };
    let pieces = frames(data, &mut next);
    if whole.1 == End::Undelimited || pieces.1 == End::Undelimited {
        // What follows such a value depends on where the reads ended; the frames
        // before it may not.
        assert_eq!(pieces.0, whole.0, "pieces differ from whole");
    } else {
        assert_eq!(pieces, whole, "pieces differ from whole");
    }
});
