//! `moat demo`: the whole flow in a temporary project, for a human to
//! watch: init → build → flash → mux → a few commands → clean shutdown.
//!
//! The project's node runs on the unix board with a `process` link, so the
//! mux starts the node itself and talks to it over its stdio. `moat init`
//! and `moat build` run as child processes (exactly what a user would
//! type); flashing, the mux and the commands run in this process with the
//! same library code the other verbs use.

use anyhow::{bail, Context};
use futures::StreamExt;
use moat::client::{Client, Route};
use moat::local_node;
use moat::project::Project;
use moat::render;
use mux_runtime::message::PathElem;
use mux_runtime::mux::{Mux, MuxConfig};
use mux_runtime::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Make the project here and keep it (default: a temporary folder,
    /// removed afterwards). Running the demo again in the same folder
    /// skips the compile.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The demo's node.
const NODE: &str = "demo";
/// How long the node may take to come up under the mux.
const UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(a: Args) -> anyhow::Result<()> {
    let temp;
    let (parent, root) = match &a.dir {
        Some(dir) => {
            let dir = std::path::absolute(dir)?;
            (dir.parent().map(Path::to_path_buf), dir)
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("moat-demo-")
                .tempdir()
                .context("making a temporary folder")?;
            (Some(temp.path().to_path_buf()), temp.path().join("demo"))
        }
    };
    println!("moat demo: a project in {}", root.display());
    let result = demo(&root, parent.as_deref());
    match &result {
        Ok(()) if a.dir.is_some() => println!("done; the project stays in {}", root.display()),
        Ok(()) => println!("done; the temporary project is removed"),
        Err(_) => {}
    }
    result
}

fn step(n: u32, what: &str) {
    println!("\n[{n}/5] {what}");
}

fn demo(root: &Path, parent: Option<&Path>) -> anyhow::Result<()> {
    let moat = std::env::current_exe().context("finding the moat binary")?;
    // Everything the unix build needs, named at once, before the first
    // long step (a missing compiler found after a minute of make is worse).
    moat::tools::preflight(&moat::tools::UNIX_BUILD, true)
        .context("moat demo builds a unix-port MicroPython")?;

    step(1, "moat init: a project with one node on the unix board");
    if root.join("moat.toml").is_file() {
        println!("      (already there)");
    } else {
        let mut init = Command::new(&moat);
        init.arg("init")
            .arg(root)
            .args(["--board", "unix", "--name", "demo"]);
        if let Some(p) = parent {
            std::fs::create_dir_all(p)?;
            init.current_dir(p);
        }
        quiet(&mut init).context("step 1 (moat init) failed")?;
        use_process_link(root).context("step 1 (moat init) failed")?;
    }
    println!("      {}", root.join("moat.toml").display());

    step(
        2,
        "moat build: MicroPython's unix port with the node runtime frozen in",
    );
    println!("      (the first build takes a minute or two; later builds are instant)");
    let status = Command::new(&moat)
        .arg("build")
        .current_dir(root)
        .stdin(Stdio::null())
        .status()
        .context("step 2 (moat build) could not start")?;
    if !status.success() {
        bail!("step 2 (moat build) failed ({status}); see its messages above");
    }

    step(3, "moat flash: install the firmware and moat.cfg");
    let project = Project::load(root).context("step 3 (moat flash) failed")?;
    let node = moat::client::pick_node(&project, Some(NODE))?.clone();
    let installed = local_node::install(&project, &node).context("step 3 (moat flash) failed")?;
    println!("      {}", installed.dir.display());

    step(4, "moat mux: start the node and serve it on a Unix socket");
    let socket = root.join(".moat").join("demo.sock");
    let config = MuxConfig::new(
        project.name(),
        &socket,
        vec![super::mux::node_config(&project, &node).context("step 4 (moat mux) failed")?],
    );
    moat::client::block_on(async move {
        let mux = Mux::start(config)
            .await
            .context("step 4 (moat mux) failed")?;
        let talked = talk(&socket).await;
        println!("\n      stopping the mux (and with it the node)");
        mux.shutdown().await;
        talked
    })?
}

/// Runs `cmd`, showing its output only when it fails.
fn quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Rewrites the new project's node link to `process` (the mux then runs
/// the node itself).
fn use_process_link(root: &Path) -> anyhow::Result<()> {
    let path = root.join("moat.toml");
    let text = std::fs::read_to_string(&path)?;
    let mut doc: toml_edit::DocumentMut = text.parse().context("reading moat.toml")?;
    let node = doc
        .get_mut("nodes")
        .and_then(|n| n.get_mut(NODE))
        .and_then(|n| n.as_table_mut())
        .context("moat init made no [nodes.demo] table")?;
    let mut link = toml_edit::InlineTable::new();
    link.insert("kind", "process".into());
    node.insert("link", toml_edit::value(link));
    std::fs::write(&path, doc.to_string())?;
    Ok(())
}

/// Step 5: a few commands through the mux, shown as typed and answered.
async fn talk(socket: &Path) -> anyhow::Result<()> {
    let endpoint = mux_runtime::endpoint::Endpoint::connect_unix(socket)
        .await
        .context("step 4 (moat mux) failed: cannot connect to its socket")?;
    let client = Client::from_endpoint(endpoint, NODE, Route::Mux(socket.to_path_buf()));
    wait_up(&client).await.context("step 4 (moat mux) failed")?;
    println!("      node `{NODE}` is up");

    step(5, "talk to the node through the mux");
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("step 5 failed: {e}");
    let show = |cmd: &str, v: &Value| {
        println!("\n      $ moat cmd {cmd}");
        for line in render::human(v).lines() {
            println!("      {line}");
        }
    };
    for (cmd, path, args) in [
        ("dir", vec!["dir"], Value::Map(vec![])),
        (
            "ping m=hello",
            vec!["ping"],
            Value::map([("m", "hello".into())]),
        ),
        ("sys.info", vec!["sys", "info"], Value::Map(vec![])),
    ] {
        let v = timed(client.call_names(&path, args))
            .await?
            .map_err(|e| fail(&e))?;
        show(cmd, &v);
    }

    println!(
        "\n      $ moat cmd c.get --stream 500 --count 3   (the counter app counts every second)"
    );
    let path = [PathElem::from("c"), PathElem::from("get")];
    let mut items = client.stream(&path, Value::Map(vec![]), 500);
    for _ in 0..3 {
        match timed(items.next()).await? {
            Some(Ok(v)) => println!("      {}", render::human_compact(&v)),
            Some(Err(e)) => return Err(fail(&e)),
            None => bail!("step 5 failed: the stream ended early"),
        }
    }
    drop(items);
    super::cmd::settle().await;
    Ok(())
}

async fn timed<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .map_err(|_| anyhow::anyhow!("step 5 failed: no answer within {CALL_TIMEOUT:?}"))
}

/// Waits until the node answers `ping` through the mux (the mux starts
/// the node; until its link is up requests fail with `_LnkErr`).
async fn wait_up(client: &Client) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + UP_TIMEOUT;
    loop {
        let ping = client.call_names(&["ping"], Value::Map(vec![]));
        let last = match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        if tokio::time::Instant::now() > deadline {
            bail!("node `{NODE}` did not come up within {UP_TIMEOUT:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
