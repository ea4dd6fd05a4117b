//! `moat key rotate`: give a node a new key without ever being left with a
//! key the node does not have.
//!
//! 1. The new key is made and kept as `.moat/keys/NODE.new` (an interrupted
//!    rotation resumes with it: clients try it when the node refuses the
//!    current one).
//! 2. Over the node's link, authenticated with the current key: the running
//!    config gets it (`cfg.w p=[auth, k]`) and is saved (`cfg.s`), the
//!    fallback config too (through `fs`, when the node runs it).
//! 3. The node's runtime restarts (`sys.boot m=1`): its links take the key
//!    from the config they boot with. It must answer again.
//! 4. Only then the new key replaces `.moat/keys/NODE`.

use anyhow::{bail, Context};
use moat::client::{self, Target};
use moat::keys;
use moat::local_node::FALLBACK_FILE;
use moat::manifest::NodeAuth;
use moat::project::Project;
use moat::update::meter::Metered;
use moat::update::upload::Files;
use mux_runtime::error::WellKnown;
use mux_runtime::msgpack;
use mux_runtime::Value;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Give a node a new key: written to the node over its authenticated
    /// link first, then to .moat/keys/NODE.
    Rotate(RotateArgs),
}

#[derive(clap::Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print one JSON object: {node, rotated, resumed}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Rotate(a) => rotate(a),
    }
}

async fn call(c: &client::Client, path: &[&str], kw: Value) -> anyhow::Result<Value> {
    c.call_names(path, kw)
        .await
        .map_err(|e| anyhow::anyhow!("{} on node `{}`: {e}", path.join("."), c.node()))
}

/// How long the node may take to come back after its runtime restarted.
const BACK: Duration = Duration::from_secs(30);

fn rotate(a: RotateArgs) -> anyhow::Result<()> {
    let project = Project::find_from_cwd()?;
    let node = client::pick_node(&project, a.target.node.as_deref())?.clone();
    let var = keys::env_name(&node.name);
    if std::env::var_os(&var).is_some_and(|v| !v.is_empty()) {
        bail!(
            "node `{}`'s key comes from ${var}: moat key rotate keeps keys in .moat/keys/; unset ${var} to rotate that one, or replace the key where ${var} is kept and run `moat cfg upload`",
            node.name
        );
    }
    if node.auth.is_none() {
        bail!(
            "node `{}` has no key yet: `moat build` makes one and `moat flash` (or `moat cfg upload`) gives it to the node",
            node.name
        );
    }
    let pending = keys::pending_path(&project.root, &node.name);
    let (new, resumed) = match keys::load_pending(&project.root, &node.name)? {
        Some(k) => (k, true),
        None => {
            let k = keys::random()?;
            keys::write(&pending, &k)?;
            (k, false)
        }
    };
    if resumed && !a.json {
        eprintln!(
            "node `{}`: resuming the rotation to the key in {}",
            node.name,
            pending.display()
        );
    }
    // The node's config as the manifest gives it, with the new key: what
    // its fallback config derives from.
    let mut next = node.clone();
    next.auth = Some(NodeAuth {
        key: new,
        project: project.id().to_owned(),
        project_name: project.name().to_owned(),
    });
    let fallback = msgpack::to_vec(&moat::local_node::fallback_config(&next.config()));
    client::block_on(async {
        let mut conn = Metered::connect(&project, &node, &a.target).await?;
        // The node answered to the pending key: an earlier rotation gave
        // it the new key and stopped before replacing the local one.
        if conn.client.peer().is_some_and(|p| p.key_index > 0) && !a.json {
            eprintln!(
                "node `{}` already has the new key: finishing the rotation",
                node.name
            );
        }
        let result = async {
            let at = Value::Array(vec!["auth".into(), "k".into()]);
            let kw = Value::map([("p", at), ("d", Value::Bin(new.to_vec()))]);
            call(&conn.client, &["cfg", "w"], kw).await?;
            call(&conn.client, &["cfg", "s"], Value::Map(vec![])).await?;
            let has_fs = match conn.client.call_names(&["fs", "dir"], Value::Map(vec![])).await {
                Ok(_) => true,
                Err(e) => e.kind() != Some(WellKnown::NoPath),
            };
            if has_fs {
                let limit = conn.client.message_limit().await;
                Files::new(&conn.client, limit)
                    .put(FALLBACK_FILE, &fallback, &|_| {})
                    .await
                    .with_context(|| format!("writing {FALLBACK_FILE} on node `{}`", node.name))?;
            }
            let soft_reset = Value::map([("m", Value::from(1))]);
            call(&conn.client, &["sys", "boot"], soft_reset).await?;
            anyhow::Ok(())
        }
        .await;
        if result.is_ok() {
            // The restarted runtime must answer (with the new key: the
            // node's links read it from the config they booted with).
            tokio::time::sleep(Duration::from_millis(400)).await;
            let back = conn.wait_back(BACK).await;
            conn.close().await;
            return back;
        }
        conn.close().await;
        result
    })?
    .with_context(|| {
        format!(
            "node `{}`: the new key is kept in {} (clients try it when the node refuses the current one); run `moat key rotate` again to finish",
            node.name,
            pending.display()
        )
    })?;
    keys::write(&keys::path(&project.root, &node.name), &new)?;
    std::fs::remove_file(&pending)
        .with_context(|| format!("removing {} (the rotation is done)", pending.display()))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"node": node.name, "rotated": true, "resumed": resumed})
        );
    } else {
        println!(
            "node `{}`: new key on the node and in .moat/keys/{}",
            node.name, node.name
        );
    }
    Ok(())
}
