//! `moat cfg upload`: the node's `moat.cfg` from the manifest, replaced
//! atomically, then made the running config (`moat::update::config`).

use moat::client::{self, Target};
use moat::project::Project;
use moat::update::config;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// Show the difference, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object: {node, changes, uploaded, restart}.
    #[arg(long)]
    pub json: bool,
    /// Write the config over MicroPython's raw REPL on a serial port (a
    /// device not reachable over its link yet, e.g. freshly flashed), then
    /// soft-reset it.
    #[arg(long, conflicts_with_all = ["dry_run", "socket", "direct"])]
    pub repl: bool,
    /// With `--repl`: the serial port (default: the node's `port`).
    #[arg(long, value_name = "PATH", requires = "repl")]
    pub port: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut project = Project::find_from_cwd()?;
    // A node without a key gets one now (its config carries it).
    for node in project.ensure_keys()? {
        eprintln!("node `{node}`: made a new key in .moat/keys/{node}");
    }
    let node = client::pick_node(&project, a.target.node.as_deref())?.clone();
    if a.repl {
        return over_repl(&node, a.port.as_deref(), a.json);
    }
    let out = client::block_on(config::upload(&project, &node, &a.target, a.dry_run))??;
    // Secret values and the node key are shown as placeholders.
    let secret = moat::secrets::secret_paths(Some(&node), &mux_runtime::Value::Nil, &[]);
    let lines: Option<Vec<String>> = out.changes.as_ref().map(|c| {
        c.iter()
            .map(|change| masked(change.clone(), &secret).to_string())
            .collect()
    });
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "node": node.name,
                "changes": lines,
                "uploaded": out.uploaded,
                "restart": out.restart,
                "dry_run": a.dry_run,
            })
        );
        return Ok(());
    }
    match &lines {
        None => println!("{}: no readable moat.cfg on the node", node.name),
        Some(l) if l.is_empty() => println!("{}: moat.cfg is the manifest's", node.name),
        Some(l) => {
            for line in l {
                println!("{line}");
            }
        }
    }
    if out.uploaded {
        let how = match out.restart {
            "soft-reset" => "runtime restarted (the link changed)",
            _ => "apps restarted",
        };
        println!("{}: moat.cfg replaced; {how}", node.name);
    } else if a.dry_run && lines.as_ref().is_none_or(|l| !l.is_empty()) {
        println!("{}: dry run, nothing sent", node.name);
    }
    Ok(())
}

/// `change` with the values at `secret` paths masked.
fn masked(change: config::Change, secret: &[Vec<String>]) -> config::Change {
    use config::Change;
    let m = |at: &[String], mut v: mux_runtime::Value| {
        moat::secrets::mask(secret, at, &mut v);
        v
    };
    match change {
        Change::Added(p, v) => Change::Added(p.clone(), m(&p, v)),
        Change::Removed(p, v) => Change::Removed(p.clone(), m(&p, v)),
        Change::Changed(p, a, b) => Change::Changed(p.clone(), m(&p, a), m(&p, b)),
    }
}

/// `--repl`: the config files over the raw REPL, then a soft reset.
fn over_repl(node: &moat::manifest::Node, port: Option<&str>, json: bool) -> anyhow::Result<()> {
    let port = match port.or(node.port.as_deref()) {
        Some(p) if p.starts_with('/') => p.to_owned(),
        Some(p) => anyhow::bail!(
            "node `{}`: `{p}` is not a serial port; give the device's port with `--port /dev/ttyUSB0`",
            node.name
        ),
        None => anyhow::bail!(
            "node `{}` has no `port` in moat.toml; give the device's serial port with `--port /dev/ttyUSB0`",
            node.name
        ),
    };
    moat::update::config_repl::install(&port, node, None, std::time::Duration::from_secs(5))
        .map_err(|e| anyhow::anyhow!("node `{}`: {e:#}", node.name))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"node": node.name, "uploaded": true, "via": "repl", "port": port, "restart": "soft-reset"})
        );
    } else {
        println!(
            "{}: moat.cfg written over the REPL on {port}; soft reset",
            node.name
        );
    }
    Ok(())
}
