//! The runtime folder holding the mux sockets: `$XDG_RUNTIME_DIR/moat`,
//! else `/tmp/moat-$UID`. `/tmp` is shared by every user, so the folder is
//! made 0700 and trusted only while it is ours and private (as tmux does
//! with its socket folder): another user who made it first could listen
//! there and read what a client sends (e.g. `moat cfg set wifi.pw …`).
//! A socket's owner is checked before a client talks to it.

use anyhow::bail;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The default socket of the project called `name` with id `id`:
/// `<runtime folder>/<name>-<id>.sock` (two projects of the same name
/// never share one).
pub fn socket_path(name: &str, id: &str) -> PathBuf {
    let file = if id.is_empty() {
        format!("{name}.sock")
    } else {
        format!("{name}-{id}.sock")
    };
    mux_runtime::mux::socket::default_dir().join(file)
}

/// The longest path a Unix socket can have (`sun_path` holds 108 bytes
/// with the terminating NUL).
pub const SOCKET_PATH_MAX: usize = 107;

/// Fails when the default socket of project `name` (id `id`) would be
/// longer than a Unix socket path can be, naming the length and the fix.
pub fn check_socket_name(name: &str, id: &str) -> anyhow::Result<()> {
    let path = socket_path(name, id);
    let len = path.as_os_str().len();
    if len > SOCKET_PATH_MAX {
        let room = name.len().saturating_sub(len - SOCKET_PATH_MAX);
        bail!(
            "the project name `{name}` ({} characters) makes the mux's socket path {} {len} bytes long, over the {SOCKET_PATH_MAX} a Unix socket allows: give a shorter name (at most {room} characters here: `moat init --name SHORT`, or `name` in moat.toml's [project]), or name the socket with --socket PATH / MOAT_SOCKET",
            name.len(),
            path.display()
        );
    }
    Ok(())
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The fix for a folder we cannot trust.
fn fix(dir: &Path) -> String {
    format!(
        "remove it (`rm -r {0}`, as its owner or root) or set XDG_RUNTIME_DIR to a folder only you can write",
        dir.display()
    )
}

/// Checks that `dir` is a folder of ours that nobody else can write or
/// read (mode 0700 or narrower); creates it (0700) when missing.
pub fn ensure_private(dir: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    anyhow::anyhow!("cannot create the socket folder {}: {e}", dir.display())
                })?;
            std::fs::symlink_metadata(dir)?
        }
        Err(e) => bail!("cannot inspect the socket folder {}: {e}", dir.display()),
    };
    check(dir, &meta)
}

/// Checks an existing folder's type, owner and mode.
fn check(dir: &Path, meta: &std::fs::Metadata) -> anyhow::Result<()> {
    if !meta.file_type().is_dir() {
        bail!(
            "the socket folder {} is not a folder (a symlink or file someone put there); {}",
            dir.display(),
            fix(dir)
        );
    }
    if meta.uid() != uid() {
        bail!(
            "the socket folder {} belongs to uid {}, not to you (uid {}): another user could read what moat sends there; {}",
            dir.display(),
            meta.uid(),
            uid(),
            fix(dir)
        );
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the socket folder {} has mode {mode:04o}: other users can reach the sockets in it; make it private with `chmod 700 {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Before a client talks to the socket at `path`: it must be a socket of
/// ours. `Ok(false)` when nothing is there.
pub fn check_socket(path: &Path) -> anyhow::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => bail!("cannot inspect the mux socket {}: {e}", path.display()),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} is not a socket: remove it, or name the mux's socket with --socket",
            path.display()
        );
    }
    if meta.uid() != uid() {
        bail!(
            "the mux socket {} belongs to uid {}, not to you (uid {}): refusing to send it anything; remove it (as its owner or root) or set XDG_RUNTIME_DIR to a folder only you can write",
            path.display(),
            meta.uid(),
            uid()
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_missing_folder_is_made_private() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("moat");
        ensure_private(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        ensure_private(&dir).unwrap();
    }

    #[test]
    fn a_folder_others_can_write_is_refused_with_the_fix() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("moat");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_private(&dir).unwrap_err().to_string();
        assert!(e.contains("mode 0777") && e.contains("chmod 700"), "{e}");
    }

    #[test]
    fn a_symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("moat");
        std::os::unix::fs::symlink(t.path(), &dir).unwrap();
        let e = ensure_private(&dir).unwrap_err().to_string();
        assert!(e.contains("not a folder"), "{e}");
    }

    #[test]
    fn socket_path_names_project_and_id() {
        let p = socket_path("q", "0123456789abcdef");
        assert_eq!(p.file_name().unwrap(), "q-0123456789abcdef.sock");
    }
}
