//! Decompression of CompressedPackedForward entries, capped so that a small request
//! cannot expand into unbounded memory (a "zip bomb").

use super::request::Compression;
use std::io::Read;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DecompressError {
    #[error("decompressed entries exceed the cap of {0} bytes")]
    TooLarge(usize),
    #[error("corrupt {codec} data: {source}")]
    Corrupt {
        codec: &'static str,
        source: std::io::Error,
    },
}

/// The largest zstd window accepted (log2 of its bytes): 8 MiB, what zstd's levels up
/// to 19 use (Fluent Bit and Fluentd compress at level 3, with 2 MiB windows). A
/// frame that declares more is corrupt here.
pub const ZSTD_WINDOW_LOG: u32 = 23;
pub const ZSTD_WINDOW: usize = 1 << ZSTD_WINDOW_LOG;

/// How a decompression under a memory budget ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Within {
    /// The whole output, within the cap and within what `grow` allowed.
    Done(Vec<u8>),
    /// The output needs more room than `grow` would give: this many bytes in all (at
    /// most the cap). The partial output is dropped.
    OutOfRoom(usize),
}

/// Decompresses `input` into a new buffer of at most `cap` bytes. Gzip input may be
/// several concatenated members and zstd input several frames, as Fluentd and Fluent Bit
/// write them.
pub fn decompress(
    codec: Compression,
    input: &[u8],
    cap: usize,
) -> Result<Vec<u8>, DecompressError> {
    match decompress_within(codec, input, cap, first_room(input.len(), cap), &mut |_| {
        true
    })? {
        Within::Done(out) => Ok(out),
        // `grow` above never refuses.
        Within::OutOfRoom(_) => Err(DecompressError::TooLarge(cap)),
    }
}

/// The room a decompression of `input_len` bytes starts with: log data typically
/// compresses 5-10x, so 8x, at least 4 KiB and at most the cap.
pub fn first_room(input_len: usize, cap: usize) -> usize {
    input_len.saturating_mul(8).max(4096).min(cap)
}

/// Decompresses `input` into a buffer of `room` bytes that grows only when `grow(to)`
/// agrees to `to` bytes in all (the caller's memory budget), doubling each time, and
/// never past `cap`. Output over the cap is [`DecompressError::TooLarge`] however much
/// room there is, so the outcome depends on the cap alone; output that `grow` refuses
/// room for is [`Within::OutOfRoom`], to be tried again with more.
pub fn decompress_within(
    codec: Compression,
    input: &[u8],
    cap: usize,
    room: usize,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<Within, DecompressError> {
    let room = room.min(cap);
    match codec {
        Compression::None if input.len() > cap => Err(DecompressError::TooLarge(cap)),
        Compression::None if input.len() > room && !grow(input.len()) => {
            Ok(Within::OutOfRoom(input.len()))
        }
        Compression::None => Ok(Within::Done(input.to_vec())),
        Compression::Gzip => read_capped(
            flate2::read::MultiGzDecoder::new(input),
            "gzip",
            cap,
            room,
            grow,
        ),
        Compression::Zstd => {
            let corrupt = |source| DecompressError::Corrupt {
                codec: "zstd",
                source,
            };
            let mut decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(corrupt)?;
            // The decoder keeps a window of what it wrote, as large as the frame
            // declares: bounded, so that what it holds beside the output is too.
            decoder.window_log_max(ZSTD_WINDOW_LOG).map_err(corrupt)?;
            read_capped(decoder, "zstd", cap, room, grow)
        }
    }
}

fn read_capped(
    mut reader: impl Read,
    codec: &'static str,
    cap: usize,
    room: usize,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<Within, DecompressError> {
    let corrupt = |source| DecompressError::Corrupt { codec, source };
    // Exactly the room granted: the buffer's size is what the budget counts.
    let mut out = Vec::with_capacity(room);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let mut n = reader.read(&mut chunk).map_err(corrupt)?;
        if n == 0 {
            // The zstd decoder can report the end of a frame before it notices that the
            // frame is corrupt (its content size does not match, say); a second read
            // brings the error out, so the outcome never depends on the cap.
            n = reader.read(&mut chunk).map_err(corrupt)?;
            if n == 0 {
                return Ok(Within::Done(out));
            }
        }
        let len = out.len() + n;
        if len > cap {
            return Err(DecompressError::TooLarge(cap));
        }
        if len > out.capacity() {
            let to = out.capacity().saturating_mul(2).max(len).min(cap);
            if !grow(to) {
                return Ok(Within::OutOfRoom(to));
            }
            out.reserve_exact(to - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn concatenated_gzip_members() {
        let mut two = gzip(b"hello ");
        two.extend(gzip(b"world"));
        assert_eq!(
            decompress(Compression::Gzip, &two, 100).unwrap(),
            b"hello world"
        );
    }

    #[test]
    fn concatenated_zstd_frames() {
        let mut two = zstd::encode_all(&b"hello "[..], 1).unwrap();
        two.extend(zstd::encode_all(&b"world"[..], 1).unwrap());
        assert_eq!(
            decompress(Compression::Zstd, &two, 100).unwrap(),
            b"hello world"
        );
    }

    #[test]
    fn bomb_stops_at_the_cap() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = gzip(&zeros);
        assert!(matches!(
            decompress(Compression::Gzip, &bomb, 1 << 20),
            Err(DecompressError::TooLarge(_))
        ));
        let bomb = zstd::encode_all(&zeros[..], 1).unwrap();
        assert!(matches!(
            decompress(Compression::Zstd, &bomb, 1 << 20),
            Err(DecompressError::TooLarge(_))
        ));
    }

    #[test]
    fn a_corrupt_zstd_frame_is_corrupt_under_any_cap() {
        // Found by fuzzing: a frame that declares 32 bytes of content and ends in an
        // empty last block came back as Ok(empty) under a cap of 0.
        let frame = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x20, 0x01, 0x00, 0x00];
        for cap in [0, 1, 16, 4096] {
            assert!(
                matches!(
                    decompress(Compression::Zstd, &frame, cap),
                    Err(DecompressError::Corrupt { .. })
                ),
                "cap {cap}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(
            decompress(Compression::Gzip, b"not gzip", 100),
            Err(DecompressError::Corrupt { .. })
        ));
    }
}
