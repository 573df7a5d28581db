//! Reading files the user names, safely: only regular files are opened (a FIFO or a device in place of
//! a config would block or never end), and reads are bounded, so a wrong path gives an error instead of
//! a hang or an exhausted memory.

use std::io::{self, Read};
use std::path::Path;

/// The most a JSON file (configs, tokenizer configs, indexes) may hold: 256 MiB.
pub const MAX_JSON_BYTES: u64 = 256 << 20;

/// Checks that `path` is a regular file (symlinks followed) before anything opens it.
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] naming the kind of file found; the error of `metadata` otherwise.
pub fn check_regular(path: &Path) -> io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let kind = if meta.is_dir() { "a directory" } else { "not a regular file (a FIFO, socket or device)" };
    Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{kind}, expected a file")))
}

/// Reads a regular file of at most `max_bytes`.
///
/// # Errors
/// As [`check_regular`]; a file larger than `max_bytes` ([`io::ErrorKind::InvalidData`]); read errors.
pub fn read_bounded(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    check_regular(path)?;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    // One byte past the limit tells a file that grew after the check from one that fits.
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the {max_bytes}-byte limit"),
        ));
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text.
///
/// # Errors
/// As [`read_bounded`]; text that is not UTF-8 ([`io::ErrorKind::InvalidData`]).
pub fn read_text_bounded(path: &Path, max_bytes: u64) -> io::Result<String> {
    String::from_utf8(read_bounded(path, max_bytes)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not UTF-8 text ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_bounded(dir.path(), 10).unwrap_err().to_string().contains("directory"));
        let f = dir.path().join("a.json");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(read_bounded(&f, 10).unwrap().len(), 10);
        assert!(read_bounded(&f, 9).unwrap_err().to_string().contains("limit"));
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(read_text_bounded(&f, 10).unwrap_err().to_string().contains("UTF-8"));
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("adapter_config.json");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        assert!(read_bounded(&fifo, 10).unwrap_err().to_string().contains("FIFO"));
    }
}
