//! `moat cfg upload`: replace a node's `moat.cfg` with the one the manifest
//! gives (`[nodes.NAME.config]` plus the derived `link`), atomically, and
//! make it the running config.
//!
//! The file goes up like a module (temporary name, hash check, rename),
//! and so does the fallback config derived from it (`moat_fb.cfg`);
//! a node without an `fs` app gets it as its running config, saved with
//! `cfg.s` (atomic on the node).
//! Then the running config becomes the new one (`cfg.w p=[]`) and the
//! apps restart (`cfg.x`); when the `link` section changed (links are set
//! up at boot) or the config does not fit one message, the runtime
//! restarts instead (`sys.boot m=1`, which reads the new file).

use super::meter::Metered;
use super::upload::Files;
use crate::client::Target;
use crate::local_node::{CONFIG_FILE, FALLBACK_FILE};
use crate::manifest::Node;
use crate::project::Project;
use crate::render;
use anyhow::bail;
use mux_runtime::error::WellKnown;
use mux_runtime::msgpack::{self, Limits};
use mux_runtime::Value;
use std::time::Duration;

/// One difference between two configs.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Added(Vec<String>, Value),
    Removed(Vec<String>, Value),
    Changed(Vec<String>, Value, Value),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = |p: &[String]| p.join(".");
        match self {
            Change::Added(p, v) => write!(f, "+ {} = {}", path(p), render::human_compact(v)),
            Change::Removed(p, v) => write!(f, "- {} = {}", path(p), render::human_compact(v)),
            Change::Changed(p, a, b) => write!(
                f,
                "~ {}: {} -> {}",
                path(p),
                render::human_compact(a),
                render::human_compact(b)
            ),
        }
    }
}

fn key_text(k: &Value) -> String {
    k.as_str()
        .map_or_else(|| render::human_compact(k), str::to_owned)
}

/// The differences from `old` to `new`, maps compared key by key (in
/// `new`'s order, then keys only `old` has).
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut out = vec![];
    walk(old, new, &mut vec![], &mut out);
    out
}

fn walk(old: &Value, new: &Value, at: &mut Vec<String>, out: &mut Vec<Change>) {
    match (old, new) {
        (Value::Map(a), Value::Map(b)) => {
            for (k, v) in b {
                at.push(key_text(k));
                match a.iter().find(|(ka, _)| ka == k) {
                    Some((_, va)) => walk(va, v, at, out),
                    None => out.push(Change::Added(at.clone(), v.clone())),
                }
                at.pop();
            }
            for (k, v) in a {
                if !b.iter().any(|(kb, _)| kb == k) {
                    at.push(key_text(k));
                    out.push(Change::Removed(at.clone(), v.clone()));
                    at.pop();
                }
            }
        }
        (a, b) if a == b => {}
        // The node never shows its key (`_sec`); an authenticated link to
        // it used this key, so it has it (on a link with auth off this is
        // not checked: keys change with `moat key rotate`). Other secrets
        // cannot be compared: they show as changed and go up again.
        (Value::Proxy(p), Value::Bin(_)) if p == "_sec" && at[..] == ["auth", "k"] => {}
        (a, b) => out.push(Change::Changed(at.clone(), a.clone(), b.clone())),
    }
}

/// What `moat cfg upload` found and did.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Differences from the node's file to the manifest's config; `None`
    /// when the node had no readable `moat.cfg`.
    pub changes: Option<Vec<Change>>,
    /// Whether the file was replaced.
    pub uploaded: bool,
    /// `apps`, `soft-reset` or `none`.
    pub restart: &'static str,
}

async fn call(conn: &Metered, path: &[&str], kw: Value) -> anyhow::Result<Value> {
    conn.client
        .call_names(path, kw)
        .await
        .map_err(|e| anyhow::anyhow!("{} on node `{}`: {e}", path.join("."), conn.client.node()))
}

/// Uploads `node`'s config from the manifest (see the module docs).
pub async fn upload(
    project: &Project,
    node: &Node,
    target: &Target,
    dry_run: bool,
) -> anyhow::Result<Outcome> {
    let new = node.config();
    let bytes = msgpack::to_vec(&new);
    let mut conn = Metered::connect(project, node, target).await?;
    let result = async {
        let limit = conn.client.message_limit().await;
        let fits = bytes.len() + 64 <= limit;
        // Without an `fs` app the running config stands in for the file,
        // and `cfg.s` (atomic on the node) writes it.
        let has_fs = match conn.client.call_names(&["fs", "dir"], Value::Map(vec![])).await {
            Ok(_) => true,
            Err(e) => e.kind() != Some(WellKnown::NoPath),
        };
        let (old, same) = if has_fs {
            let old_bytes = Files::new(&conn.client, limit).get(CONFIG_FILE).await?;
            let old = old_bytes
                .as_deref()
                .and_then(|b| msgpack::decode_exact(b, &Limits::default()).ok());
            (old, old_bytes.as_deref() == Some(bytes.as_slice()))
        } else {
            let running = conn
                .client
                .call_names(&["cfg", "r"], Value::map([("p", Value::Array(vec![]))]))
                .await
                .ok()
                .filter(|v| matches!(v, Value::Map(_)));
            let same = running.as_ref() == Some(&new);
            (running, same)
        };
        let changes = old.as_ref().map(|o| diff(o, &new));
        if dry_run || same {
            return Ok(Outcome {
                changes,
                uploaded: false,
                restart: "none",
            });
        }
        let p = Value::Array(vec![]);
        if has_fs {
            let mut files = Files::new(&conn.client, limit);
            files.put(CONFIG_FILE, &bytes, &|_| {}).await?;
            // the fallback config follows the links and the `fs` app
            let fallback = msgpack::to_vec(&crate::local_node::fallback_config(&new));
            files.put(FALLBACK_FILE, &fallback, &|_| {}).await?;
        } else if fits {
            call(&conn, &["cfg", "w"], Value::map([("p", p.clone()), ("d", new.clone())])).await?;
            call(&conn, &["cfg", "s"], Value::Map(vec![])).await?;
        } else {
            bail!(
                "node `{}` runs no `fs` app and its new config ({} bytes) does not fit one message: add `fs = \"fs.Files\"` to its apps, or reflash it",
                node.name,
                bytes.len()
            );
        }
        // Links are set up at boot, with the key and identity in `auth`.
        let link_changed = old.as_ref().and_then(|o| o.get("link")) != new.get("link")
            || auth_changed(old.as_ref().and_then(|o| o.get("auth")), new.get("auth"));
        let restart = if link_changed || !fits {
            // Links are set up at boot: the runtime restarts and reads the file.
            call(&conn, &["sys", "boot"], Value::map([("m", Value::from(1))])).await?;
            tokio::time::sleep(Duration::from_millis(400)).await;
            conn.wait_back(Duration::from_secs(30)).await?;
            "soft-reset"
        } else {
            if has_fs {
                call(&conn, &["cfg", "w"], Value::map([("p", p.clone()), ("d", new.clone())])).await?;
            }
            call(&conn, &["cfg", "x"], Value::map([("p", p)])).await?;
            "apps"
        };
        Ok(Outcome {
            changes,
            uploaded: true,
            restart,
        })
    }
    .await;
    conn.close().await;
    result
}

/// Whether the node's `auth` section changes. A key read back with
/// `cfg.r` is a placeholder (the node never returns it): only a key read
/// from the file counts.
fn auth_changed(old: Option<&Value>, new: Option<&Value>) -> bool {
    let (Some(old), Some(new)) = (old, new) else {
        return old.is_some() != new.is_some();
    };
    ["n", "p", "k"].iter().any(|k| {
        let (a, b) = (old.get(k), new.get(k));
        match a {
            Some(Value::Bin(_)) | None => a != b,
            // the placeholder proxy: the key cannot be compared
            Some(_) if *k == "k" => false,
            Some(_) => a != b,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_or_identity_restarts_the_links_a_masked_key_does_not() {
        let auth = |k: Value, p: &str| Value::map([("k", k), ("n", "a".into()), ("p", p.into())]);
        let key = |b: u8| Value::Bin(vec![b; 32]);
        let new = auth(key(1), "p1");
        assert!(!auth_changed(Some(&auth(key(1), "p1")), Some(&new)));
        assert!(auth_changed(Some(&auth(key(2), "p1")), Some(&new)));
        assert!(auth_changed(Some(&auth(key(1), "p2")), Some(&new)));
        assert!(auth_changed(None, Some(&new)));
        let masked = auth(Value::Proxy("_sec".into()), "p1");
        assert!(!auth_changed(Some(&masked), Some(&new)));
    }

    #[test]
    fn diff_names_added_removed_and_changed_paths() {
        let old = Value::map([
            ("apps", Value::map([("c", "counter.Counter".into())])),
            ("c", Value::map([("step", 1.into()), ("ms", 1000.into())])),
            ("gone", true.into()),
        ]);
        let new = Value::map([
            ("apps", Value::map([("c", "counter.Counter".into())])),
            ("c", Value::map([("step", 2.into()), ("ms", 1000.into())])),
            ("wdt", Value::map([("t", 10.into())])),
        ]);
        let d: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            d,
            vec!["~ c.step: 1 -> 2", "+ wdt = {t: 10}", "- gone = True"]
        );
        assert!(diff(&new, &new).is_empty());
        // the node's masked key is the one the link authenticated with
        let on_node = Value::map([("auth", Value::map([("k", Value::Proxy("_sec".into()))]))]);
        let local = Value::map([("auth", Value::map([("k", Value::Bin(vec![1; 32]))]))]);
        assert!(diff(&on_node, &local).is_empty());
        let pw = |v: Value| Value::map([("net", Value::map([("pw", v)]))]);
        assert_eq!(
            diff(&pw(Value::Proxy("_sec".into())), &pw("x".into())).len(),
            1
        );
    }
}
