//! The checkpoint: how far the spool has been published, so that a restart replays only
//! what came after it. One small file, replaced atomically (written beside, then
//! renamed over), so a crash leaves either the old checkpoint or the new one.
//!
//! ```text
//! "FWC1" | position u64 | crc32 of the position u32          (big endian)
//! ```

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const MAGIC: [u8; 4] = *b"FWC1";
const LEN: usize = 16;
const NAME: &str = "checkpoint";
const TEMP: &str = "checkpoint.tmp";

pub fn path(dir: &Path) -> PathBuf {
    dir.join(NAME)
}

/// Reads the checkpoint: `Ok(None)` when there is none, `Err` when it is unreadable or
/// damaged (the caller then replays from the start, which loses nothing).
pub fn read(dir: &Path) -> io::Result<Option<u64>> {
    let bytes = match fs::read(path(dir)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let damaged = || io::Error::new(io::ErrorKind::InvalidData, "checkpoint file is damaged");
    if bytes.len() != LEN || bytes[..4] != MAGIC {
        return Err(damaged());
    }
    let position: [u8; 8] = bytes[4..12].try_into().map_err(|_| damaged())?;
    let crc = u32::from_be_bytes(bytes[12..16].try_into().map_err(|_| damaged())?);
    if crc32fast::hash(&position) != crc {
        return Err(damaged());
    }
    Ok(Some(u64::from_be_bytes(position)))
}

/// Replaces the checkpoint with `position`. With `sync`, the file's data and the
/// directory entry are on disk when this returns.
pub fn write(dir: &Path, position: u64, sync: bool) -> io::Result<()> {
    let mut bytes = [0u8; LEN];
    bytes[..4].copy_from_slice(&MAGIC);
    bytes[4..12].copy_from_slice(&position.to_be_bytes());
    bytes[12..].copy_from_slice(&crc32fast::hash(&position.to_be_bytes()).to_be_bytes());
    let temp = dir.join(TEMP);
    let mut f = File::create(&temp)?;
    f.write_all(&bytes)?;
    if sync {
        f.sync_data()?;
    }
    drop(f);
    fs::rename(&temp, path(dir))?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes the directory's entries (files created, renamed or deleted) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_read() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(dir.path(), 12345, true).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(12345));
        write(dir.path(), 99, false).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(99));
    }

    #[test]
    fn damage_is_an_error_not_a_position() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 7, false).unwrap();
        let mut bytes = fs::read(path(dir.path())).unwrap();
        bytes[6] ^= 1;
        fs::write(path(dir.path()), &bytes).unwrap();
        assert!(read(dir.path()).is_err());
        fs::write(path(dir.path()), b"short").unwrap();
        assert!(read(dir.path()).is_err());
    }
}
