//! `moat mux`: the multiplexer for every node of the project, serving
//! clients (`moat cmd`, `cfg`, `fs`, `monitor`, other programs) on one Unix
//! socket until Ctrl-C or SIGTERM. Link changes are printed as they happen.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use moat::manifest::Node;
use moat::project::Project;
use mux_runtime::link::{LinkSpec, LinkState};
use mux_runtime::mux::{Mux, MuxConfig, NodeConfig};
use mux_runtime::Value;

#[derive(clap::Args)]
pub struct Args {
    /// The socket to serve on (default: $MOAT_SOCKET, else
    /// $XDG_RUNTIME_DIR/moat/<project>-<id>.sock, else
    /// /tmp/moat-$UID/<project>-<id>.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print link changes as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let project = Project::find_from_cwd()?;
    let socket = match (&a.socket, std::env::var_os(moat::client::SOCKET_ENV)) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) if !p.is_empty() => PathBuf::from(p),
        _ => {
            moat::runtime_dir::check_socket_name(project.name(), project.id())?;
            let path = moat::client::default_socket(project.name(), project.id());
            if let Some(dir) = path.parent() {
                moat::runtime_dir::ensure_private(dir)?;
            }
            path
        }
    };
    let nodes = project
        .manifest
        .nodes
        .iter()
        .map(|n| node_config(&project, n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if nodes.is_empty() {
        bail!("the project has no nodes: add a [nodes.NAME] table to moat.toml");
    }
    let config = MuxConfig::new(project.name(), &socket, nodes);
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(serve(config, a.json))
}

/// How the mux reaches `node`, from its manifest entry.
pub fn node_config(project: &Project, node: &Node) -> anyhow::Result<NodeConfig> {
    let link = moat::client::link_spec(project, node)?;
    // An emulated board (qemu-mps2 has a run command, rpi-pico runs under
    // rp2040js; the serial port is a socket): the mux starts the emulator
    // and starts it again when it exits.
    let emulated = match &link {
        LinkSpec::Serial(uart) => {
            uart.path.starts_with("tcp:") && project.board_of(node).run.is_some()
        }
        LinkSpec::Usb { path, .. } => {
            path.starts_with("tcp:") && moat::emulator::rp2040js::is_emulated(project, node)
        }
        _ => false,
    };
    let link = match link {
        link if emulated => LinkSpec::Emulated {
            emulator: moat::client::local_process(project, node)?,
            link: Box::new(link),
        },
        other => other,
    };
    Ok(NodeConfig {
        name: node.name.clone(),
        auth: moat::client::auth_config(project, node)?,
        link,
        watchdog: watchdog_period(&node.config()),
    })
}

/// The node's `wdt.t` (seconds, default 10) when it has a `wdt` section.
fn watchdog_period(config: &Value) -> Option<Duration> {
    let wdt = config.get("wdt")?;
    let secs = match wdt.get("t") {
        Some(Value::Int(t)) => *t as f64,
        Some(Value::Float(t)) => *t,
        _ => 10.0,
    };
    (secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

async fn serve(config: MuxConfig, json: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let names: Vec<String> = config.nodes.iter().map(|n| n.name.clone()).collect();
    let project = config.project.clone();
    let mux = Mux::start(config).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "serving", "project": project, "socket": mux.socket(), "nodes": names})
        );
    } else {
        eprintln!(
            "mux for `{project}` serving {} node(s) on {}",
            names.len(),
            mux.socket().display()
        );
    }
    for name in &names {
        let mut states = mux.link(name).expect("started").watch_state();
        let name = name.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                let state = states.borrow_and_update().clone();
                // Connecting after a failure is noise; say up and down.
                if !matches!(state, LinkState::Connecting) && state.to_string() != last {
                    last = state.to_string();
                    report(json, &name, &state);
                }
                if states.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = term.recv() => {}
    }
    if !json {
        eprintln!("stopping the mux");
    }
    mux.shutdown().await;
    Ok(())
}

fn report(json: bool, node: &str, state: &LinkState) {
    if json {
        let why = match state {
            LinkState::Down(why) => Some(why.as_str()),
            _ => None,
        };
        println!(
            "{}",
            serde_json::json!({"event": "link", "node": node, "state": state.name(), "why": why})
        );
    } else {
        eprintln!("{node}: link {state}");
    }
}
