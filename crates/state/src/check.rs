//! The StrictModes-style checks of the state directory and its parents, and the creation of
//! missing ones. Everything here works on paths with `lstat`; see the crate docs for why that
//! is enough (no directory on the way can be changed by anyone but root and us).

use std::fs::{self, DirBuilder, Metadata, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::StateError;

/// Group- or other-writable bits.
const GROUP_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// Whether missing directories are created (`open`) or reported as NotFound (`inspect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    Create,
    Fail,
}

/// Makes `path` absolute (relative to the current directory) and lexically clean; refuses
/// `..`, which would make the parent checks check the wrong directories.
pub(crate) fn normalize(path: &Path) -> Result<PathBuf, StateError> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let cwd = std::env::current_dir().map_err(|source| StateError::Io {
            what: "resolving the current directory for",
            path: path.to_path_buf(),
            source,
        })?;
        cwd.join(path)
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(StateError::Unsafe {
                    path: path.to_path_buf(),
                    reason: "has a '..' component (give the path without it)".into(),
                })
            }
        }
    }
    if out.parent().is_none() {
        return Err(StateError::Unsafe {
            path: out,
            reason: "is the root directory".into(),
        });
    }
    Ok(out)
}

/// Checks (and with [`Missing::Create`], creates 0700) every parent of the normalized
/// `dir`, from `/` down; then the state directory itself.
pub(crate) fn check_tree(dir: &Path, missing: Missing, euid: u32) -> Result<(), StateError> {
    let ancestors: Vec<&Path> = dir.ancestors().collect();
    // ancestors() goes from `dir` up to `/`; parents are all but the first, checked top-down.
    for parent in ancestors.iter().skip(1).rev() {
        check_parent(parent, missing, euid)?;
    }
    check_state_dir(dir, missing, euid)
}

fn lstat(path: &Path, missing: Missing) -> Result<Metadata, StateError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound && missing == Missing::Create => {
            create_dir_0700(path)?;
            fs::symlink_metadata(path).map_err(|source| StateError::Io {
                what: "checking",
                path: path.to_path_buf(),
                source,
            })
        }
        r => r.map_err(|source| StateError::Io {
            what: "checking",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `mkdir -m 0700` (exactly 0700 whatever the umask); a concurrent creator is not an error.
pub(crate) fn create_dir_0700(path: &Path) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        what: "creating directory",
        path: path.to_path_buf(),
        source,
    };
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), "created directory");
            fs::set_permissions(path, Permissions::from_mode(0o700)).map_err(io)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(e)),
    }
}

fn check_parent(path: &Path, missing: Missing, euid: u32) -> Result<(), StateError> {
    let meta = lstat(path, missing)?;
    if !meta.file_type().is_symlink() {
        return check_parent_meta(path, &meta, euid);
    }
    // A symbolic link is root's own configuration (/var/run -> /run) only if root owns it;
    // then the directories it really leads to are checked like any other.
    if meta.uid() != 0 {
        return Err(StateError::Unsafe {
            path: path.to_path_buf(),
            reason: format!(
                "is a symbolic link owned by uid {} (only root-owned links are followed)",
                meta.uid()
            ),
        });
    }
    let real = fs::canonicalize(path).map_err(|source| StateError::Io {
        what: "resolving symbolic link",
        path: path.to_path_buf(),
        source,
    })?;
    for p in real.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let meta = fs::symlink_metadata(p).map_err(|source| StateError::Io {
            what: "checking",
            path: p.to_path_buf(),
            source,
        })?;
        check_parent_meta(p, &meta, euid)?;
    }
    Ok(())
}

/// A parent: a real directory owned by root or by us, not writable by group or others unless
/// it is root's and sticky (like /tmp).
fn check_parent_meta(path: &Path, meta: &Metadata, euid: u32) -> Result<(), StateError> {
    let unsafe_ = |reason: String| StateError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    if !meta.is_dir() {
        return Err(unsafe_("is not a directory".into()));
    }
    let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
    if uid != 0 && uid != euid {
        return Err(unsafe_(format!(
            "is owned by uid {uid} (a parent must be owned by root or uid {euid})"
        )));
    }
    if mode & GROUP_OTHER_WRITE != 0 && !(uid == 0 && mode & STICKY != 0) {
        return Err(unsafe_(format!(
            "has mode {mode:04o}: group or others can write to a parent (only a root-owned \
             sticky directory like /tmp may be)"
        )));
    }
    Ok(())
}

/// The state directory itself: a real directory (never a symlink), owned by us, not writable
/// by group or others. A wrong mode is reported, not silently fixed: someone made it so.
fn check_state_dir(path: &Path, missing: Missing, euid: u32) -> Result<(), StateError> {
    let meta = lstat(path, missing)?;
    let unsafe_ = |reason: String| StateError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_(
            "is a symbolic link (the state directory must be a real directory)".into(),
        ));
    }
    if !meta.is_dir() {
        return Err(unsafe_("is not a directory".into()));
    }
    let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
    if uid != euid {
        return Err(unsafe_(format!(
            "is owned by uid {uid}, not by uid {euid} that l3agent runs as"
        )));
    }
    if mode & GROUP_OTHER_WRITE != 0 {
        return Err(unsafe_(format!(
            "has mode {mode:04o}: group or others can write to it (chmod 0700 it after checking \
             its contents)"
        )));
    }
    Ok(())
}

/// A subdirectory of the state directory: a real directory owned by us. `None` if missing.
pub(crate) fn check_subdir(path: &Path, euid: u32) -> Result<Option<()>, StateError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                what: "checking",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let unsafe_ = |reason: String| StateError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_("is a symbolic link, not a directory".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_("is not a directory".into()));
    }
    if meta.uid() != euid {
        return Err(unsafe_(format!(
            "is owned by uid {}, not by uid {euid}",
            meta.uid()
        )));
    }
    Ok(Some(()))
}
