//! Secrets: config values kept out of `moat.toml`. A value written
//! `pw = { secret = "wifi_pw" }` is read from `secrets.toml` next to
//! `moat.toml` (gitignored by the scaffold; `wifi_pw = "…"`) or from
//! `MOAT_SECRET_WIFI_PW`, which wins. The node's config lists the paths of
//! secret values in `sec`, so the node never returns them from `cfg.r`.

use crate::manifest::{value_at_mut, Node};
use anyhow::{bail, Context};
use mux_runtime::Value;
use std::path::{Path, PathBuf};

/// The secrets file's name (next to `moat.toml`).
pub const FILE_NAME: &str = "secrets.toml";

/// The placeholder `moat cfg get` prints for a secret's value.
pub const PLACEHOLDER: &str = "<secret>";

/// The project's `secrets.toml` (empty when there is none).
pub struct Secrets {
    file: PathBuf,
    values: Option<toml::Table>,
}

/// `MOAT_SECRET_<NAME>`.
pub fn env_name(name: &str) -> String {
    format!("MOAT_SECRET_{}", name.to_ascii_uppercase())
}

impl Secrets {
    /// Reads `root/secrets.toml` when it exists.
    pub fn load(root: &Path) -> anyhow::Result<Secrets> {
        let file = root.join(FILE_NAME);
        let values = match std::fs::read_to_string(&file) {
            Ok(text) => Some(
                text.parse::<toml::Table>()
                    .with_context(|| format!("{} is not valid TOML", file.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        Ok(Secrets { file, values })
    }

    /// The value of secret `name`: the environment, else the file.
    pub fn get(&self, name: &str) -> anyhow::Result<Option<Value>> {
        if let Some(v) = std::env::var_os(env_name(name)) {
            return Ok(Some(Value::from(v.to_string_lossy().as_ref())));
        }
        let Some(v) = self.values.as_ref().and_then(|t| t.get(name)) else {
            return Ok(None);
        };
        Ok(Some(match v {
            toml::Value::String(s) => Value::from(s.as_str()),
            toml::Value::Integer(i) => Value::Int((*i).into()),
            toml::Value::Float(f) => Value::Float(*f),
            toml::Value::Boolean(b) => Value::Bool(*b),
            other => bail!(
                "{}: `{name}` must be a string, number or boolean, not {}",
                self.file.display(),
                other.type_str()
            ),
        }))
    }

    /// Puts the values of `node`'s secrets into its config.
    pub fn resolve(&self, node: &mut Node) -> anyhow::Result<()> {
        for s in &node.secrets {
            let Some(v) = self.get(&s.name)? else {
                bail!(
                    "{}: nodes.{}.config.{}: secret `{}` is not set: add `{} = \"…\"` to {} (keep it out of git) or set ${}",
                    s.at,
                    node.name,
                    s.path.join("."),
                    s.name,
                    s.name,
                    self.file.display(),
                    env_name(&s.name)
                );
            };
            if let Some(slot) = value_at_mut(&mut node.user_config, &s.path) {
                *slot = v;
            }
        }
        Ok(())
    }
}

/// `config` with every secret path of `node` (and `auth.k`) replaced by
/// [`PLACEHOLDER`]; `at` is where `config` sits in the node's config
/// (`cfg get wifi` → `["wifi"]`).
pub fn mask(node: &Node, at: &[String], config: &mut Value) {
    let mut paths: Vec<Vec<String>> = node.secrets.iter().map(|s| s.path.clone()).collect();
    paths.push(vec!["auth".into(), "k".into()]);
    for p in paths {
        if p.len() > at.len() && p.starts_with(at) {
            if let Some(slot) = value_at_mut(config, &p[at.len()..]) {
                *slot = Value::from(PLACEHOLDER);
            }
        } else if p.len() <= at.len() && at.starts_with(&p) {
            *config = Value::from(PLACEHOLDER);
        }
    }
}
