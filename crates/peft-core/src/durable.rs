//! Crash-safe writing: single files and whole directories.
//!
//! * [`atomic_write`]: a file is written under a fresh, unguessable temporary name in its directory
//!   (created exclusively, so an existing file or symlink of that name is never followed), synced,
//!   renamed over the target, and the directory is synced: readers and a crash see the old file or the
//!   complete new one.
//! * [`StagedDir`]: several files that belong together (an adapter's config and weights, a trainer
//!   checkpoint) are written into a hidden sibling of the target directory, which already holds links to
//!   everything of the target that is not rewritten; committing syncs it and swaps it with the target in
//!   one step (Linux `renameat2(RENAME_EXCHANGE)`), so a crash leaves the old directory or the new one,
//!   never new weights beside an old config. Where the swap is impossible (another file system, a mount
//!   point, a directory too large to mirror, another OS) the files are renamed into place one by one,
//!   with a warning saying so.

use crate::error::{PeftError, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Directories holding more entries than this (counted recursively) are not mirrored for a swap.
const MAX_MIRRORED_ENTRIES: usize = 10_000;

/// A name nobody can predict: process id, a counter and the clock's nanoseconds.
fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{}-{}-{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos ^ 0x9e37_79b9_7f4a_7c15
    )
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> PeftError {
    let path = path.to_path_buf();
    move |source| PeftError::Io { path, op, source }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Makes a directory's entries durable (a no-op where directories cannot be opened, as on Windows).
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir, "sync directory"))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Creates `path` exclusively and writes and syncs `bytes`.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io_err(path, "create"))?;
    f.write_all(bytes).map_err(io_err(path, "write"))?;
    f.sync_all().map_err(io_err(path, "sync"))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so readers
/// see either the old file or the complete new one, and syncs the directory.
///
/// # Errors
/// [`PeftError::Io`] naming the file and the failed step.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_of(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", unique_suffix()));
    let result = write_new(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err(path, "rename into place")))
        .and_then(|()| sync_dir(dir));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// [`atomic_write`] for writers that need a path (an image encoder): `write` creates the file at a fresh
/// temporary sibling of `path` with the same extension, which is then synced and renamed into place.
///
/// # Errors
/// `write`'s failure or a file-system failure, naming `path`.
pub fn atomic_write_with(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let dir = parent_of(path);
    let stem = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let tmp = dir.join(format!(".{stem}.tmp-{}{ext}", unique_suffix()));
    let result = write(&tmp)
        .map_err(io_err(path, "write"))
        .and_then(|()| fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err(&tmp, "sync")))
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err(path, "rename into place")))
        .and_then(|()| sync_dir(dir));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Swaps two directory entries atomically; `Ok(false)` where the system cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| PeftError::Invalid(format!("{}: a path with a NUL byte", p.display())))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // Not supported by the kernel or the file system, across devices, a busy mount point.
        Some(libc::ENOSYS | libc::EINVAL | libc::EXDEV | libc::EBUSY | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(PeftError::Io {
            path: b.to_path_buf(),
            op: "swap the staged directory into place",
            source: err,
        }),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> Result<bool> {
    Ok(false)
}

/// Mirrors `src` into the (new, empty) directory `dst`: hard links for files (copies where linking
/// fails), symlinks recreated, directories recreated; `skip` names top-level entries not to mirror.
/// Returns the directories it created.
fn mirror(src: &Path, dst: &Path, skip: &dyn Fn(&Path) -> bool, dirs: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(src).map_err(io_err(src, "read directory"))? {
        let entry = entry.map_err(io_err(src, "read directory"))?;
        let from = entry.path();
        if skip(&from) {
            continue;
        }
        let to = dst.join(entry.file_name());
        let kind = entry.file_type().map_err(io_err(&from, "stat"))?;
        if kind.is_dir() {
            fs::create_dir(&to).map_err(io_err(&to, "create directory"))?;
            dirs.push(to.clone());
            mirror(&from, &to, &|_| false, dirs)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&from).map_err(io_err(&from, "read link"))?;
            #[cfg(unix)]
            std::os::unix::fs::symlink(&target, &to).map_err(io_err(&to, "create link"))?;
            #[cfg(not(unix))]
            let _ = target;
        } else if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).map_err(io_err(&to, "copy"))?;
        }
    }
    Ok(())
}

/// Counts the entries under `dir`, stopping past `limit`.
fn count_entries(dir: &Path, limit: usize) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            n += 1;
            if n > limit {
                return n;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    n
}

/// Removes staging directories `dir/<prefix><pid>-…` left by processes that no longer run (a crash
/// mid-save). Where liveness cannot be checked (no `/proc`), nothing is removed.
fn remove_abandoned(dir: &Path, prefix: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix).and_then(|rest| rest.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A directory being prepared beside its target, replacing it in one step on [`StagedDir::commit`].
/// Dropped uncommitted, it is removed and the target is untouched.
#[derive(Debug)]
pub struct StagedDir {
    target: PathBuf,
    staging: PathBuf,
    /// Directories created in the staging tree (synced on commit).
    dirs: Vec<PathBuf>,
    /// The files written, relative to the target (for the file-by-file fallback).
    written: Vec<PathBuf>,
    /// False when the target is too large to mirror: files then go straight to the target on commit.
    swap: bool,
    committed: bool,
}

impl StagedDir {
    /// Starts replacing directory `target` (created if missing). With `keep_existing`, what the target
    /// holds stays unless rewritten (another adapter's subdirectory, a README); without, the committed
    /// directory holds only what was written.
    ///
    /// # Errors
    /// A target that is a file, file-system failures.
    pub fn new(target: &Path, keep_existing: bool) -> Result<Self> {
        // Work on the real directory, not on a symlink to it (the swap would replace the link).
        let target = match fs::canonicalize(target) {
            Ok(real) => real,
            Err(_) => {
                let parent = parent_of(target);
                fs::create_dir_all(parent).map_err(io_err(parent, "create directory"))?;
                fs::canonicalize(parent).map_err(io_err(parent, "resolve"))?.join(
                    target.file_name().ok_or_else(|| {
                        PeftError::Invalid(format!("{}: not a directory name", target.display()))
                    })?,
                )
            }
        };
        if target.is_file() {
            return Err(PeftError::Io {
                path: target,
                op: "save into (it is a file, not a directory)",
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        let exists = target.is_dir();
        let swap =
            !(exists && keep_existing && count_entries(&target, MAX_MIRRORED_ENTRIES) > MAX_MIRRORED_ENTRIES);
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        remove_abandoned(parent_of(&target), &format!(".{name}.staging-"));
        let staging = parent_of(&target).join(format!(".{name}.staging-{}", unique_suffix()));
        fs::create_dir(&staging).map_err(io_err(&staging, "create directory"))?;
        let mut staged =
            StagedDir { target, staging, dirs: Vec::new(), written: Vec::new(), swap, committed: false };
        if exists && keep_existing && swap {
            let mut dirs = Vec::new();
            mirror(&staged.target, &staged.staging, &|_| false, &mut dirs)?;
            staged.dirs = dirs;
        }
        if exists {
            // The swapped-in directory keeps the target's permissions.
            if let Ok(meta) = fs::metadata(&staged.target) {
                let _ = fs::set_permissions(&staged.staging, meta.permissions());
            }
        }
        Ok(staged)
    }

    /// The directory being replaced.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Writes `bytes` as `rel` (a path inside the directory, subdirectories created). A mirrored file of
    /// that name is unlinked first, so the old directory's file is never written through.
    ///
    /// # Errors
    /// File-system failures, a `rel` leaving the directory.
    pub fn write(&mut self, rel: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
        let rel = rel.as_ref();
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(PeftError::Invalid(format!("{}: not a plain relative path", rel.display())));
        }
        let path = self.staging.join(rel);
        let mut dir = self.staging.clone();
        for part in rel.parent().into_iter().flat_map(Path::components) {
            dir.push(part);
            if !dir.is_dir() {
                fs::create_dir(&dir).map_err(io_err(&dir, "create directory"))?;
                self.dirs.push(dir.clone());
            }
        }
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path).map_err(io_err(&path, "replace"))?,
            Ok(_) => fs::remove_file(&path).map_err(io_err(&path, "replace"))?,
            Err(_) => {}
        }
        write_new(&path, bytes)?;
        self.written.push(rel.to_path_buf());
        Ok(())
    }

    /// Syncs the staged tree and puts it in place of the target in one step; the old directory is then
    /// removed.
    ///
    /// # Errors
    /// File-system failures; the target is then as it was.
    pub fn commit(mut self) -> Result<()> {
        for d in self.dirs.iter().rev() {
            sync_dir(d)?;
        }
        sync_dir(&self.staging)?;
        let parent = parent_of(&self.target).to_path_buf();
        if !self.target.exists() {
            fs::rename(&self.staging, &self.target).map_err(io_err(&self.target, "rename into place"))?;
            self.committed = true;
            return sync_dir(&parent);
        }
        if self.swap && exchange(&self.staging, &self.target)? {
            self.committed = true;
            sync_dir(&parent)?;
            // The staging name now holds the old directory.
            let _ = fs::remove_dir_all(&self.staging);
            return Ok(());
        }
        log::warn!(
            "{}: cannot swap a staged copy into place here; writing its {} files one by one (a crash may mix \
             old and new files)",
            self.target.display(),
            self.written.len()
        );
        for rel in &self.written {
            let from = self.staging.join(rel);
            let to = self.target.join(rel);
            let dir = parent_of(&to).to_path_buf();
            fs::create_dir_all(&dir).map_err(io_err(&dir, "create directory"))?;
            if to.is_dir() {
                fs::remove_dir_all(&to).map_err(io_err(&to, "replace"))?;
            }
            fs::rename(&from, &to).map_err(io_err(&to, "rename into place"))?;
            sync_dir(&dir)?;
        }
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn a_commit_replaces_the_written_files_and_keeps_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("adapter");
        fs::create_dir_all(dir.join("other")).unwrap();
        fs::write(dir.join("adapter_config.json"), "old config").unwrap();
        fs::write(dir.join("README.md"), "readme").unwrap();
        fs::write(dir.join("other").join("adapter_config.json"), "other config").unwrap();
        let mut staged = StagedDir::new(&dir, true).unwrap();
        staged.write("adapter_config.json", b"new config").unwrap();
        staged.write("sub/adapter_model.safetensors", b"weights").unwrap();
        // Nothing changes before the commit.
        assert_eq!(read(&dir.join("adapter_config.json")), "old config");
        staged.commit().unwrap();
        assert_eq!(read(&dir.join("adapter_config.json")), "new config");
        assert_eq!(read(&dir.join("sub").join("adapter_model.safetensors")), "weights");
        assert_eq!(read(&dir.join("README.md")), "readme");
        assert_eq!(read(&dir.join("other").join("adapter_config.json")), "other config");
        // No staging directory is left beside it.
        let names: Vec<String> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        assert_eq!(names, ["adapter"]);
    }

    #[test]
    fn an_uncommitted_stage_leaves_the_target_untouched_and_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("a"), "old").unwrap();
        {
            let mut staged = StagedDir::new(&dir, false).unwrap();
            staged.write("a", b"new").unwrap();
        }
        assert_eq!(read(&dir.join("a")), "old");
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn without_keep_existing_only_the_written_files_remain() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("stale"), "x").unwrap();
        let mut staged = StagedDir::new(&dir, false).unwrap();
        staged.write("fresh", b"y").unwrap();
        staged.commit().unwrap();
        assert!(!dir.join("stale").exists());
        assert_eq!(read(&dir.join("fresh")), "y");
    }

    #[test]
    fn a_mirrored_file_is_never_written_through() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("adapter");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("weights"), "old").unwrap();
        // Another name for the same file, outside the directory: a hard link to it must keep the old bytes.
        fs::hard_link(dir.join("weights"), root.path().join("elsewhere")).unwrap();
        let mut staged = StagedDir::new(&dir, true).unwrap();
        staged.write("weights", b"new").unwrap();
        staged.commit().unwrap();
        assert_eq!(read(&dir.join("weights")), "new");
        assert_eq!(read(&root.path().join("elsewhere")), "old");
    }

    #[test]
    fn atomic_write_replaces_the_whole_file_and_leaves_no_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("config.json");
        atomic_write(&path, b"one").unwrap();
        atomic_write(&path, b"two").unwrap();
        assert_eq!(read(&path), "two");
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
        assert!(StagedDir::new(&path, true).is_err(), "a file is not a directory");
        let mut staged = StagedDir::new(&root.path().join("d"), true).unwrap();
        assert!(staged.write("../escape", b"x").is_err());
    }
}
