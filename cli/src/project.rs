//! A project on disk: the folder holding `moat.toml`, its manifest and its
//! boards (embedded plus the project's own `boards/*.toml`).

use crate::board::{Board, BoardError, Boards};
use crate::manifest::{self, Manifest, ManifestError, Node, NodeAuth};
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
    #[error(transparent)]
    Other(anyhow::Error),
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

    /// Loads the project whose `moat.toml` is in `root`: secrets are
    /// resolved, node keys read (see [`Project::ensure_keys`] for making
    /// them); a manifest without `[project] id` is given one (written into
    /// `moat.toml`, said on stderr).
    pub fn load(root: &Path) -> Result<Project, ProjectError> {
        let root = std::path::absolute(root).map_err(|source| ProjectError::Io {
            path: root.to_owned(),
            source,
        })?;
        let boards = Boards::load(&root)?;
        let file = root.join(manifest::FILE_NAME);
        let mut manifest = manifest::load(&file, &boards)?;
        if manifest.project.id.is_none() {
            manifest.project.id = Some(add_project_id(&file).map_err(ProjectError::Other)?);
        }
        let secrets = crate::secrets::Secrets::load(&root).map_err(ProjectError::Other)?;
        let project_id = manifest.project.id.clone().unwrap_or_default();
        let project_name = manifest.project.name.clone();
        for node in &mut manifest.nodes {
            secrets.resolve(node).map_err(ProjectError::Other)?;
            node.auth = crate::keys::load(&root, &node.name)
                .map_err(ProjectError::Other)?
                .map(|key| NodeAuth {
                    key,
                    project: project_id.clone(),
                    project_name: project_name.clone(),
                });
        }
        Ok(Project {
            root,
            manifest,
            boards,
        })
    }

    /// The project's id (`[project] id`).
    pub fn id(&self) -> &str {
        self.manifest.project.id.as_deref().unwrap_or_default()
    }

    /// Makes a key for every node without one (`.moat/keys/NODE`); the
    /// names of the nodes that got one.
    pub fn ensure_keys(&mut self) -> anyhow::Result<Vec<String>> {
        use anyhow::Context;
        use std::os::unix::fs::PermissionsExt;
        let mut made = Vec::new();
        // `.moat/` holds the keys and copies of them (the node configs in
        // build/ and nodes/): only the user may read it.
        let state = self.state_dir();
        std::fs::create_dir_all(&state)
            .with_context(|| format!("cannot create {}", state.display()))?;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (chmod 700)", state.display()))?;
        let id = self.id().to_owned();
        let name = self.name().to_owned();
        for node in &mut self.manifest.nodes {
            if node.auth.is_some() {
                continue;
            }
            let (key, new) = crate::keys::ensure(&self.root, &node.name)?;
            if new {
                made.push(node.name.clone());
            }
            node.auth = Some(NodeAuth {
                key,
                project: id.clone(),
                project_name: name.clone(),
            });
        }
        Ok(made)
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

/// Writes a new random `[project] id` into the manifest at `file` (keeping
/// its formatting and comments) and returns it.
fn add_project_id(file: &Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("cannot parse {}", file.display()))?;
    let id = crate::keys::new_project_id()?;
    let project = doc["project"]
        .as_table_like_mut()
        .context("the manifest has a [project] table")?;
    project.insert("id", toml_edit::value(id.as_str()));
    std::fs::write(file, doc.to_string()).with_context(|| {
        format!(
            "{} has no `[project] id` and cannot be given one: add `id = \"{id}\"` under [project] by hand",
            file.display()
        )
    })?;
    eprintln!(
        "{}: added `[project] id = \"{id}\"` (a random id that tells this project's nodes from another's; commit it)",
        file.display()
    );
    Ok(id)
}
