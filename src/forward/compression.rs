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
    reader: impl Read,
    codec: &'static str,
    input_len: usize,
    cap: usize,
) -> Result<Vec<u8>, DecompressError> {
    // Log data typically compresses 5-10x; start there and let the Vec grow up to the cap.
    let mut out = Vec::with_capacity(input_len.saturating_mul(8).min(cap).max(4096));
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|source| DecompressError::Corrupt { codec, source })?;
    if out.len() > cap {
        return Err(DecompressError::TooLarge(cap));
    }
    Ok(out)
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
    fn garbage_is_an_error() {
        assert!(matches!(
            decompress(Compression::Gzip, b"not gzip", 100),
            Err(DecompressError::Corrupt { .. })
        ));
    }
}
