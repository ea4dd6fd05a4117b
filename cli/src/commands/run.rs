//! `moat run`: run a node of a local board (`unix`) in the foreground from
//! its folder `.moat/nodes/<node>/`. Ctrl-C stops it; its exit status is
//! moat's.

use anyhow::Context;
use moat::local_node;
use moat::project::Project;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The node to run (default: the project's only node).
    #[arg(long, short = 'n', value_name = "NODE")]
    pub node: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let project = Project::find_from_cwd()?;
    let node = moat::client::pick_node(&project, a.node.as_deref())?;
    let cmd = local_node::command(&project, node)?;
    let code = moat::client::block_on(run_foreground(cmd, &node.name))??;
    if code != 0 {
        // Pass the node's status on (main only knows success and failure).
        std::process::exit(code);
    }
    Ok(())
}

/// Runs `cmd` with inherited stdio until it ends. Ctrl-C, SIGTERM and
/// SIGHUP stop it with SIGINT (a terminal's Ctrl-C reaches it directly).
/// Returns the exit code (128 + signal when killed by one).
pub async fn run_foreground(cmd: std::process::Command, name: &str) -> anyhow::Result<i32> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting node `{name}`"))?;
    let pid = child.id();
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = interrupt.recv() => {
            // A terminal's Ctrl-C reached the node too; give it a moment
            // before passing the signal on ourselves.
            stop(&mut child, pid, libc::SIGINT, Duration::from_millis(500)).await?
        }
        // The node ends cleanly on SIGINT (KeyboardInterrupt); other
        // signals would kill it and its next boot would take that for a
        // crash.
        _ = term.recv() => stop(&mut child, pid, libc::SIGINT, Duration::ZERO).await?,
        _ = hangup.recv() => stop(&mut child, pid, libc::SIGINT, Duration::ZERO).await?,
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}

/// Ends the node: waits `grace` for it to exit on its own, then sends
/// `sig`, then after five seconds kills it.
async fn stop(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
    sig: libc::c_int,
    grace: Duration,
) -> std::io::Result<ExitStatus> {
    if let Ok(s) = tokio::time::timeout(grace, child.wait()).await {
        return s;
    }
    if let Some(pid) = pid {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    }
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(s) => s,
        Err(_) => {
            child.kill().await?;
            child.wait().await
        }
    }
}
