//! The multiplexer: one link per node, one Unix socket for any number of
//! clients, each speaking the protocol (README.md "How a verb reaches a node"; the wire protocol in docs/protocol.md).
//!
//! The mux root holds one sub-tree per node (`[node, …path]`) plus its own
//! `mux` app ([`apps`]). A client's request is re-issued on the node's
//! link with the mux's own sequence numbers (each link's
//! [`Endpoint`] numbers its requests); the answer goes back only to the
//! client that asked, under the client's number. A client that disconnects
//! has its open requests and streams cancelled on the node (its endpoint
//! drops the forwarding tasks, which cancel on drop). Unsolicited node
//! messages go to every client with the node's name prefixed; a lost link
//! fails its pending requests with `_LnkErr` at once and sends
//! `[node, "link"] false` to every client. Requests a node sends up are
//! resolved from the mux root, so nodes can call each other.
//!
//! With an MQTT bridge ([`crate::mqtt`]) the mux also serves its nodes to
//! the broker and forwards requests for nodes other muxes hold to it.
//!
//! Host apps: a watchdog feeder (`sys.wdt` every `t/2` to nodes whose
//! config has a `wdt` section, while their link is up) and console capture
//! per node (`mux.console`, readable and streamable).

pub mod apps;
pub mod console;
pub mod route;
mod router;
pub mod socket;

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::endpoint::{link_down, Endpoint, EndpointConfig};
use crate::error::RemoteError;
use crate::framing::StreamCodec;
use crate::link::{LinkEvent, LinkOptions, LinkSpec, NodeLink};
use crate::message::{self, Path};
use crate::value::Value;
use console::Capture;
pub use router::Uplink;
pub use socket::BindError;

/// Messages queued for a client beyond which it misses unsolicited ones.
const BACKLOG_LIMIT: usize = 4 * crate::endpoint::HIGH_WATER;

/// Requests the mux keeps open on one node at once (streams included): the
/// node runtime serves at most 16 per link and answers more with `busy`.
/// Further requests wait for a slot.
pub const NODE_REQUESTS: usize = 16;

/// How long a request waits for a free slot on its node before failing.
pub const SLOT_WAIT: Duration = Duration::from_secs(30);

/// Default console capture per node: 64 KiB.
pub const CONSOLE_BUFFER: usize = 64 * 1024;

/// One node as the mux sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    pub name: String,
    pub link: LinkSpec,
    /// Authenticate the link (docs/auth.md); `None`: it does not.
    pub auth: Option<crate::auth::AuthConfig>,
    /// The node's `wdt.t`: feed it `sys.wdt` every half of this. `None`:
    /// the node has no `wdt` section.
    pub watchdog: Option<Duration>,
}

/// Everything the mux serves.
#[derive(Clone, Debug)]
pub struct MuxConfig {
    /// The project's name (shown by `mux.info`).
    pub project: String,
    pub socket: PathBuf,
    pub nodes: Vec<NodeConfig>,
    pub link_options: LinkOptions,
    /// Console bytes kept per node.
    pub console_buffer: usize,
    /// Requests open on one node at once ([`NODE_REQUESTS`]).
    pub node_requests: usize,
    /// Join the project's other muxes through this broker.
    pub mqtt: Option<crate::mqtt::MqttConfig>,
    /// The mux's name on the broker (default: the host's name).
    pub name: Option<String>,
    /// Answers `mux.doc` ([`apps::DocHandler`]).
    pub doc: Option<DocHook>,
}

/// A [`apps::DocHandler`] in the config (shown as `DocHook` in debug output).
#[derive(Clone)]
pub struct DocHook(pub apps::DocHandler);

impl std::fmt::Debug for DocHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DocHook")
    }
}

impl MuxConfig {
    pub fn new(project: &str, socket: impl Into<PathBuf>, nodes: Vec<NodeConfig>) -> MuxConfig {
        MuxConfig {
            project: project.to_owned(),
            socket: socket.into(),
            nodes,
            link_options: LinkOptions::default(),
            console_buffer: CONSOLE_BUFFER,
            node_requests: NODE_REQUESTS,
            mqtt: None,
            name: None,
            doc: None,
        }
    }
}

/// The host's name as one topic level (characters MQTT topics and moat
/// names dislike become `-`): the default name of a mux on the broker.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name: String = String::from_utf8_lossy(&buf[..end])
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if ok && !name.is_empty() {
        name
    } else {
        "mux".to_owned()
    }
}

/// Why the mux did not start.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("two nodes are called `{0}`: node names must be unique")]
    DuplicateNode(String),
    #[error("a node cannot be called `mux`: that name is the mux's own app")]
    ReservedName,
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
}

/// A node under the mux.
pub struct NodeEntry {
    pub name: String,
    pub link: NodeLink,
    pub console: Arc<Capture>,
    pub watchdog: Option<Duration>,
    /// Request slots on the node (one is kept back for the watchdog
    /// feeder, so streams holding every slot cannot starve it).
    pub slots: Arc<Semaphore>,
}

/// What the handlers share.
pub struct Core {
    project: String,
    socket: PathBuf,
    nodes: Vec<NodeEntry>,
    clients: Mutex<HashMap<u64, Endpoint>>,
    /// The MQTT bridge, when the mux joins a broker.
    pub(crate) bridge: Option<crate::mqtt::Bridge>,
    /// Answers `mux.doc`.
    pub(crate) doc: Option<apps::DocHandler>,
}

impl Core {
    /// Where `path` goes: a node held here or (with a bridge) elsewhere,
    /// the mux app, the root.
    pub fn route(&self, path: &Path) -> route::Route {
        let remote = self
            .bridge
            .as_ref()
            .map(|b| b.remote_names())
            .unwrap_or_default();
        route::route(
            path,
            self.node_names().chain(remote.iter().map(String::as_str)),
        )
    }

    /// The bridge's endpoint for a node another mux holds, or `_LnkErr`.
    pub fn remote_endpoint(&self, name: &str) -> Result<Endpoint, RemoteError> {
        match &self.bridge {
            Some(bridge) => bridge.endpoint(name),
            None => Err(link_down(name, "no such node")),
        }
    }

    pub fn bridge(&self) -> Option<&crate::mqtt::Bridge> {
        self.bridge.as_ref()
    }

    pub fn nodes(&self) -> &[NodeEntry] {
        &self.nodes
    }

    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.name.as_str())
    }

    pub fn node(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Waits for a request slot on node `name` (up to [`SLOT_WAIT`]), then
    /// its connection. Hold the permit while the request is open.
    pub async fn reserve(
        self: Arc<Self>,
        name: &str,
    ) -> Result<(OwnedSemaphorePermit, Endpoint), RemoteError> {
        let node = self
            .node(name)
            .ok_or_else(|| link_down(name, "no such node"))?;
        // A down link fails at once, without queueing.
        self.endpoint_of(name)?;
        let slots = node.slots.clone();
        let permit = match tokio::time::timeout(SLOT_WAIT, slots.acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(link_down(name, "the mux is stopping")),
            Err(_) => {
                return Err(RemoteError::generic(format!(
                    "busy: node `{name}` has had every request slot taken for {SLOT_WAIT:?} \
                     (open streams hold theirs); close some streams or try later"
                )))
            }
        };
        Ok((permit, self.endpoint_of(name)?))
    }

    /// The node's current connection, or `_LnkErr` saying why there is none.
    pub fn endpoint_of(&self, name: &str) -> Result<Endpoint, RemoteError> {
        let node = self
            .node(name)
            .ok_or_else(|| link_down(name, "no such node"))?;
        node.link
            .endpoint()
            .ok_or_else(|| link_down(name, &node.link.state().to_string()))
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Endpoint>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn client_count(&self) -> usize {
        self.clients().len()
    }

    /// An unsolicited message to every client.
    pub fn broadcast(&self, path: Path, data: Value) {
        let clients: Vec<Endpoint> = self.clients().values().cloned().collect();
        for client in clients {
            // A client that does not read misses notices rather than
            // growing the mux's memory.
            if client.stats().queued >= BACKLOG_LIMIT {
                continue;
            }
            // A client that just went away: nothing to do.
            let _ = client.send(path.clone(), data.clone());
        }
    }
}

/// A running multiplexer.
pub struct Mux {
    core: Arc<Core>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Mux {
    /// Binds the socket (refusing one a live mux serves, replacing a stale
    /// one), starts every node's link and serves clients.
    pub async fn start(config: MuxConfig) -> Result<Mux, MuxError> {
        let mut seen = std::collections::HashSet::new();
        for node in &config.nodes {
            if node.name == route::MUX_APP {
                return Err(MuxError::ReservedName);
            }
            if !seen.insert(node.name.as_str()) {
                return Err(MuxError::DuplicateNode(node.name.clone()));
            }
        }
        let bridge = match &config.mqtt {
            Some(mqtt) => {
                let name = config.name.clone().unwrap_or_else(host_name);
                let local = config.nodes.iter().map(|n| n.name.clone()).collect();
                Some(crate::mqtt::bridge::Setup::new(
                    mqtt,
                    &config.project,
                    &name,
                    local,
                    true,
                )?)
            }
            None => None,
        };
        let listener = socket::bind(&config.socket).await?;
        let stop = CancellationToken::new();
        let core = Arc::new_cyclic(|weak: &Weak<Core>| Core {
            project: config.project.clone(),
            socket: config.socket.clone(),
            nodes: config
                .nodes
                .iter()
                .map(|n| NodeEntry {
                    name: n.name.clone(),
                    link: NodeLink::spawn_auth(
                        &n.name,
                        n.link.clone(),
                        n.auth.clone(),
                        Arc::new(Uplink {
                            node: Some(n.name.clone()),
                            core: weak.clone(),
                        }),
                        config.link_options,
                    ),
                    console: Arc::new(Capture::new(config.console_buffer)),
                    watchdog: n.watchdog,
                    slots: Arc::new(Semaphore::new(
                        config
                            .node_requests
                            .saturating_sub(usize::from(n.watchdog.is_some()))
                            .max(1),
                    )),
                })
                .collect(),
            clients: Mutex::default(),
            bridge: bridge.map(|b| b.start(weak.clone())),
            doc: config.doc.as_ref().map(|h| h.0.clone()),
        });
        let mut tasks = Vec::new();
        for node in &core.nodes {
            tasks.push(tokio::spawn(announce_link_loss(
                Arc::downgrade(&core),
                node.name.clone(),
                node.link.events(),
            )));
            tasks.push(tokio::spawn(capture_console(
                node.link.console(),
                node.console.clone(),
            )));
            if let Some(t) = node.watchdog {
                tasks.push(tokio::spawn(feed_watchdog(node.link.clone(), t)));
            }
            if let Some(bridge) = &core.bridge {
                tasks.push(tokio::spawn(
                    bridge
                        .clone()
                        .track_link(node.name.clone(), node.link.clone()),
                ));
                for sensor in bridge.sensors(&node.name) {
                    tasks.push(tokio::spawn(
                        bridge.clone().feed_sensor(sensor, node.link.clone()),
                    ));
                }
            }
        }
        tasks.push(tokio::spawn(accept(
            listener,
            Arc::downgrade(&core),
            stop.clone(),
        )));
        tracing::info!(socket = %config.socket.display(), "mux serving");
        Ok(Mux { core, stop, tasks })
    }

    pub fn socket(&self) -> &FsPath {
        &self.core.socket
    }

    /// The link of node `name`.
    pub fn link(&self, name: &str) -> Option<&NodeLink> {
        self.core.node(name).map(|n| &n.link)
    }

    pub fn client_count(&self) -> usize {
        self.core.client_count()
    }

    /// The MQTT bridge, when the mux joins a broker.
    pub fn bridge(&self) -> Option<&crate::mqtt::Bridge> {
        self.core.bridge.as_ref()
    }

    /// Stops serving: clients are disconnected, links closed (child
    /// processes asked to exit, then killed), the socket removed.
    pub async fn shutdown(self) {
        if let Some(bridge) = &self.core.bridge {
            bridge.shutdown().await;
        }
        self.stop.cancel();
        for task in &self.tasks {
            task.abort();
        }
        let clients: Vec<Endpoint> = self.core.clients().drain().map(|(_, c)| c).collect();
        for client in clients {
            client.close();
        }
        futures::future::join_all(self.core.nodes.iter().map(|n| n.link.stop())).await;
        if let Err(e) = std::fs::remove_file(&self.core.socket) {
            tracing::warn!("cannot remove {}: {e}", self.core.socket.display());
        }
    }
}

/// Accepts clients until stopped; each gets an endpoint served by the
/// router.
async fn accept(listener: UnixListener, core: Weak<Core>, stop: CancellationToken) {
    let ids = AtomicU64::new(1);
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("accepting a client failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(strong) = core.upgrade() else { return };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let client = Endpoint::spawn_with(
            Framed::new(stream, StreamCodec::default()),
            Arc::new(Uplink {
                node: None,
                core: core.clone(),
            }),
            EndpointConfig {
                name: format!("client {id}"),
            },
        );
        let closed = client.closed();
        strong.clients().insert(id, client);
        drop(strong);
        let core = core.clone();
        tokio::spawn(async move {
            closed.await;
            if let Some(core) = core.upgrade() {
                core.clients().remove(&id);
            }
        });
    }
}

/// Sends `[node, "link"] false` to every client when an up link goes down.
async fn announce_link_loss(
    core: Weak<Core>,
    node: String,
    mut events: tokio::sync::broadcast::Receiver<LinkEvent>,
) {
    let mut up = false;
    loop {
        match events.recv().await {
            Ok(LinkEvent::Up(_)) => up = true,
            Ok(LinkEvent::Down(_)) if up => {
                up = false;
                let Some(core) = core.upgrade() else { return };
                core.broadcast(message::path([node.as_str(), "link"]), Value::Bool(false));
            }
            Ok(LinkEvent::Down(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn capture_console(
    mut from: tokio::sync::broadcast::Receiver<bytes::Bytes>,
    into: Arc<Capture>,
) {
    loop {
        match from.recv().await {
            Ok(bytes) => into.push(&bytes),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                into.push(format!("\n[mux: {n} console chunks lost]\n").as_bytes())
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Keeps a node's watchdog happy while its link is up: `sys.wdt` every
/// `t/2`.
async fn feed_watchdog(link: NodeLink, t: Duration) {
    let period = (t / 2).max(Duration::from_millis(100));
    while let Some(ep) = link.wait_up().await {
        let mut ticks = tokio::time::interval(period);
        let mut complained = false;
        loop {
            tokio::select! {
                _ = ep.closed() => break,
                _ = ticks.tick() => {}
            }
            let fed = tokio::time::timeout(period, ep.call(["sys", "wdt"], Value::Nil)).await;
            match fed {
                Ok(Ok(_)) => complained = false,
                Ok(Err(e)) if !complained => {
                    complained = true;
                    tracing::warn!(node = %link.name(), "feeding the watchdog failed: {e}");
                }
                Err(_) if !complained => {
                    complained = true;
                    tracing::warn!(node = %link.name(), "sys.wdt got no answer within {period:?}");
                }
                _ => {}
            }
        }
    }
}
