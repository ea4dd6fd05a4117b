//! The mux's Unix-domain socket: where it lives, and binding it safely.
//!
//! Default: `$XDG_RUNTIME_DIR/moat/<project>.sock`, else
//! `/tmp/moat-$UID/<project>.sock`; the folder is made mode 0700 and the
//! socket 0600. A socket file nobody answers on is stale (a mux that
//! crashed) and is replaced; one that answers belongs to a running mux and
//! binding is refused.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// The default socket of project `project`.
pub fn default_path(project: &str) -> PathBuf {
    default_dir().join(format!("{project}.sock"))
}

/// `$XDG_RUNTIME_DIR/moat`, else `/tmp/moat-$UID`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("moat"),
        _ => {
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            PathBuf::from(format!("/tmp/moat-{uid}"))
        }
    }
}

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "another mux is already serving {path}: stop it first, or give this one another socket with --socket"
    )]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket: remove it or choose another path with --socket")]
    NotASocket { path: PathBuf },
    #[error("cannot create the socket folder {path}: {source}")]
    Folder { path: PathBuf, source: io::Error },
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// Binds `path` (mode 0600), replacing a stale socket, refusing a live one.
pub async fn bind(path: &Path) -> Result<UnixListener, BindError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| BindError::Folder {
                    path: dir.to_owned(),
                    source,
                })?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(BindError::InUse {
                    path: path.to_owned(),
                });
            }
            tracing::info!("replacing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| BindError::Bind {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(_) => {}
    }
    // Bound under a temporary name, made private, then renamed into
    // place: nobody can connect before the mode is 0600.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let bind_err = |source| BindError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(&tmp).map_err(bind_err)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(bind_err(e));
    }
    Ok(listener)
}
