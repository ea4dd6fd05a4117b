//! How a client verb (`cmd`, `cfg`, `fs`, `monitor`) reaches a node.
//!
//! 1. Through the project's multiplexer when one runs: its Unix socket is
//!    `--socket PATH`, else `$MOAT_SOCKET`, else the project's default
//!    ([`default_socket`]: `$XDG_RUNTIME_DIR/moat/<project>-<id>.sock`, or
//!    `/tmp/moat-<uid>/<project>-<id>.sock` without `XDG_RUNTIME_DIR`, the
//!    same rule `moat mux` binds by; the folder must be the user's and
//!    private, the socket the user's). Command
//!    paths get the node's name in front (`["pump", "sys", "info"]`).
//! 2. Otherwise directly over the node's link from the manifest (TCP to
//!    `host:port`).
//!
//! An explicitly named socket must work (no silent fallback); the default
//! one is used when something listens on it. `--direct` skips the mux.
//! Either way the verbs see one [`Client`] with the same calls and the same
//! results, so their output does not depend on the route.

use crate::manifest::{Link, Node};
use crate::project::{Project, ProjectError};
use anyhow::{bail, Context};
use mux_runtime::auth::{AuthConfig, Peer};
use mux_runtime::endpoint::{Endpoint, NoHandler, ReplyStream};
use mux_runtime::error::RemoteError;
use mux_runtime::framing::SerialPackerConfig;
use mux_runtime::link::{
    self, ByteCounters, ConnectCtx, LinkOptions, LinkSpec, NodeLink, ProcessSpec, SerialSpec,
};
use mux_runtime::message::PathElem;
use mux_runtime::reliable;
use mux_runtime::Value;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The mux's own app: `moat cmd mux ls` talks to it.
pub const MUX_APP: &str = mux_runtime::mux::route::MUX_APP;

/// Environment variable naming the mux's socket.
pub const SOCKET_ENV: &str = "MOAT_SOCKET";

/// Which node, and which way to it: the options every client verb takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Target {
    /// The node to talk to (default: the project's only node).
    #[arg(long, short = 'n', value_name = "NODE")]
    pub node: Option<String>,
    /// The multiplexer's socket (default: $MOAT_SOCKET, else the project's
    /// socket under $XDG_RUNTIME_DIR/moat/).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Talk to the node over its own link even when a mux runs.
    #[arg(long, conflicts_with = "socket")]
    pub direct: bool,
    /// Give up on a call the node has not answered after SECONDS (default
    /// 30; streams wait as long as they run).
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
}

/// How long a call waits for its answer unless `--timeout` says otherwise.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "`{s}` is not a number of seconds above 0 (e.g. 5 or 0.5)"
        )),
    }
}

/// The default socket of the project called `name` with id `id`: the one
/// `moat mux` binds, `$XDG_RUNTIME_DIR/moat/<name>-<id>.sock`, else
/// `/tmp/moat-<uid>/<name>-<id>.sock`.
pub fn default_socket(name: &str, id: &str) -> PathBuf {
    crate::runtime_dir::socket_path(name, id)
}

/// Where the mux's socket is looked for, and whether the user named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketChoice {
    pub path: PathBuf,
    /// Named by `--socket` or `MOAT_SOCKET`: it must work.
    pub explicit: bool,
}

/// Picks the socket: the flag, else `env_socket` (`$MOAT_SOCKET`), else
/// the project's default. `None` when none can be named (no project and
/// nothing explicit).
pub fn choose_socket(
    flag: Option<&Path>,
    env_socket: Option<OsString>,
    project: Option<&str>,
    default: impl FnOnce(&str) -> PathBuf,
) -> Option<SocketChoice> {
    if let Some(p) = flag {
        return Some(SocketChoice {
            path: p.to_owned(),
            explicit: true,
        });
    }
    if let Some(p) = env_socket.filter(|p| !p.is_empty()) {
        return Some(SocketChoice {
            path: PathBuf::from(p),
            explicit: true,
        });
    }
    project.map(|name| SocketChoice {
        path: default(name),
        explicit: false,
    })
}

/// The node a verb talks to: the one named, else the project's only node.
pub fn pick_node<'p>(project: &'p Project, name: Option<&str>) -> anyhow::Result<&'p Node> {
    let nodes = &project.manifest.nodes;
    let names = || {
        nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(name) => project.node(name).with_context(|| {
            if nodes.is_empty() {
                format!("no node `{name}`: the project has no nodes (add a [nodes.NAME] table to moat.toml)")
            } else {
                format!("no node `{name}` in this project; its nodes: {}", names())
            }
        }),
        None => match nodes.as_slice() {
            [only] => Ok(only),
            [] => bail!("the project has no nodes: add a [nodes.NAME] table to moat.toml"),
            _ => bail!(
                "the project has several nodes ({}): say which with --node NAME",
                names()
            ),
        },
    }
}

/// The way a [`Client`] reaches its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Through the mux listening on this socket.
    Mux(PathBuf),
    /// Directly over TCP to `host:port`.
    Tcp(String),
    /// Directly over a serial or USB device (`serial /dev/ttyUSB0`).
    Device(String),
    /// Through an MQTT broker (`moat cmd --mqtt URL`) to the mux holding
    /// the node.
    Mqtt(String),
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Mux(p) => write!(f, "mux at {}", p.display()),
            Route::Tcp(a) => write!(f, "tcp {a}"),
            Route::Device(d) => f.write_str(d),
            Route::Mqtt(url) => write!(f, "MQTT broker {url}"),
        }
    }
}

/// A connection to one node, through the mux or directly.
#[derive(Clone)]
pub struct Client {
    endpoint: Endpoint,
    /// `[node]` through the mux, empty when direct.
    prefix: Vec<PathElem>,
    node: String,
    route: Route,
    /// Largest message the node accepts (cfg's `link.*.m`, default 1024).
    message_limit: usize,
    /// A direct serial/USB link (kept open while the client lives; its
    /// console output is [`Client::console`]).
    link: Option<NodeLink>,
    /// How long a call waits for its answer.
    timeout: Duration,
    /// Who answered an authenticated direct link's handshake.
    peer: Option<Peer>,
    /// The broker session of a client over MQTT (closed with the client).
    bridge: Option<mux_runtime::mqtt::Bridge>,
}

/// Message size assumed when the node's config names none (the node
/// runtime's default).
pub const DEFAULT_MESSAGE_LIMIT: usize = mux_runtime::link::NODE_MESSAGE_LIMIT;

impl Client {
    /// Connects to the node `target` names, in the project found from the
    /// current directory.
    pub async fn connect(target: &Target) -> anyhow::Result<Client> {
        let project = match Project::find_from_cwd() {
            Ok(p) => Some(p),
            // Outside a project, a named socket and node are enough.
            Err(ProjectError::NotFound { .. })
                if target.node.is_some()
                    && (target.socket.is_some() || std::env::var_os(SOCKET_ENV).is_some()) =>
            {
                None
            }
            Err(e) => return Err(e.into()),
        };
        Client::connect_in(project.as_ref(), target).await
    }

    /// The same client giving up on calls after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Connects to the node `target` names in `project`.
    pub async fn connect_in(project: Option<&Project>, target: &Target) -> anyhow::Result<Client> {
        let client = Client::connect_route(project, target).await?;
        Ok(client.with_timeout(target.timeout.unwrap_or(CALL_TIMEOUT)))
    }

    async fn connect_route(project: Option<&Project>, target: &Target) -> anyhow::Result<Client> {
        // `mux` names the mux's own app (`moat cmd mux ls`): no node
        // can have that name, and only a mux answers it.
        let to_mux = target.node.as_deref() == Some(MUX_APP);
        let node = match project {
            Some(p) if !to_mux => Some(pick_node(p, target.node.as_deref())?),
            _ => None,
        };
        let node_name = node
            .map(|n| n.name.clone())
            .or_else(|| target.node.clone())
            .context("say which node with --node NAME")?;
        if !target.direct {
            let choice = choose_socket(
                target.socket.as_deref(),
                std::env::var_os(SOCKET_ENV),
                project.map(Project::name),
                |name| default_socket(name, project.map_or("", Project::id)),
            );
            if let Some(choice) = choice {
                if let Some(client) = Client::via_mux(&choice, &node_name).await? {
                    return Ok(client);
                }
            }
        }
        if to_mux {
            bail!("no mux is running for this project: start `moat mux` (or name its socket with --socket)");
        }
        let node = node.context("talking to a node directly needs its project (moat.toml)")?;
        let project = project.expect("a node implies its project");
        Client::direct(project, node).await
    }

    /// Through the mux at `choice`; `None` when the default socket has no
    /// mux behind it.
    async fn via_mux(choice: &SocketChoice, node: &str) -> anyhow::Result<Option<Client>> {
        if !choice.explicit {
            // The default folder must be ours and private before anything
            // in it is trusted (see crate::runtime_dir).
            if let Some(dir) = choice.path.parent().filter(|d| d.exists()) {
                crate::runtime_dir::ensure_private(dir)?;
            }
        }
        if !crate::runtime_dir::check_socket(&choice.path)? && !choice.explicit {
            return Ok(None);
        }
        match Endpoint::connect_unix(&choice.path).await {
            Ok(endpoint) => Ok(Some(Client {
                endpoint,
                prefix: vec![PathElem::Name(node.to_owned())],
                node: node.to_owned(),
                route: Route::Mux(choice.path.clone()),
                message_limit: DEFAULT_MESSAGE_LIMIT,
                link: None,
                timeout: CALL_TIMEOUT,
                peer: None,
                bridge: None,
            })),
            Err(e) if choice.explicit => Err(anyhow::Error::new(e).context(format!(
                "the mux socket {} was named explicitly (--socket or ${SOCKET_ENV}); start `moat mux` or drop it to talk to the node directly",
                choice.path.display()
            ))),
            Err(e) => {
                tracing::debug!(
                    "no mux at {} ({e}); talking to the node directly",
                    choice.path.display()
                );
                Ok(None)
            }
        }
    }

    /// Over the node's own link.
    pub async fn direct(project: &Project, node: &Node) -> anyhow::Result<Client> {
        match &node.link {
            Link::Tcp { host, port, .. } => {
                let addr = format!("{host}:{port}");
                let auth = auth_config(project, node)?;
                let (endpoint, peer) = connect_tcp(&addr, &node.name, auth, None).await?;
                let limit = peer
                    .as_ref()
                    .and_then(|p| p.max_message)
                    .map_or(DEFAULT_MESSAGE_LIMIT, |m| (m as usize).min(DEFAULT_MESSAGE_LIMIT));
                endpoint.set_peer_limit(limit, &format!("node `{}`", node.name));
                let mut client = Client::from_endpoint(endpoint, &node.name, Route::Tcp(addr));
                client.peer = peer;
                Ok(client)
            }
            Link::Process => bail!(
                "node `{}` has a process link: it runs as a child of the mux; start `moat mux` and try again",
                node.name
            ),
            Link::Serial(_) | Link::Usb => {
                let spec = link_spec(project, node)?;
                let route = Route::Device(format!("{} {}", spec.kind(), spec.target()));
                let options = LinkOptions {
                    connect_timeout: DEVICE_TIMEOUT,
                    ..LinkOptions::default()
                };
                let auth = auth_config(project, node)?;
                let link = NodeLink::spawn_auth(&node.name, spec, auth, Arc::new(NoHandler), options);
                let up = tokio::time::timeout(DEVICE_TIMEOUT, link.wait_up()).await;
                let Ok(Some(endpoint)) = up else {
                    let why = link.state().to_string();
                    link.stop().await;
                    bail!("cannot reach node `{}` over {route}: {why}", node.name);
                };
                let mut client = Client::from_endpoint(endpoint, &node.name, route);
                client.peer = link.peer();
                client.link = Some(track(link));
                Ok(client)
            }
        }
    }

    /// Wraps an endpoint already connected to a node (`prefix` empty) or a
    /// mux (`prefix` = `[node]`).
    pub fn from_endpoint(endpoint: Endpoint, node: &str, route: Route) -> Client {
        let prefix = match route {
            Route::Mux(_) => vec![PathElem::Name(node.to_owned())],
            Route::Tcp(_) | Route::Device(_) | Route::Mqtt(_) => Vec::new(),
        };
        Client {
            endpoint,
            prefix,
            node: node.to_owned(),
            route,
            message_limit: DEFAULT_MESSAGE_LIMIT,
            link: None,
            timeout: CALL_TIMEOUT,
            peer: None,
            bridge: None,
        }
    }

    /// Through the MQTT broker at `url`, without a local mux: a client
    /// session of its own on the broker, requests to the node's request
    /// topic, answered by the mux holding it (docs/mqtt.md).
    /// `ca`: the broker's CA for `mqtts://` (else `[mqtt] ca`).
    pub async fn via_mqtt(
        project: &Project,
        node: &str,
        url: &str,
        ca: Option<&Path>,
    ) -> anyhow::Result<Client> {
        let config = mqtt_config(project, Some(url), ca)?.expect("a URL was given");
        let session = format!("cmd-{}-{:08x}", std::process::id(), rand_u32());
        let bridge = mux_runtime::mqtt::bridge::Setup::new(
            &config,
            project.name(),
            &session,
            Vec::new(),
            false,
        )?
        .start(std::sync::Weak::new());
        if !bridge.wait_connected(MQTT_WAIT).await {
            let why = bridge.last_error();
            bridge.shutdown().await;
            match why {
                Some(why) => bail!("cannot reach the MQTT broker at {url}: {why}"),
                None => bail!(
                    "cannot reach the MQTT broker at {url} within {} s: is it running, and is the URL right?",
                    MQTT_WAIT.as_secs()
                ),
            }
        }
        if bridge.wait_node(node, MQTT_WAIT).await.is_none() {
            bridge.shutdown().await;
            bail!(
                "no mux has announced node `{node}` on the broker at {url} (topic prefix {}): \
                 start `moat mux --mqtt {url}` on the host the node is wired to",
                bridge.topics().prefix()
            );
        }
        let endpoint = bridge.endpoint(node).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut client = Client::from_endpoint(endpoint, node, Route::Mqtt(url.to_owned()));
        client.bridge = Some(bridge);
        Ok(client)
    }

    /// Who answered the handshake of a direct authenticated link: the
    /// node's identity, the largest message it accepts (`m`), and which
    /// key it has (`key_index` 1: the pending key of an interrupted
    /// `moat key rotate`). `None` through the mux (its `mux ls` says) or
    /// on a link without authentication.
    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_ref()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The underlying endpoint (for subscriptions).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn full_path(&self, path: &[PathElem]) -> Vec<PathElem> {
        self.prefix.iter().chain(path).cloned().collect()
    }

    /// Calls `path` on the node with keyword arguments `kwargs` (a map);
    /// gives up (cancelling it) when the node has not answered within the
    /// client's timeout.
    pub async fn call(&self, path: &[PathElem], kwargs: Value) -> Result<Value, RemoteError> {
        let call = self.endpoint.call(self.full_path(path), kwargs);
        self.within(path, call).await
    }

    async fn within(
        &self,
        path: &[PathElem],
        call: impl std::future::Future<Output = Result<Value, RemoteError>>,
    ) -> Result<Value, RemoteError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(RemoteError::generic(format!(
                "node `{}` did not answer {} within {} s (over {}; --timeout SECONDS waits longer)",
                self.node,
                crate::args::show_path(path),
                self.timeout.as_secs_f64(),
                self.route
            ))),
        }
    }

    /// Calls a path given as names (`["fs", "ls"]`) with `kwargs`.
    pub async fn call_names(&self, path: &[&str], kwargs: Value) -> Result<Value, RemoteError> {
        let path: Vec<PathElem> = path.iter().map(|s| PathElem::from(*s)).collect();
        self.call(&path, kwargs).await
    }

    /// Streams `path` every `every_ms` ms; dropping the stream cancels it.
    pub fn stream(&self, path: &[PathElem], kwargs: Value, every_ms: u32) -> ReplyStream {
        self.endpoint.stream(self.full_path(path), kwargs, every_ms)
    }

    /// The largest message the node accepts: the smallest `m` among its
    /// configured links (read with `cfg.r`), never more than the node
    /// runtime's default, which is also its ceiling.
    pub async fn message_limit(&mut self) -> usize {
        let p = Value::map([("p", Value::from(vec![Value::from("link")]))]);
        if let Ok(Value::Map(links)) = self.call_names(&["cfg", "r"], p).await {
            let limit = links
                .iter()
                .filter_map(|(_, c)| c.get("m").and_then(Value::as_int))
                .filter_map(|m| usize::try_from(m).ok())
                .min();
            if let Some(m) = limit {
                self.message_limit = m.min(DEFAULT_MESSAGE_LIMIT);
            }
        }
        self.message_limit
    }

    /// Console output of a direct serial/USB link, from now on; `None`
    /// for other routes (through the mux it is `mux.console`).
    pub fn console(&self) -> Option<tokio::sync::broadcast::Receiver<bytes::Bytes>> {
        self.link.as_ref().map(NodeLink::console)
    }

    /// Calls `path` from the root of whatever the client is connected to
    /// (the mux's own apps, e.g. `["mux", "ls"]`), without the node prefix.
    pub async fn endpoint_call(
        &self,
        path: &[PathElem],
        kwargs: Value,
    ) -> Result<Value, RemoteError> {
        let call = self.endpoint.call(path.to_vec(), kwargs);
        self.within(path, call).await
    }

    /// Streams `path` from the root of whatever the client is connected to
    /// (e.g. `["mux", "console"]`), without the node prefix.
    pub fn endpoint_stream(&self, path: &[PathElem], kwargs: Value, every_ms: u32) -> ReplyStream {
        self.endpoint.stream(path.to_vec(), kwargs, every_ms)
    }

    /// Closes the connection (and a direct device link).
    pub async fn close(&self) {
        self.endpoint.close();
        if let Some(bridge) = &self.bridge {
            bridge.shutdown().await;
        }
        if let Some(link) = &self.link {
            link.stop().await;
        }
    }
}

/// How long a client over MQTT waits for the broker, and then for the
/// node's retained state.
pub const MQTT_WAIT: Duration = Duration::from_secs(10);

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // A client id unique enough among one broker's sessions; getrandom
    // cannot fail on Linux for 4 bytes.
    // SAFETY: the buffer is valid for its length.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    u32::from_le_bytes(b)
}

/// The broker the project's muxes join: `[mqtt]` in moat.toml, its URL
/// replaced by `url` (`--mqtt URL`) when given; `None` when neither names
/// a broker. The password comes from the secret `[mqtt] password` names.
/// `ca` (`--mqtt-ca FILE`) replaces `[mqtt] ca`.
pub fn mqtt_config(
    project: &Project,
    url: Option<&str>,
    ca: Option<&Path>,
) -> anyhow::Result<Option<mux_runtime::mqtt::MqttConfig>> {
    use mux_runtime::mqtt::MqttConfig;
    let section = project.manifest.mqtt.clone().unwrap_or_default();
    let Some(url) = url.map(str::to_owned).or(section.url.clone()) else {
        return Ok(None);
    };
    let mut config = MqttConfig::new(&url);
    // Paths in moat.toml are the project's; on the command line, the
    // caller's (moat has not changed folder).
    config.tls.ca = ca
        .map(Path::to_path_buf)
        .or_else(|| section.ca.as_ref().map(|c| project.root.join(c)));
    if let (Some(cert), Some(key)) = (&section.cert, &section.key) {
        config.tls.client = Some((project.root.join(cert), project.root.join(key)));
    }
    config.client_id = section.client_id;
    config.prefix = section.prefix;
    if let Some(v) = &section.version {
        config.version = v
            .parse()
            .map_err(|e: String| anyhow::anyhow!("[mqtt] version: {e}"))?;
    }
    if let Some(k) = section.keep_alive {
        config.keep_alive = Duration::from_secs(u64::from(k));
    }
    if let Some(m) = section.max_message {
        config.max_message = m as usize;
    }
    config.entities = section
        .ha
        .iter()
        .map(|e| {
            use mux_runtime::mqtt::ha;
            ha::Entity {
                id: e.id.clone(),
                node: e.node.clone(),
                kind: ha::Kind::parse(&e.kind).expect("the manifest checked the kind"),
                path: ha::dotted(&e.path),
                name: e.name.clone(),
                every_ms: e.every.unwrap_or(10_000),
                unit: e.unit.clone(),
                device_class: e.device_class.clone(),
            }
        })
        .collect();
    if let Some(user) = section.user {
        let password = match &section.password_secret {
            Some(name) => {
                let secrets = crate::secrets::Secrets::load(&project.root)?;
                match secrets.get(name)? {
                    Some(Value::Str(p)) => p,
                    Some(_) => bail!("the secret `{name}` ([mqtt] password) must be a string"),
                    None => bail!(
                        "[mqtt] password names the secret `{name}`, which is neither in \
                         secrets.toml nor in ${}",
                        crate::secrets::env_name(name)
                    ),
                }
            }
            None => String::new(),
        };
        config.credentials = Some((user, password));
    }
    Ok(Some(config))
}

/// What the host side of an authenticated link needs (docs/auth.md): the
/// keys to try, in order (the current one, then one a `moat key rotate`
/// left pending), and the identity the node must answer with.
#[derive(Clone)]
pub struct HostAuth {
    pub keys: Vec<crate::keys::Key>,
    /// The node's name (`auth.n`).
    pub node: String,
    /// This project's id (`auth.p`) and name (for messages).
    pub project_id: String,
    pub project_name: String,
}

impl std::fmt::Debug for HostAuth {
    // Never prints the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostAuth")
            .field("keys", &self.keys.len())
            .field("node", &self.node)
            .field("project_id", &self.project_id)
            .finish()
    }
}

/// How the host authenticates `node`'s link: `None` when the manifest
/// turns authentication off on it (`auth = false`, or a serial, USB or
/// process link without `auth = true`).
pub fn host_auth(project: &Project, node: &Node) -> anyhow::Result<Option<HostAuth>> {
    if !node.link_auth {
        return Ok(None);
    }
    let keys = crate::keys::candidates(&project.root, &node.name)?;
    if keys.is_empty() {
        bail!(
            "node `{}` has no key (.moat/keys/{} or ${}): `moat build` makes one, and `moat flash` or `moat cfg upload` gives it to the node",
            node.name,
            node.name,
            crate::keys::env_name(&node.name)
        );
    }
    Ok(Some(HostAuth {
        keys,
        node: node.name.clone(),
        project_id: project.id().to_owned(),
        project_name: project.name().to_owned(),
    }))
}

/// How `node`'s link authenticates (`None`: it does not): the keys are
/// read again at every handshake (current, then pending), so a link kept
/// up across a `moat key rotate` (the mux's) follows the new key.
pub fn auth_config(project: &Project, node: &Node) -> anyhow::Result<Option<AuthConfig>> {
    let Some(auth) = host_auth(project, node)? else {
        return Ok(None);
    };
    let (root, name, first) = (project.root.clone(), node.name.clone(), auth.keys.clone());
    let keys = move || match crate::keys::candidates(&root, &name) {
        Ok(keys) if !keys.is_empty() => keys,
        // Unreadable now: the keys it started with.
        _ => first.clone(),
    };
    Ok(Some(
        AuthConfig::new(keys, &auth.node, &auth.project_id, &auth.project_name)
            .encrypted(node.link_encrypt),
    ))
}

/// One TCP connection to node `name` at `addr`, authenticated with `auth`
/// when given, its bytes counted in `bytes` when given.
pub async fn connect_tcp(
    addr: &str,
    name: &str,
    auth: Option<AuthConfig>,
    bytes: Option<Arc<ByteCounters>>,
) -> anyhow::Result<(Endpoint, Option<Peer>)> {
    let mut ctx = ConnectCtx::new(name, auth, DEVICE_TIMEOUT);
    if let Some(bytes) = bytes {
        ctx.bytes = bytes;
    }
    let spec = LinkSpec::Tcp {
        addr: addr.to_owned(),
    };
    match link::connect_once(&spec, &ctx).await {
        Ok(conn) => Ok((conn.endpoint, ctx.peer())),
        // The node answered, but not as this project's node.
        Err(e) if ctx.auth_counters.failed.load(std::sync::atomic::Ordering::Relaxed) > 0 => {
            bail!("node `{name}` at {addr}: {e}")
        }
        Err(e) => bail!(
            "node `{name}` is not reachable: {e} (is it running? a unix node starts with `moat run --node {name}`)"
        ),
    }
}

/// How long a direct link may take to come up (connect and handshake).
const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the mux (or a direct client) reaches `node`: its manifest link as
/// a [`LinkSpec`]. A process link starts the installed firmware
/// ([`crate::local_node::command`]).
pub fn link_spec(project: &Project, node: &Node) -> anyhow::Result<LinkSpec> {
    let device = || {
        node.port.clone().with_context(|| {
            format!(
                "node `{}` names no device: set `port = \"/dev/ttyUSB0\"` in [nodes.{}] of moat.toml",
                node.name, node.name
            )
        })
    };
    Ok(match &node.link {
        Link::Tcp { host, port, .. } => LinkSpec::Tcp {
            addr: format!("{host}:{port}"),
        },
        Link::Usb => LinkSpec::Usb {
            path: device()?,
            baud: crate::manifest::DEFAULT_BAUD,
        },
        Link::Serial(s) => LinkSpec::Serial(SerialSpec {
            path: device()?,
            baud: s.baud,
            packer: SerialPackerConfig {
                max_packet: s.max as usize,
                ..SerialPackerConfig::default()
            },
            reliable: reliable::Config {
                window: u16::try_from(s.window).unwrap_or(u16::MAX),
                timeout_ms: u64::from(s.timeout_ms),
                retries: s.retries,
            },
        }),
        Link::Process => LinkSpec::Process(own_session(local_process(project, node)?)),
    })
}

/// How to start `node` on this machine (the unix firmware, or the board's
/// emulator), in the node's folder.
pub fn local_process(project: &Project, node: &Node) -> anyhow::Result<ProcessSpec> {
    let cmd = crate::local_node::command(project, node)?;
    let args = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cwd = cmd
        .get_current_dir()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| crate::local_node::node_dir(project, &node.name));
    Ok(ProcessSpec::new(cmd.get_program(), args, cwd))
}

/// `spec` started through `setsid` (util-linux), in a session and process
/// group of its own: Ctrl-C in the terminal of `moat mux`, `moat demo` or
/// `moat flash --run` signals that process group, and a node in it died of
/// the SIGINT before its runtime could clear its crash marker (`moat.run`),
/// so it booted its fallback config next time. Out of the group, the node
/// is stopped by the mux (its stdin closes) and exits cleanly. `setsid`
/// execs the program in place (same pid: stopping it still reaches it).
/// Without `setsid` on PATH the node is started directly. Only for process
/// links: such a node also ends when its stdin closes because the mux died
/// abruptly; an emulator (which does not read its stdin) would outlive it.
fn own_session(spec: ProcessSpec) -> ProcessSpec {
    // A missing program keeps its own "cannot start … run moat flash" error.
    let program = spec.cwd.join(&spec.program);
    let Some(setsid) = crate::tools::find_program("setsid").filter(|_| program.is_file()) else {
        return spec;
    };
    let mut args = vec![spec.program.to_string_lossy().into_owned()];
    args.extend(spec.args);
    ProcessSpec::new(setsid, args, spec.cwd)
}

/// Runs `fut` on a fresh single-threaded tokio runtime (each client verb
/// is one short async program).
pub fn block_on<F: std::future::Future>(fut: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let out = rt.block_on(fut);
    // Direct links a verb left open are closed properly, not dropped with
    // the runtime: a serial node is told the session ended (`n: 0`), so
    // the next command's handshake is answered at once.
    let open = std::mem::take(&mut *OPEN_LINKS.lock().unwrap_or_else(|p| p.into_inner()));
    rt.block_on(async {
        for link in open {
            link.stop().await;
        }
    });
    Ok(out)
}

/// Direct links opened by this process (see [`block_on`]).
static OPEN_LINKS: std::sync::Mutex<Vec<NodeLink>> = std::sync::Mutex::new(Vec::new());

fn track(link: NodeLink) -> NodeLink {
    OPEN_LINKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(link.clone());
    link
}
