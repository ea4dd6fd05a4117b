//! `moat cfg get|set|upload`: read and change a node's running config with its
//! `cfg` app (`cfg.r`, `cfg.w`, `cfg.s`, `cfg.x`; docs/protocol.md: What every node answers).

use super::cmd::remote_failure;
use anyhow::bail;
use moat::args;
use moat::client::{self, Client, Target};
use moat::render;
use mux_runtime::error::RemoteError;
use mux_runtime::message::PathElem;
use mux_runtime::value::NO_DATA;
use mux_runtime::Value;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the node's config, or the part at PATH (`wdt`, `apps.fs`).
    Get(GetArgs),
    /// Set the value at PATH (missing maps are created) or delete it.
    ///
    /// Examples: moat cfg set wdt.t 20 --save; moat cfg set apps.t --delete
    Set(SetArgs),
    /// Replace the node's moat.cfg with the manifest's config (atomically)
    /// and restart its apps; `--dry-run` shows the difference.
    Upload(super::cfg_upload::Args),
}

#[derive(clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub target: Target,
    /// Dotted path into the config (default: all of it).
    pub path: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct SetArgs {
    #[command(flatten)]
    pub target: Target,
    /// Dotted path into the config, e.g. `wdt.t`.
    pub path: String,
    /// The new value (YAML/JSON scalar or collection, as in `moat cmd`).
    #[arg(required_unless_present = "delete", allow_hyphen_values = true)]
    pub value: Option<String>,
    /// Delete the key instead of setting it.
    #[arg(long, conflicts_with = "value")]
    pub delete: bool,
    /// Save the running config to the node's moat.cfg afterwards.
    #[arg(long)]
    pub save: bool,
    /// Restart the app the path belongs to (`cfg.x`) afterwards.
    #[arg(long)]
    pub restart: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Get(a) => get(a),
        Command::Set(a) => set(a),
        Command::Upload(a) => super::cfg_upload::run(a),
    }
}

/// A dotted config path (empty for the root) as `cfg`'s `p`.
fn config_path(dotted: Option<&str>) -> anyhow::Result<Vec<PathElem>> {
    match dotted {
        None | Some("") | Some(".") => Ok(Vec::new()),
        Some(d) => Ok(args::parse_path(d)?),
    }
}

fn path_value(p: &[PathElem]) -> Value {
    Value::Array(p.iter().map(Value::from).collect())
}

fn get(a: GetArgs) -> anyhow::Result<()> {
    let p = config_path(a.path.as_deref())?;
    // Secrets are never printed: the node masks them in `cfg.r` (`sec`),
    // and so does this side, for nodes with an older config.
    let project = moat::project::Project::find_from_cwd().ok();
    let node = project
        .as_ref()
        .and_then(|p| client::pick_node(p, a.target.node.as_deref()).ok())
        .cloned();
    let at: Vec<String> = p
        .iter()
        .map(|e| match e {
            PathElem::Name(n) => n.clone(),
            PathElem::Index(i) => i.to_string(),
        })
        .collect();
    client::block_on(async move {
        let client = Client::connect(&a.target).await?;
        match read(&client, &p).await {
            Ok(mut v) => {
                let paths = moat::secrets::secret_paths(node.as_ref(), &v, &at);
                moat::secrets::mask(&paths, &at, &mut v);
                if a.json {
                    println!("{}", render::json_line(&v));
                } else {
                    println!("{}", render::human(&v));
                }
            }
            Err(e) => return Err(remote_failure(&cfg_r(), &e, a.json)),
        }
        Ok(())
    })?
}

fn cfg_r() -> Vec<PathElem> {
    vec!["cfg".into(), "r".into()]
}

/// Nesting beyond which a parts answer is not followed (the wire's
/// decoder allows 32 levels anyway).
const MAX_PARTS_DEPTH: usize = 32;

/// Reads the config subtree at `p`, following the "parts" form of big
/// subtrees: `[simple members, [keys to fetch with p + key]]`.
pub async fn read(client: &Client, p: &[PathElem]) -> Result<Value, RemoteError> {
    read_at(client, p.to_vec(), 0).await
}

fn read_at(
    client: &Client,
    p: Vec<PathElem>,
    depth: usize,
) -> futures::future::BoxFuture<'_, Result<Value, RemoteError>> {
    Box::pin(async move {
        let v = client
            .call(&cfg_r(), Value::map([("p", path_value(&p))]))
            .await?;
        let Some((simple, keys)) = as_parts(&v) else {
            return Ok(v);
        };
        if depth >= MAX_PARTS_DEPTH {
            return Err(RemoteError::generic(format!(
                "the config at {p:?} is nested deeper than {MAX_PARTS_DEPTH} levels"
            )));
        }
        let mut members: Vec<(Value, Value)> = simple.to_vec();
        for key in keys {
            let elem = match key {
                Value::Str(s) => PathElem::Name(s.clone()),
                Value::Int(i) => PathElem::Index(i64::try_from(*i).unwrap_or(i64::MAX)),
                _ => continue,
            };
            let mut sub = p.clone();
            sub.push(elem);
            members.push((key.clone(), read_at(client, sub, depth + 1).await?));
        }
        Ok(assemble(members))
    })
}

/// Map members, in order.
type Members = [(Value, Value)];

/// `Some((simple members, keys))` when `v` is a parts answer.
fn as_parts(v: &Value) -> Option<(&Members, &[Value])> {
    match v {
        Value::Array(items) => match items.as_slice() {
            [Value::Map(simple), Value::Array(keys)]
                if keys
                    .iter()
                    .all(|k| matches!(k, Value::Str(_) | Value::Int(_))) =>
            {
                Some((simple, keys))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Members of a parted subtree put back together: a list when every key
/// is an index (the node parts lists by index), else a map.
fn assemble(mut members: Vec<(Value, Value)>) -> Value {
    let indices: Option<Vec<usize>> = members
        .iter()
        .map(|(k, _)| k.as_int().and_then(|i| usize::try_from(i).ok()))
        .collect();
    match indices {
        Some(idx)
            if !members.is_empty() && {
                let mut sorted = idx.clone();
                sorted.sort_unstable();
                sorted.iter().enumerate().all(|(n, i)| n == *i)
            } =>
        {
            members.sort_by_key(|(k, _)| k.as_int());
            Value::Array(members.into_iter().map(|(_, v)| v).collect())
        }
        _ => Value::Map(members),
    }
}

/// The app whose config `p` is, for `cfg.x`: an app's settings live under
/// its name (`t.pin` → `t`), its class under `apps` (`apps.t` → `t`);
/// `None` (every app) for `apps` itself.
fn restarted_app(p: &[PathElem]) -> Option<&PathElem> {
    match p {
        [PathElem::Name(apps), rest @ ..] if apps == "apps" => rest.first(),
        [app, ..] => Some(app),
        [] => None,
    }
}

fn set(a: SetArgs) -> anyhow::Result<()> {
    let p = config_path(Some(&a.path))?;
    if p.is_empty() {
        bail!("give a path below the config's root (e.g. `wdt.t`); replacing the whole config is `moat cmd cfg.w p=[] d=…`");
    }
    let value = match (&a.value, a.delete) {
        (_, true) => Value::Proxy(NO_DATA.to_owned()),
        (Some(v), false) => args::parse_value(v)?,
        (None, false) => bail!("give a VALUE, or --delete"),
    };
    client::block_on(async move {
        let client = Client::connect(&a.target).await?;
        let w = vec!["cfg".into(), "w".into()];
        client
            .call(
                &w,
                Value::map([("p", path_value(&p)), ("d", value.clone())]),
            )
            .await
            .map_err(|e| remote_failure(&w, &e, a.json))?;
        if a.save {
            let s = vec!["cfg".into(), "s".into()];
            client
                .call(&s, Value::Map(vec![]))
                .await
                .map_err(|e| remote_failure(&s, &e, a.json))?;
        }
        if a.restart {
            let x = vec!["cfg".into(), "x".into()];
            let app = Value::Array(restarted_app(&p).into_iter().map(Value::from).collect());
            client
                .call(&x, Value::map([("p", app)]))
                .await
                .map_err(|e| remote_failure(&x, &e, a.json))?;
        }
        let shown = args::show_path(&p);
        if a.json {
            let mut out = serde_json::json!({
                "node": client.node(),
                "path": render::json(&path_value(&p)),
                "saved": a.save,
                "restarted": a.restart,
            });
            if a.delete {
                out["deleted"] = true.into();
            } else {
                out["value"] = render::json(&value);
            }
            println!("{out}");
        } else {
            let what = if a.delete {
                format!("deleted {shown}")
            } else {
                format!("{shown} = {}", render::human_compact(&value))
            };
            let mut extra = Vec::new();
            if a.save {
                extra.push("saved");
            }
            let restarted = match restarted_app(&p) {
                Some(app) => format!("app {app} restarted"),
                None => "apps restarted".to_owned(),
            };
            if a.restart {
                extra.push(&restarted);
            }
            let extra = if extra.is_empty() {
                " (not saved: add --save to keep it across restarts)".to_owned()
            } else {
                format!(" ({})", extra.join(", "))
            };
            println!("{}: {what}{extra}", client.node());
        }
        Ok(())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_answers_are_told_apart_from_plain_values() {
        let parts = Value::Array(vec![
            Value::map([("t", 10.into())]),
            Value::Array(vec!["apps".into()]),
        ]);
        assert!(as_parts(&parts).is_some());
        assert!(as_parts(&Value::Array(vec![1.into(), 2.into()])).is_none());
        assert!(as_parts(&Value::map([("a", 1.into())])).is_none());
    }

    #[test]
    fn parted_lists_come_back_as_lists_and_maps_as_maps() {
        let list = assemble(vec![(1.into(), "b".into()), (0.into(), "a".into())]);
        assert_eq!(list, Value::Array(vec!["a".into(), "b".into()]));
        let map = assemble(vec![("x".into(), 1.into())]);
        assert_eq!(map, Value::map([("x", 1.into())]));
    }

    #[test]
    fn restart_names_the_app_whose_config_changed() {
        let p = |s: &str| config_path(Some(s)).unwrap();
        let name = |s: &str| restarted_app(&p(s)).map(ToString::to_string);
        assert_eq!(name("apps.t").as_deref(), Some("t"));
        assert_eq!(name("apps"), None);
        assert_eq!(name("t.pin").as_deref(), Some("t"));
    }
}
