//! The scanner over arbitrary bytes, fed whole and in pieces of pseudo-random sizes.
//!
//! Invariants: feeding the same bytes in pieces (resuming after every `Ok(None)`, as a
//! connection does between reads) finds exactly the values, the final state and the
//! error that scanning the whole buffer at once finds; every value found is one that
//! the cursor's `skip` agrees spans exactly that many bytes; `progress` never runs past
//! the bytes given.

#![no_main]

use fwdgate::forward::msgpack::Cursor;
use fwdgate::forward::{Limits, ScanError, Scanner};
use libfuzzer_sys::fuzz_target;

/// Small caps, so that both are within the fuzzer's reach.
const LIMITS: Limits = Limits {
    max_size: 1 << 16,
    max_depth: 32,
};

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Every byte belonged to a complete value.
    Done,
    /// The last value is incomplete.
    Incomplete,
    Failed(ScanError),
}

/// Piece sizes derived from the input itself, so that a crash reproduces from the
/// input alone: mostly small (1..=16 bytes), sometimes larger.
struct Pieces(u64);

impl Pieces {
    fn new(data: &[u8]) -> Pieces {
        // FNV-1a of the input, never zero.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Pieces(h | 1)
    }

    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        match self.0 % 8 {
            0 => 1 + (self.0 >> 8) as usize % 512,
            _ => 1 + (self.0 >> 8) as usize % 16,
        }
    }
}

/// Checks one value the scanner returned against the cursor.
fn check_value(value: &[u8]) {
    assert!(!value.is_empty(), "empty value");
    let mut c = Cursor::new(value);
    assert_eq!(
        c.skip(),
        Ok(0..value.len()),
        "scanner and cursor disagree on {value:02x?}"
    );
}

fn whole(data: &[u8]) -> (Vec<usize>, End) {
    let mut s = Scanner::new(LIMITS);
    let mut found = Vec::new();
    let mut off = 0;
    loop {
        if off == data.len() {
            return (found, End::Done);
        }
        match s.scan(&data[off..]) {
            Ok(Some(n)) => {
                assert!(n > 0 && n <= data.len() - off, "length {n} out of range");
                assert_eq!(s.progress(), 0, "progress kept after a value");
                check_value(&data[off..off + n]);
                found.push(n);
                off += n;
            }
            Ok(None) => {
                assert!(s.progress() <= data.len() - off);
                return (found, End::Incomplete);
            }
            Err(e) => return (found, End::Failed(e)),
        }
    }
}

fn in_pieces(data: &[u8], piece: &mut dyn FnMut() -> usize) -> (Vec<usize>, End) {
    let mut s = Scanner::new(LIMITS);
    let mut found = Vec::new();
    // Start of the value in progress, and how many bytes have "arrived".
    let mut off = 0;
    let mut avail = 0;
    loop {
        if off == avail {
            if avail == data.len() {
                return (found, End::Done);
            }
            avail = avail.saturating_add(piece()).min(data.len());
        }
        match s.scan(&data[off..avail]) {
            Ok(Some(n)) => {
                assert!(n > 0 && n <= avail - off, "length {n} out of range");
                found.push(n);
                off += n;
            }
            Ok(None) => {
                assert!(s.progress() <= avail - off, "progress past the buffer");
                if avail == data.len() {
                    return (found, End::Incomplete);
                }
                avail = avail.saturating_add(piece()).min(data.len());
            }
            Err(e) => return (found, End::Failed(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let expected = whole(data);
    let mut pieces = Pieces::new(data);
    let got = in_pieces(data, &mut || pieces.next());
    assert_eq!(got, expected, "pieces differ from whole");
    // Byte by byte, the hardest resumption, on inputs small enough to stay fast.
    if data.len() <= 512 {
        let got = in_pieces(data, &mut || 1);
        assert_eq!(got, expected, "byte by byte differs from whole");
    }
});
