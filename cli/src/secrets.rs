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

/// The paths `moat cfg get` masks: the node's secrets in the manifest
/// (when known), the `sec` list of the config read (when it is the whole
/// config), and the node key `auth.k`.
pub fn secret_paths(node: Option<&Node>, read: &Value, at: &[String]) -> Vec<Vec<String>> {
    let mut paths: Vec<Vec<String>> = node
        .map(|n| n.secrets.iter().map(|s| s.path.clone()).collect())
        .unwrap_or_default();
    if at.is_empty() {
        if let Some(Value::Array(listed)) = read.get("sec") {
            for p in listed {
                if let Value::Array(elems) = p {
                    let path: Option<Vec<String>> = elems
                        .iter()
                        .map(|e| e.as_str().map(str::to_owned))
                        .collect();
                    paths.extend(path);
                }
            }
        }
    }
    paths.push(vec!["auth".into(), "k".into()]);
    paths
}

/// `config` (the part of a node's config at `at`: `cfg get wifi` →
/// `["wifi"]`) with the value at each of `paths` replaced by
/// [`PLACEHOLDER`].
pub fn mask(paths: &[Vec<String>], at: &[String], config: &mut Value) {
    mask_node_placeholders(config);
    for p in paths {
        if p.len() > at.len() && p.starts_with(at) {
            if let Some(slot) = value_at_mut(config, &p[at.len()..]) {
                *slot = Value::from(PLACEHOLDER);
            }
        } else if p.len() <= at.len() && at.starts_with(p) {
            *config = Value::from(PLACEHOLDER);
        }
    }
}

/// What the node answers in place of a secret (docs/auth.md): the proxy
/// `_sec`.
pub const NODE_PLACEHOLDER: &str = "_sec";

/// Every `_sec` proxy the node put in place of a secret, shown as
/// [`PLACEHOLDER`] like the ones masked here.
fn mask_node_placeholders(v: &mut Value) {
    match v {
        Value::Proxy(p) if p == NODE_PLACEHOLDER => *v = Value::from(PLACEHOLDER),
        Value::Array(items) => items.iter_mut().for_each(mask_node_placeholders),
        Value::Map(pairs) => pairs
            .iter_mut()
            .for_each(|(_, x)| mask_node_placeholders(x)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_nodes_own_placeholders_read_as_secret() {
        let mut v = Value::map([(
            "wifi",
            Value::map([("pw", Value::Proxy(NODE_PLACEHOLDER.into()))]),
        )]);
        mask(&[], &[], &mut v);
        assert_eq!(
            v.get("wifi").and_then(|w| w.get("pw")),
            Some(&Value::from(PLACEHOLDER))
        );
    }

    use super::*;

    #[test]
    fn secrets_and_the_key_are_masked_wherever_the_read_starts() {
        let cfg = || {
            Value::map([
                (
                    "wifi",
                    Value::map([("ssid", "x".into()), ("pw", "hunter2".into())]),
                ),
                (
                    "auth",
                    Value::map([("k", Value::Bin(vec![1; 32])), ("n", "a".into())]),
                ),
                (
                    "sec",
                    Value::Array(vec![Value::Array(vec!["wifi".into(), "pw".into()])]),
                ),
            ])
        };
        let mut all = cfg();
        let paths = secret_paths(None, &all, &[]);
        mask(&paths, &[], &mut all);
        assert_eq!(
            all.get("wifi").unwrap().get("pw"),
            Some(&Value::from(PLACEHOLDER))
        );
        assert_eq!(
            all.get("wifi").unwrap().get("ssid"),
            Some(&Value::from("x"))
        );
        assert_eq!(
            all.get("auth").unwrap().get("k"),
            Some(&Value::from(PLACEHOLDER))
        );
        // `cfg get wifi.pw`: the value itself is the secret.
        let at = vec!["wifi".to_owned(), "pw".to_owned()];
        let mut one = Value::from("hunter2");
        mask(std::slice::from_ref(&at), &at, &mut one);
        assert_eq!(one, Value::from(PLACEHOLDER));
    }
}
