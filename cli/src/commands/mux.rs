//! `moat mux`: the multiplexer for every node of the project, serving
//! clients (`moat cmd`, `cfg`, `fs`, `monitor`, other programs) on one Unix
//! socket until Ctrl-C or SIGTERM. Link changes are printed as they happen.
//!
//! With a broker (`--mqtt URL` or `[mqtt]` in moat.toml) muxes on several
//! hosts join: each holds the nodes wired to it (`--node NAME`, or the
//! nodes whose `mux = "NAME"` is its `--name`) and reaches the others
//! through the broker (docs/mqtt.md). `moat mux ls` lists every node with
//! the mux holding it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use moat::manifest::Node;
use moat::project::Project;
use mux_runtime::link::{LinkSpec, LinkState};
use mux_runtime::message::PathElem;
use mux_runtime::mux::{DocHook, Mux, MuxConfig, NodeConfig};
use mux_runtime::Value;

#[derive(clap::Args, Default)]
pub struct Args {
    /// The socket to serve on (default: $MOAT_SOCKET, else
    /// $XDG_RUNTIME_DIR/moat/<project>-<id>.sock, else
    /// /tmp/moat-$UID/<project>-<id>.sock).
    #[arg(long, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    /// Print link changes as JSON lines on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Hold only this node (repeatable); the others are reached through
    /// the broker. Default: the nodes whose `mux` is this mux's name, and
    /// those naming no mux.
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// This mux's name (default: [mqtt] client_id, else the host's name):
    /// it holds the nodes whose `mux = "NAME"`, and is that session on
    /// the broker.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Join the project's other muxes through the MQTT broker at URL
    /// (mqtt://HOST[:PORT]; overrides [mqtt] url).
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// With an mqtts:// broker: the CA that signed its certificate (PEM;
    /// default: [mqtt] ca, else the system's CAs).
    #[arg(long, value_name = "FILE")]
    pub mqtt_ca: Option<PathBuf>,
    #[command(subcommand)]
    pub action: Option<Action>,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// List the nodes of the running mux, and (with a broker) those other
    /// muxes hold, with their state and mux.
    Ls,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if let Some(Action::Ls) = a.action {
        return ls(a.socket, a.json);
    }
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
    if project.manifest.nodes.is_empty() {
        bail!("the project has no nodes: add a [nodes.NAME] table to moat.toml");
    }
    let mqtt = moat::client::mqtt_config(&project, a.mqtt.as_deref(), a.mqtt_ca.as_deref())?;
    let name = a
        .name
        .clone()
        .or_else(|| mqtt.as_ref().and_then(|m| m.client_id.clone()))
        .unwrap_or_else(mux_runtime::mux::host_name);
    let held = held_nodes(&project.manifest.nodes, &a.nodes, &name)?;
    let elsewhere: Vec<&str> = project
        .manifest
        .nodes
        .iter()
        .filter(|n| !held.iter().any(|h| h.name == n.name))
        .map(|n| n.name.as_str())
        .collect();
    if !elsewhere.is_empty() && mqtt.is_none() {
        eprintln!(
            "note: this mux does not hold {} and has no broker to reach them: add --mqtt URL",
            elsewhere.join(", ")
        );
    }
    let nodes = held
        .iter()
        .map(|n| node_config(&project, n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut config = MuxConfig::new(project.name(), &socket, nodes);
    config.mqtt = mqtt;
    config.name = Some(name);
    config.doc = Some(doc_hook(project.root.clone(), socket.clone()));
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(serve(config, a.json))
}

/// `mux.doc` (`d: {p: [node, …path]}`): what `moat doc --json` prints.
/// The node is asked what it runs through this mux's own socket, as any
/// client would; the project (its docs) is read afresh for each request.
fn doc_hook(root: PathBuf, socket: PathBuf) -> DocHook {
    use futures::FutureExt;
    use mux_runtime::error::{RemoteError, WellKnown};
    let bad = |why: String| RemoteError::well_known(WellKnown::Value, vec![Value::from(why)]);
    DocHook(std::sync::Arc::new(move |d: Value| {
        let (root, socket) = (root.clone(), socket.clone());
        async move {
            let p = match d.get("p").and_then(Value::as_array) {
                Some(p) if !p.is_empty() => p.to_vec(),
                _ => return Err(bad("mux.doc: p=[node, …path] names what to document".into())),
            };
            let path: Vec<PathElem> = p[1..]
                .iter()
                .map(|e| match (e.as_str(), e.as_int()) {
                    (Some(s), _) => Ok(PathElem::Name(s.to_owned())),
                    (_, Some(i)) => Ok(PathElem::Index(i as i64)),
                    _ => Err(bad(format!("mux.doc: p holds {}", e.type_name()))),
                })
                .collect::<Result<_, _>>()?;
            let node = p[0]
                .as_str()
                .ok_or_else(|| bad("mux.doc: p[0] must be a node's name".into()))?
                .to_owned();
            let doc = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
                if node == moat::client::MUX_APP {
                    return moat::doc::describe_mux(&path);
                }
                let project = Project::load(&root)?;
                let state =
                    tokio::runtime::Handle::current().block_on(ask_node(&project, &node, &socket));
                moat::doc::describe(&project, &node, &path, &state)
            })
            .await
            .map_err(|e| RemoteError::generic(format!("mux.doc: {e}")))?
            .map_err(|e| bad(format!("{e:#}")))?;
            mux_runtime::notation::from_json(&doc)
                .map_err(|e| RemoteError::generic(format!("mux.doc: {e}")))
        }
        .boxed()
    }))
}

/// The node's state for `mux.doc`, asked through this mux's socket.
async fn ask_node(project: &Project, node: &str, socket: &std::path::Path) -> moat::doc::NodeState {
    let asked = async {
        if project.node(node).is_none() {
            anyhow::bail!("no node `{node}` in this project");
        }
        let endpoint = mux_runtime::endpoint::Endpoint::connect_unix(socket).await?;
        let client = moat::client::Client::from_endpoint(
            endpoint,
            node,
            moat::client::Route::Mux(socket.to_owned()),
        )
        .with_timeout(Duration::from_secs(5));
        moat::doc::query(project, node, &client).await
    };
    match asked.await {
        Ok(s) => s,
        Err(e) => moat::doc::NodeState {
            table: None,
            apps: moat::doc::configured_apps(project, node),
            unreached: Some(format!("{e:#}").lines().next().unwrap_or("").to_owned()),
        },
    }
}

/// The nodes this mux holds: those named with `--node`, else those whose
/// `mux` is `name` and those naming no mux.
pub fn held_nodes<'a>(
    all: &'a [Node],
    named: &[String],
    name: &str,
) -> anyhow::Result<Vec<&'a Node>> {
    if named.is_empty() {
        let held: Vec<&Node> = all
            .iter()
            .filter(|n| n.mux.as_deref().is_none_or(|m| m == name))
            .collect();
        if held.is_empty() {
            bail!(
                "this mux (`{name}`) holds no node: every node names another mux; \
                 start it with --name NAME matching a node's `mux`, or --node NAME"
            );
        }
        return Ok(held);
    }
    named
        .iter()
        .map(|wanted| {
            all.iter().find(|n| &n.name == wanted).with_context(|| {
                let names: Vec<&str> = all.iter().map(|n| n.name.as_str()).collect();
                format!(
                    "--node {wanted}: no such node; the project's nodes: {}",
                    names.join(", ")
                )
            })
        })
        .collect()
}

/// `moat mux ls`: asks the running mux.
fn ls(socket: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let target = moat::client::Target {
        node: Some(moat::client::MUX_APP.to_owned()),
        socket,
        ..Default::default()
    };
    moat::client::block_on(async move {
        let client = moat::client::Client::connect(&target).await?;
        let ls = client
            .endpoint_call(&[PathElem::from("mux"), PathElem::from("ls")], Value::Nil)
            .await
            .map_err(|e| anyhow::anyhow!("mux.ls: {e}"))?;
        if json {
            println!("{}", moat::render::json_line(&ls));
            return Ok(());
        }
        let Value::Map(nodes) = ls else {
            bail!("mux.ls answered {} instead of a map", ls.type_name());
        };
        println!(
            "{:<16} {:<8} {:<12} {:<10} WHERE",
            "NODE", "STATE", "MUX", "KIND"
        );
        for (name, info) in nodes {
            let text = |k: &str| {
                info.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_owned()
            };
            println!(
                "{:<16} {:<8} {:<12} {:<10} {}",
                name.as_str().unwrap_or("?"),
                text("state"),
                text("mux"),
                text("kind"),
                text("target")
            );
        }
        Ok(())
    })?
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
    if let Some(bridge) = mux.bridge() {
        let bridge = bridge.clone();
        tokio::spawn(async move {
            let mut up = false;
            loop {
                let now = bridge.wait_connected(Duration::from_secs(1)).await;
                if now != up {
                    up = now;
                    let state = if up { "connected" } else { "disconnected" };
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"event": "mqtt", "state": state, "session": bridge.session(), "prefix": bridge.topics().prefix()})
                        );
                    } else {
                        eprintln!(
                            "mqtt: {state} as `{}` under {}",
                            bridge.session(),
                            bridge.topics().prefix()
                        );
                    }
                }
                if up {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
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
