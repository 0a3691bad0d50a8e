//! The file operations of the daemons directory: nothing is followed (`O_NOFOLLOW`), nothing
//! blocks on a planted FIFO (`O_NONBLOCK`), every file we create is 0600 and written
//! atomically (temporary + fsync + rename + fsync of the directory).

use std::fs::{File, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::OFlag;

use crate::Error;

/// Attempts at a fresh temporary name before giving up.
const TEMP_ATTEMPTS: usize = 16;

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn unsafe_file(path: &Path, why: impl Into<String>) -> Error {
    Error::Unsafe {
        path: path.to_owned(),
        why: why.into(),
    }
}

/// What kind of file system object `meta` is, for messages.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a device"
    }
}

/// `Ok` when `path` does not exist or is a regular file (`lstat`, never following); a
/// symbolic link, FIFO, directory or device there is [`Error::Unsafe`]. `socket_ok` admits a
/// unix socket (conntrackd's control socket).
pub(crate) fn check_entry(path: &Path, socket_ok: bool) -> Result<(), Error> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("inspecting", path)(e)),
        Ok(m) if m.is_file() || (socket_ok && m.file_type().is_socket()) => Ok(()),
        Ok(m) => Err(unsafe_file(
            path,
            format!("is {}, not a file l3agent wrote", kind(&m)),
        )),
    }
}

/// Reads a small regular file without following a link or blocking on a FIFO. `Ok(None)`:
/// it does not exist. Longer than `max` bytes, a link, or not a regular file:
/// [`Error::Unsafe`].
pub(crate) fn read_small(path: &Path, max: u64) -> Result<Option<Vec<u8>>, Error> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(unsafe_file(path, "is a symbolic link"))
        }
        Err(e) => return Err(io("opening", path)(e)),
    };
    let meta = file.metadata().map_err(io("inspecting", path))?;
    if !meta.is_file() {
        return Err(unsafe_file(path, format!("is {}", kind(&meta))));
    }
    let mut data = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut data)
        .map_err(io("reading", path))?;
    if data.len() as u64 > max {
        return Err(unsafe_file(path, format!("is longer than {max} bytes")));
    }
    Ok(Some(data))
}

/// The last `max` bytes of a file (lossy UTF-8, trimmed), or "" when it cannot be read: for
/// error messages only.
pub(crate) fn tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
    else {
        return String::new();
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut data = Vec::new();
    let _ = file.take(max).read_to_end(&mut data);
    String::from_utf8_lossy(&data).trim().to_owned()
}

/// A new 0600 file next to `target`, named `.<target name>.tmp-<pid>-<n>`: created with
/// `O_CREAT | O_EXCL | O_NOFOLLOW`, so a planted name is never followed or reused.
pub(crate) fn create_temp(target: &Path) -> Result<(PathBuf, File), Error> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pid = std::process::id();
    for _ in 0..TEMP_ATTEMPTS {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{pid}-{n}"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&tmp)
        {
            Ok(f) => {
                // Exactly 0600 whatever the umask.
                if let Err(e) = f.set_permissions(Permissions::from_mode(0o600)) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io("creating", target)(e));
                }
                return Ok((tmp, f));
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("creating a temporary file for", target)(e)),
        }
    }
    Err(io("creating a temporary file for", target)(
        std::io::Error::new(
            ErrorKind::AlreadyExists,
            format!("{TEMP_ATTEMPTS} temporary names in a row were taken"),
        ),
    ))
}

/// Writes `data` to a fresh temporary next to `target` and fsyncs it; the caller renames it
/// or removes it.
pub(crate) fn write_temp(target: &Path, data: &[u8]) -> Result<PathBuf, Error> {
    let (tmp, mut file) = create_temp(target)?;
    if let Err(e) = file.write_all(data).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("writing", target)(e));
    }
    Ok(tmp)
}

/// Replaces `target` with `data` atomically: a reader sees the old file or the new one. A
/// link, FIFO or directory at `target` is refused, not replaced.
pub(crate) fn write_atomic(target: &Path, data: &[u8]) -> Result<(), Error> {
    check_entry(target, false)?;
    let tmp = write_temp(target, data)?;
    install(&tmp, target)
}

/// Renames the temporary `tmp` over `target` and makes the rename durable.
pub(crate) fn install(tmp: &Path, target: &Path) -> Result<(), Error> {
    if let Err(e) = std::fs::rename(tmp, target) {
        let _ = std::fs::remove_file(tmp);
        return Err(io("replacing", target)(e));
    }
    let dir = target.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the directory of", target))
}

/// Removes a file (never what a link points to); a missing one is fine.
pub(crate) fn remove(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io("removing", path)(e)),
        _ => Ok(()),
    }
}
