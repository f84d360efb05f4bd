//! Small file helpers: keys are written whole (temp file, fsync, rename)
//! and readable by their owner only.

use std::io::Write;
use std::path::Path;

use crate::AuthError;

pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AuthError {
    let path = path.to_path_buf();
    move |source| AuthError::Io { what, path, source }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename);
/// `private` makes it mode 0600 (keys).
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), AuthError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    // A name of its own (two files of one directory never share a temp
    // file), created new: a leftover file cannot lend it its mode.
    let (suffix, _) = crate::random_id()?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}.tmp"));
    let tmp = path.with_file_name(name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(&tmp).map_err(io("writing", &tmp))?;
    f.write_all(bytes).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming", &tmp))
}

pub(crate) fn read_string(what: &'static str, path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(io(what, path))
}
