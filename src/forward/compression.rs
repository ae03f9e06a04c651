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

/// Decompresses `input` into a new buffer of at most `cap` bytes. Gzip input may be
/// several concatenated members and zstd input several frames, as Fluentd and Fluent Bit
/// write them.
pub fn decompress(
    codec: Compression,
    input: &[u8],
    cap: usize,
) -> Result<Vec<u8>, DecompressError> {
    match codec {
        Compression::None if input.len() > cap => Err(DecompressError::TooLarge(cap)),
        Compression::None => Ok(input.to_vec()),
        Compression::Gzip => read_capped(
            flate2::read::MultiGzDecoder::new(input),
            "gzip",
            input.len(),
            cap,
        ),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(|source| {
                DecompressError::Corrupt {
                    codec: "zstd",
                    source,
                }
            })?;
            read_capped(decoder, "zstd", input.len(), cap)
        }
    }
}

fn read_capped(
    mut reader: impl Read,
    codec: &'static str,
    input_len: usize,
    cap: usize,
) -> Result<Vec<u8>, DecompressError> {
    let corrupt = |source| DecompressError::Corrupt { codec, source };
    // Log data typically compresses 5-10x; start there and let the Vec grow up to the cap.
    let mut out = Vec::with_capacity(input_len.saturating_mul(8).min(cap).max(4096));
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut chunk).map_err(corrupt)?;
        if n == 0 {
            // The zstd decoder can report the end of a frame before it notices that the
            // frame is corrupt (its content size does not match, say); a second read
            // brings the error out, so the outcome never depends on the cap.
            match reader.read(&mut chunk).map_err(corrupt)? {
                0 => return Ok(out),
                more => {
                    if out.len() + more > cap {
                        return Err(DecompressError::TooLarge(cap));
                    }
                    out.extend_from_slice(&chunk[..more]);
                    continue;
                }
            }
        }
        if out.len() + n > cap {
            return Err(DecompressError::TooLarge(cap));
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
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
