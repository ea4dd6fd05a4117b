//! Carrying a diff-update out: ask the node what it imports, plan, send,
//! restart what changed, check the node imports what was sent.
//!
//! Order keeps the node importable at every instant: the ledger grows
//! before uploads (so an interrupted run still knows its files), every
//! upload lands by rename, a stale sibling goes only after its replacement
//! is in place, and the ledger shrinks after deletions.

use super::meter::Metered;
use super::mpy::MpyCross;
use super::plan::{self, Action, Plan, Restart, Wanted};
use super::project::{self, ProjectModules};
use super::table::{mpy_version, Assembler, Form, NodeTable, LEDGER};
use super::upload::Files;
use crate::build::record::Record;
use crate::client::Target;
use crate::hash_table::{module_hash, HashTable};
use crate::local_node;
use crate::manifest::Node;
use crate::project::Project;
use anyhow::{bail, Context};
use mux_runtime::error::WellKnown;
use mux_runtime::message::PathElem;
use mux_runtime::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long a node may take to come back after a restart.
const BACK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restarted app may take to answer.
const APP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub dry_run: bool,
    pub mpy: bool,
    pub reboot: bool,
}

/// Hears what a diff-update does (the CLI draws a table and a bar).
pub trait Observer: Sync {
    /// The plan, before anything is sent; `bytes` is the upload total.
    fn planned(&self, _plan: &Plan, _bytes: u64) {}
    /// `n` more payload bytes of uploads arrived.
    fn sent(&self, _n: u64) {}
    /// A step, for humans.
    fn step(&self, _what: &str) {}
}

/// An [`Observer`] that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// What a diff-update did (`--json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub node: String,
    /// Modules uploaded (with `--dry-run`: that would be).
    pub uploaded: Vec<String>,
    /// Modules whose overrides were deleted.
    pub deleted: Vec<String>,
    /// Project modules the node already had.
    pub unchanged: usize,
    /// Bytes sent on the node's link from the first change to the end of
    /// the check, counted by the link layer (0 when nothing changed).
    pub bytes_sent: u64,
    /// Bytes sent on the link to read the node's module table.
    pub query_bytes: u64,
    /// Payload bytes of the uploaded files.
    pub file_bytes: u64,
    /// Damaged uploads sent again.
    pub retries: u32,
    /// Leftover temporary files removed.
    pub cleaned: Vec<String>,
    /// `none`, `apps`, `soft-reset` or `reboot`.
    pub restart: String,
    /// Apps restarted.
    pub apps: Vec<String>,
    pub dry_run: bool,
}

/// Reads the node's module table (`sys.up.mods`, in parts when it does not
/// fit one message). `known`: the frozen table the host expects.
pub async fn node_table(
    client: &crate::client::Client,
    known: Option<HashTable>,
) -> anyhow::Result<NodeTable> {
    let mut asm = Assembler::new(known);
    let path: Vec<PathElem> = vec!["sys".into(), "up".into(), "mods".into()];
    while let Some(kw) = asm.request() {
        let part = client.call(&path, kw).await.map_err(|e| {
            if e.kind() == Some(WellKnown::NoPath) {
                anyhow::anyhow!(
                    "node `{}` cannot report its modules (no `sys.up`: its firmware predates diff-update); reflash it once: `moat build && moat flash`",
                    client.node()
                )
            } else {
                anyhow::anyhow!("sys.up.mods on node `{}`: {e}", client.node())
            }
        })?;
        asm.feed(&part)?;
    }
    asm.finish()
}

/// The frozen table of the node's last build (a hint: the node then need
/// not send its own when they agree).
pub fn built_table(project: &Project, node: &Node) -> Option<HashTable> {
    let rec = Record::load(&local_node::build_dir(project, &node.name).join("record.json"))?;
    HashTable::from_json(&serde_json::to_value(&rec.inputs.modules).ok()?)
}

/// The file each module would be uploaded as, by module name.
struct Uploads {
    form: Form,
    bytes: BTreeMap<String, Vec<u8>>,
}

/// What the project wants, with the bytes of every module that may need
/// uploading (those whose frozen copy on the node is not current).
fn wanted(
    modules: &ProjectModules,
    frozen: &HashTable,
    mpy: Option<&MpyCross>,
) -> anyhow::Result<(Vec<Wanted>, Uploads)> {
    let mut out = vec![];
    let mut files = Uploads {
        form: if mpy.is_some() { Form::Mpy } else { Form::Py },
        bytes: BTreeMap::new(),
    };
    for m in &modules.modules {
        let mut file_hash = None;
        if !m.in_package {
            if frozen.get(&m.name) == Some(&m.hash) {
                file_hash = Some(m.hash); // not uploaded: any value will do
            } else {
                let source = project::source_bytes(m)?;
                if module_hash(&source) != m.hash {
                    bail!(
                        "{} changed while diff-update ran; run it again",
                        m.source.display()
                    );
                }
                let bytes = match mpy {
                    Some(c) => c.compile(&m.name, &source)?,
                    None => source,
                };
                file_hash = Some(module_hash(&bytes));
                files.bytes.insert(m.name.clone(), bytes);
            }
        }
        out.push(Wanted {
            name: m.name.clone(),
            source_hash: m.hash,
            file_hash,
        });
    }
    Ok((out, files))
}

async fn call(client: &crate::client::Client, path: &[&str], kw: Value) -> anyhow::Result<Value> {
    client
        .call_names(path, kw)
        .await
        .map_err(|e| anyhow::anyhow!("{} on node `{}`: {e}", path.join("."), client.node()))
}

/// The node's configured apps (`name → "module.Class"`).
async fn node_apps(client: &crate::client::Client) -> anyhow::Result<BTreeMap<String, String>> {
    let p = Value::map([("p", Value::Array(vec!["apps".into()]))]);
    let apps = match client.call_names(&["cfg", "r"], p).await {
        Ok(v) => v,
        Err(e) if e.kind() == Some(WellKnown::Key) => return Ok(BTreeMap::new()),
        Err(e) => bail!("cfg.r apps on node `{}`: {e}", client.node()),
    };
    let Value::Map(pairs) = apps else {
        bail!("the node's `apps` config is not a map");
    };
    Ok(pairs
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
        .collect())
}

/// Module paths are relative to the node's root: its `fs` app must serve
/// that root (no `root` setting of its own).
async fn fs_at_root(client: &crate::client::Client) -> anyhow::Result<()> {
    let p = Value::map([("p", Value::Array(vec!["fs".into(), "root".into()]))]);
    match client.call_names(&["cfg", "r"], p).await {
        Ok(Value::Str(r)) if !matches!(r.trim_end_matches('/'), "" | ".") => bail!(
            "node `{}`'s fs app serves {r:?}, not the node's root where modules live; remove `root` from its `fs` config",
            client.node()
        ),
        _ => Ok(()),
    }
}

/// Runs a diff-update of `node` (see the module docs).
pub async fn run(
    project: &Project,
    node: &Node,
    target: &Target,
    opts: Options,
    obs: &dyn Observer,
) -> anyhow::Result<Report> {
    let modules = project::collect(project, node, &mut |m| obs.step(m))?;
    // Nothing that does not compile, and no app the node could not start,
    // leaves the host.
    let own: Vec<&std::path::Path> = modules
        .modules
        .iter()
        .filter(|m| m.from_apps)
        .map(|m| m.source.as_path())
        .collect();
    crate::check::compile(&modules.tree.mpy_cross, &project.root, &own)?;
    let listed: Vec<crate::check::Frozen> = modules
        .modules
        .iter()
        .map(|m| crate::check::Frozen {
            name: &m.name,
            source: &m.source,
        })
        .collect();
    let local = (project.board_of(node).flash == crate::board::Flash::Local)
        .then(|| crate::local_node::node_dir(project, &node.name));
    crate::check::apps(node, &listed, local.as_deref(), |f| {
        let m = modules
            .modules
            .iter()
            .find(|m| m.name == f.name)
            .expect("listed from these modules");
        Ok(String::from_utf8_lossy(&project::source_bytes(m)?).into_owned())
    })?;
    let mut conn = Metered::connect(project, node, target).await?;
    let result = session(&mut conn, project, node, &modules, opts, obs).await;
    conn.close().await;
    result
}

async fn session(
    conn: &mut Metered,
    project: &Project,
    node: &Node,
    modules: &ProjectModules,
    opts: Options,
    obs: &dyn Observer,
) -> anyhow::Result<Report> {
    let b0 = conn.bytes_out().await?;
    let table = node_table(&conn.client, built_table(project, node)).await?;
    let query_bytes = conn.bytes_out().await? - b0;
    let mpy = if opts.mpy {
        let c = MpyCross::at(&modules.tree.mpy_cross)?;
        // An .mpy loads only where its version is the node's.
        match (c.emits(), table.mpy.map(mpy_version)) {
            (Some(ours), Some(theirs)) if ours != theirs => bail!(
                "node `{}` loads .mpy v{}.{} but the project's mpy-cross emits v{}.{}: the files would not load; reflash the node or drop --mpy",
                node.name,
                theirs.0,
                theirs.1,
                ours.0,
                ours.1
            ),
            (None, _) => bail!(
                "cannot tell which .mpy version {} emits ({:?}); drop --mpy",
                c.path.display(),
                c.version
            ),
            (_, None) => bail!(
                "node `{}` does not say which .mpy version it loads (no sys.implementation._mpy); drop --mpy",
                node.name
            ),
            _ => {}
        }
        Some(c)
    } else {
        None
    };
    let (wanted, files) = wanted(modules, &table.frozen, mpy.as_ref())?;
    let plan = plan::plan(&wanted, &table, files.form);
    let refused: Vec<&str> = plan.refused().map(|i| i.module.as_str()).collect();
    if !refused.is_empty() {
        bail!(
            "cannot update {} without reflashing (modules inside a package are frozen as a whole); run `moat build --node {} && moat flash --node {}`",
            refused.join(", "),
            node.name,
            node.name
        );
    }
    let upload_bytes: u64 = plan
        .uploads()
        .filter_map(|i| files.bytes.get(&i.module))
        .map(|b| b.len() as u64)
        .sum();
    obs.planned(&plan, upload_bytes);
    let mut report = Report {
        node: node.name.clone(),
        uploaded: plan.uploads().map(|i| i.module.clone()).collect(),
        deleted: plan.deletions().map(|i| i.module.clone()).collect(),
        unchanged: plan.unchanged(),
        query_bytes,
        file_bytes: upload_bytes,
        cleaned: plan.cleanup.clone(),
        restart: "none".into(),
        dry_run: opts.dry_run,
        ..Report::default()
    };
    if opts.dry_run || plan.is_empty() {
        return Ok(report);
    }

    fs_at_root(&conn.client).await?;
    let b1 = conn.bytes_out().await?;
    let limit = conn.client.message_limit().await;
    let mut fs = Files::new(&conn.client, limit);
    let ledger_text = |l: &BTreeSet<String>| {
        l.iter()
            .map(|n| format!("{n}\n"))
            .collect::<String>()
            .into_bytes()
    };
    // 1. The ledger grows first.
    let grown: BTreeSet<String> = table.ledger.union(&plan.ledger).cloned().collect();
    if grown != table.ledger {
        fs.put(LEDGER, &ledger_text(&grown), &|_| {}).await?;
    }
    // 2. Uploads, each followed by the removal of its stale sibling.
    for item in plan.uploads() {
        let Action::Upload { path, delete } = &item.action else {
            continue;
        };
        obs.step(&format!("uploading {path}"));
        let data = files
            .bytes
            .get(&item.module)
            .with_context(|| format!("no bytes for module {}", item.module))?;
        fs.put(path, data, &|n| obs.sent(n)).await?;
        for p in delete {
            fs.remove(p).await?;
        }
    }
    // 3. Overrides no longer wanted, leftovers.
    for item in plan.deletions() {
        if let Action::Delete { paths } = &item.action {
            for p in paths {
                obs.step(&format!("deleting {p}"));
                fs.remove(p).await?;
            }
        }
    }
    for p in &plan.cleanup {
        fs.remove(p).await?;
    }
    // 4. The ledger shrinks last.
    if plan.ledger != grown {
        if plan.ledger.is_empty() {
            fs.remove(LEDGER).await?;
        } else {
            fs.put(LEDGER, &ledger_text(&plan.ledger), &|_| {}).await?;
        }
    }
    report.retries = fs.retries;

    // 5. Restart what uses the changed modules.
    let changed = plan.changed();
    let apps = node_apps(&conn.client).await?;
    let how = plan::restart(
        &changed,
        &apps,
        &modules.runtime_names(),
        &modules.app_names(),
        opts.reboot,
    );
    match &how {
        Restart::Nothing => {}
        Restart::Apps { drop, apps } => {
            report.restart = "apps".into();
            report.apps = apps.clone();
            let m = Value::Array(drop.iter().map(|s| Value::from(s.as_str())).collect());
            call(&conn.client, &["sys", "up", "drop"], Value::map([("m", m)])).await?;
            for a in apps {
                obs.step(&format!("restarting app {a}"));
                let p = Value::Array(vec![Value::from(a.as_str())]);
                call(&conn.client, &["cfg", "x"], Value::map([("p", p)])).await?;
            }
        }
        Restart::Runtime | Restart::Reboot => {
            // A hard reset reloads everything; a soft one (the runtime
            // restarting in place) all but what main.py imported before
            // it (msgpack, err, asyncio). A unix node run by `moat run`
            // would end on a hard reset, so it gets a soft one.
            let hard = restarts_itself(project, node);
            let m = if hard { 2 } else { 1 };
            let what = match (&how, hard) {
                (Restart::Reboot, _) | (_, true) => "reboot",
                _ => "soft-reset",
            };
            report.restart = what.into();
            obs.step(&format!("{what} of node {}", node.name));
            call(
                &conn.client,
                &["sys", "boot"],
                Value::map([("m", Value::from(m))]),
            )
            .await?;
            // The node answers first and goes down ~100 ms later.
            tokio::time::sleep(Duration::from_millis(400)).await;
            conn.wait_back(BACK_TIMEOUT).await?;
        }
    }

    // 6. The node imports what was sent.
    obs.step("checking");
    let after = node_table(&conn.client, Some(table.frozen.clone())).await?;
    let again = plan::plan(&wanted, &after, files.form);
    let pending: Vec<&str> = again
        .items
        .iter()
        .filter(|i| i.action != Action::Unchanged)
        .map(|i| i.module.as_str())
        .collect();
    if !pending.is_empty() {
        bail!(
            "after the update node `{}` still does not import the project's {}; run diff-update again",
            node.name,
            pending.join(", ")
        );
    }
    let project_names: BTreeSet<&str> = modules.modules.iter().map(|m| m.name.as_str()).collect();
    let load: Vec<Value> = changed
        .iter()
        .filter(|m| project_names.contains(**m))
        .map(|m| Value::from(*m))
        .collect();
    let failed = call(
        &conn.client,
        &["sys", "up", "load"],
        Value::map([("m", Value::Array(load))]),
    )
    .await?;
    if let Value::Map(f) = &failed {
        if !f.is_empty() {
            let why: Vec<String> = f
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}: {}",
                        k.as_str().unwrap_or("?"),
                        v.as_str().unwrap_or("?")
                    )
                })
                .collect();
            bail!(
                "node `{}` cannot import the new modules: {}; fix them and run diff-update again",
                node.name,
                why.join("; ")
            );
        }
    }
    let restarted: Vec<String> = match &how {
        Restart::Apps { apps, .. } => apps.clone(),
        _ => apps.keys().cloned().collect(),
    };
    for a in &restarted {
        app_answers(&conn.client, a).await?;
    }
    report.bytes_sent = conn.bytes_out().await? - b1;
    Ok(report)
}

/// Whether a hard reset brings the node back by itself: a device does, a
/// unix node only when the mux runs it (process link).
fn restarts_itself(project: &Project, node: &Node) -> bool {
    project.board_of(node).flash != crate::board::Flash::Local
        || node.link == crate::manifest::Link::Process
}

/// Waits until app `a` answers `dir` (it restarts in the background).
async fn app_answers(client: &crate::client::Client, a: &str) -> anyhow::Result<()> {
    let end = Instant::now() + APP_TIMEOUT;
    loop {
        let r = client.call_names(&[a, "dir"], Value::Map(vec![])).await;
        match r {
            Ok(_) => return Ok(()),
            Err(e) => {
                let why = e.args().get(1).and_then(Value::as_str).unwrap_or("");
                if why.starts_with("app failed") {
                    bail!(
                        "app `{a}` on node `{}` failed after the update: {why}",
                        client.node()
                    );
                }
                if Instant::now() >= end {
                    bail!(
                        "app `{a}` on node `{}` does not answer after the update: {e}",
                        client.node()
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
