//! A project on disk: the folder holding `moat.toml`, its manifest and its
//! boards (embedded plus the project's own `boards/*.toml`).

use crate::board::{Board, BoardError, Boards};
use crate::manifest::{self, Manifest, ManifestError, Node};
use mux_runtime::Value;
use std::path::{Path, PathBuf};

/// A loaded project.
#[derive(Clone, Debug)]
pub struct Project {
    /// The folder holding `moat.toml` (absolute).
    pub root: PathBuf,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// Boards available to the project.
    pub boards: Boards,
}

/// Why a project could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error(
        "no {} in {} or any parent folder; create a project with `moat init DIR`",
        manifest::FILE_NAME,
        .start.display()
    )]
    NotFound { start: PathBuf },
    #[error(transparent)]
    Board(#[from] BoardError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The nearest folder at or above `start` holding `moat.toml`.
pub fn find_root(start: &Path) -> Option<PathBuf> {
    let start = std::path::absolute(start).ok()?;
    start
        .ancestors()
        .find(|d| d.join(manifest::FILE_NAME).is_file())
        .map(Path::to_path_buf)
}

impl Project {
    /// Finds `moat.toml` in `start` or its nearest parent and loads it.
    pub fn find(start: &Path) -> Result<Project, ProjectError> {
        let root = find_root(start).ok_or_else(|| ProjectError::NotFound {
            start: start.to_owned(),
        })?;
        Project::load(&root)
    }

    /// Finds the project from the current working directory.
    pub fn find_from_cwd() -> Result<Project, ProjectError> {
        let cwd = std::env::current_dir().map_err(|source| ProjectError::Io {
            path: PathBuf::from("."),
            source,
        })?;
        Project::find(&cwd)
    }

    /// Loads the project whose `moat.toml` is in `root`.
    pub fn load(root: &Path) -> Result<Project, ProjectError> {
        let root = std::path::absolute(root).map_err(|source| ProjectError::Io {
            path: root.to_owned(),
            source,
        })?;
        let boards = Boards::load(&root)?;
        let manifest = manifest::load(&root.join(manifest::FILE_NAME), &boards)?;
        Ok(Project {
            root,
            manifest,
            boards,
        })
    }

    /// The project's name.
    pub fn name(&self) -> &str {
        &self.manifest.project.name
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.manifest.node(name)
    }

    /// The board a node runs on (validated when the manifest was loaded).
    pub fn board_of(&self, node: &Node) -> &Board {
        self.boards
            .get(&node.board)
            .expect("the manifest checked that every node's board exists")
    }

    /// The complete config (`moat.cfg`) of `node`.
    pub fn node_config(&self, node: &Node) -> Value {
        node.config()
    }

    /// App folders as absolute paths (those that exist).
    pub fn app_dirs(&self) -> Vec<PathBuf> {
        self.manifest
            .app_paths
            .iter()
            .map(|p| self.root.join(p))
            .collect()
    }

    /// The project's state folder (`.moat/`: build records, node folders).
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(".moat")
    }
}
