//! One link per node, kept up by a supervisor.
//!
//! A [`NodeLink`] owns the connection to one node: it connects with the
//! kind's connector ([`tcp`], [`process`], [`serial`], [`usb`]), runs an
//! [`Endpoint`] over it, and when the connection ends (peer closed, process
//! died, retries exhausted) reconnects after an exponential, capped
//! [`Backoff`]. Its state and counters are observable; console bytes of
//! every connection go to one broadcast that outlives reconnects.

pub mod backoff;
mod counted;
pub mod emulated;
pub mod process;
mod secure;
pub mod serial;
pub mod tcp;
pub mod usb;

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;
pub use counted::Counted;
pub use process::ProcessSpec;
pub use serial::SerialSpec;

use crate::auth::{AuthConfig, AuthCounters, Peer};
use crate::endpoint::{Endpoint, EndpointConfig, EndpointStats, Handler, NoHandler};

/// How to reach a node.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkSpec {
    /// Connect to `host:port`; stream framing.
    Tcp { addr: String },
    /// Spawn the unix-board satellite and talk over its stdio.
    Process(ProcessSpec),
    /// A lossy UART (or pty): SerialPacker frames plus the reliable layer.
    Serial(SerialSpec),
    /// USB CDC (or any tty): lossless stream, console bytes interleaved.
    Usb { path: String, baud: u32 },
    /// An emulated board: the link starts the emulator and talks to the
    /// node's UART on the emulator's socket ([`emulated`]).
    Emulated {
        emulator: ProcessSpec,
        /// `Serial` or `Usb` with a `tcp:HOST:PORT` path.
        link: Box<LinkSpec>,
    },
}

impl LinkSpec {
    /// `tcp`, `process`, `serial` or `usb`.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkSpec::Tcp { .. } => "tcp",
            LinkSpec::Process(_) => "process",
            LinkSpec::Serial(_) => "serial",
            LinkSpec::Usb { .. } => "usb",
            LinkSpec::Emulated { .. } => "emulated",
        }
    }

    /// Where the link goes, for humans.
    pub fn target(&self) -> String {
        match self {
            LinkSpec::Tcp { addr } => addr.clone(),
            LinkSpec::Process(p) => p.program.display().to_string(),
            LinkSpec::Serial(s) => s.path.clone(),
            LinkSpec::Usb { path, .. } => path.clone(),
            LinkSpec::Emulated { emulator, link } => {
                format!("{} ({})", link.target(), emulator.program.display())
            }
        }
    }
}

/// Reconnect timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkOptions {
    /// First delay after a failure.
    pub backoff_min: Duration,
    /// The delay doubles up to this.
    pub backoff_max: Duration,
    /// A connection that lasted this long resets the backoff.
    pub stable_after: Duration,
    /// How long one connection attempt may take (TCP connect, handshake,
    /// a process's ready marker).
    pub connect_timeout: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            stable_after: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// Where a link is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Trying to connect.
    Connecting,
    /// Messages flow.
    Up,
    /// Lost or failed; retrying after a backoff. Says why.
    Down(String),
    /// Stopped for good ([`NodeLink::stop`]).
    Stopped,
}

impl LinkState {
    pub fn is_up(&self) -> bool {
        matches!(self, LinkState::Up)
    }

    /// `connecting`, `up`, `down` or `stopped`.
    pub fn name(&self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Up => "up",
            LinkState::Down(_) => "down",
            LinkState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkState::Down(why) => write!(f, "down ({why})"),
            other => f.write_str(other.name()),
        }
    }
}

/// Counters over the link's whole life (all connections).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub console_bytes_in: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Connection attempts that failed.
    pub failures: u64,
    /// Sealed messages accepted (authenticated links).
    pub auth_ok: u64,
    /// Messages dropped because they did not open: altered, replayed,
    /// reordered, injected or unsealed.
    pub auth_dropped: u64,
    /// Handshakes that failed.
    pub auth_failed: u64,
}

/// Byte counters shared with the [`Counted`] I/O wrapper.
#[derive(Debug, Default)]
pub struct ByteCounters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// A link change, as [`NodeLink::events`] reports it.
#[derive(Clone, Debug)]
pub enum LinkEvent {
    /// Connected: the new connection's endpoint.
    Up(Endpoint),
    /// The connection ended (or an attempt failed), with why.
    Down(String),
}

/// What a connector hands the supervisor: a running endpoint and whatever
/// must live as long as it (a child process, the reliable layer's task).
pub struct Connection {
    pub endpoint: Endpoint,
    /// Shuts the connection's resources down after the endpoint closed
    /// (waits for a child to exit, kills it if it does not).
    pub teardown: Option<BoxFuture<'static, ()>>,
}

impl Connection {
    pub fn new(endpoint: Endpoint) -> Connection {
        Connection {
            endpoint,
            teardown: None,
        }
    }
}

/// What every connector gets: the node's name, the handler for requests
/// the node sends up, the console sink and the byte counters.
#[derive(Clone)]
pub struct ConnectCtx {
    pub name: String,
    pub handler: Arc<dyn Handler>,
    pub console: broadcast::Sender<Bytes>,
    pub bytes: Arc<ByteCounters>,
    pub timeout: Duration,
    /// A process link's child pid while it runs (0: none).
    pub pid: Arc<AtomicU32>,
    /// Cancelled when the link is stopped for good (not just down).
    pub stop: CancellationToken,
    /// An emulator kept running between connections (its node reset and
    /// closed the link; the next connection reaches it again). Killed when
    /// the link ends (`kill_on_drop`).
    pub kept: Arc<std::sync::Mutex<Option<tokio::process::Child>>>,
    /// Authenticate the connection as this node's (docs/auth.md).
    pub auth: Option<AuthConfig>,
    pub auth_counters: Arc<AuthCounters>,
    /// Who answered the last handshake.
    pub peer: Arc<Mutex<Option<Peer>>>,
}

impl ConnectCtx {
    /// For one connection outside a [`NodeLink`] (a verb's direct link):
    /// requests from the node get no answer, console output is dropped
    /// unless someone subscribes to `console`.
    pub fn new(name: &str, auth: Option<AuthConfig>, timeout: Duration) -> ConnectCtx {
        ConnectCtx {
            name: name.to_owned(),
            handler: Arc::new(NoHandler),
            console: broadcast::channel(256).0,
            bytes: Arc::default(),
            timeout,
            pid: Arc::default(),
            stop: CancellationToken::new(),
            kept: Arc::default(),
            auth,
            auth_counters: Arc::default(),
            peer: Arc::default(),
        }
    }

    /// Who answered the handshake (authenticated links, once connected).
    pub fn peer(&self) -> Option<Peer> {
        self.peer.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Starts the endpoint over a connected transport, after the
    /// handshake when the link authenticates (sealing in `form`).
    pub(crate) async fn start<S, K, E, F>(
        &self,
        source: S,
        sink: K,
        place: &str,
        form: crate::auth::seal::Form,
    ) -> Result<Endpoint, ConnectError>
    where
        S: futures::Stream<Item = Result<crate::framing::Incoming, E>> + Send + Unpin + 'static,
        K: futures::Sink<crate::value::Value, Error = F> + Send + Unpin + 'static,
        E: fmt::Display + Send + 'static,
        F: fmt::Display + Send + 'static,
    {
        secure::start(self, source, sink, place, form).await
    }

    fn endpoint_config(&self) -> EndpointConfig {
        EndpointConfig {
            name: self.name.clone(),
        }
    }
}

/// The largest message a node takes (the node runtime's default `m`, also
/// its ceiling): bigger requests fail on this side, naming both sizes.
pub const NODE_MESSAGE_LIMIT: usize = 1024;

/// Why a connection attempt failed, in words naming the fix.
pub type ConnectError = String;

/// One connection attempt per `spec` (what the supervisor does each time),
/// for a verb that wants one link and its exact error, not retries.
pub async fn connect_once(spec: &LinkSpec, ctx: &ConnectCtx) -> Result<Connection, ConnectError> {
    connect(spec, ctx).await
}

async fn connect(spec: &LinkSpec, ctx: &ConnectCtx) -> Result<Connection, ConnectError> {
    match spec {
        LinkSpec::Tcp { addr } => tcp::connect(addr, ctx).await,
        LinkSpec::Process(p) => process::connect(p, ctx).await,
        LinkSpec::Serial(s) => serial::connect(s, ctx).await,
        LinkSpec::Usb { path, baud } => usb::connect(path, *baud, ctx).await,
        LinkSpec::Emulated { emulator, link } => {
            Box::pin(emulated::connect(emulator, link, ctx)).await
        }
    }
}

struct Shared {
    name: String,
    spec: LinkSpec,
    state: watch::Sender<LinkState>,
    current: watch::Sender<Option<Endpoint>>,
    events: broadcast::Sender<LinkEvent>,
    console: broadcast::Sender<Bytes>,
    bytes: Arc<ByteCounters>,
    /// Message counters of connections that have ended.
    past: Mutex<EndpointStats>,
    reconnects: AtomicU64,
    failures: AtomicU64,
    pid: Arc<AtomicU32>,
    stop: CancellationToken,
    auth: Option<AuthConfig>,
    auth_counters: Arc<AuthCounters>,
    peer: Arc<Mutex<Option<Peer>>>,
}

/// The supervised link to one node. Cheap to clone.
#[derive(Clone)]
pub struct NodeLink {
    shared: Arc<Shared>,
}

impl fmt::Debug for NodeLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeLink")
            .field("name", &self.shared.name)
            .field("state", &*self.shared.state.borrow())
            .finish()
    }
}

impl NodeLink {
    /// Starts connecting to node `name` per `spec`; requests the node sends
    /// up are answered by `handler`. Runs until [`stop`](NodeLink::stop).
    pub fn spawn(
        name: &str,
        spec: LinkSpec,
        handler: Arc<dyn Handler>,
        options: LinkOptions,
    ) -> NodeLink {
        NodeLink::spawn_auth(name, spec, None, handler, options)
    }

    /// [`spawn`](NodeLink::spawn) for a link that authenticates with
    /// `auth` (docs/auth.md) when given.
    pub fn spawn_auth(
        name: &str,
        spec: LinkSpec,
        auth: Option<AuthConfig>,
        handler: Arc<dyn Handler>,
        options: LinkOptions,
    ) -> NodeLink {
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            spec,
            state: watch::channel(LinkState::Connecting).0,
            current: watch::channel(None).0,
            events: broadcast::channel(64).0,
            console: broadcast::channel(256).0,
            bytes: Arc::default(),
            past: Mutex::default(),
            reconnects: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            pid: Arc::default(),
            stop: CancellationToken::new(),
            auth,
            auth_counters: Arc::default(),
            peer: Arc::default(),
        });
        tokio::spawn(supervise(shared.clone(), handler, options));
        NodeLink { shared }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn spec(&self) -> &LinkSpec {
        &self.shared.spec
    }

    /// The current connection, if the link is up.
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.shared.current.borrow().clone()
    }

    /// Waits until the link is up (or stopped: `None`).
    pub async fn wait_up(&self) -> Option<Endpoint> {
        let mut rx = self.shared.current.subscribe();
        loop {
            if let Some(ep) = rx.borrow_and_update().clone() {
                return Some(ep);
            }
            if self.shared.stop.is_cancelled() {
                return None;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return None },
                _ = self.shared.stop.cancelled() => return None,
            }
        }
    }

    pub fn state(&self) -> LinkState {
        self.shared.state.borrow().clone()
    }

    /// State changes, as a watch receiver.
    pub fn watch_state(&self) -> watch::Receiver<LinkState> {
        self.shared.state.subscribe()
    }

    /// Ups and downs from now on.
    pub fn events(&self) -> broadcast::Receiver<LinkEvent> {
        self.shared.events.subscribe()
    }

    /// The node's console output from now on, across reconnects.
    pub fn console(&self) -> broadcast::Receiver<Bytes> {
        self.shared.console.subscribe()
    }

    /// The node's process id, for a process link whose child runs.
    pub fn pid(&self) -> Option<u32> {
        match self.shared.pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Who answered the last handshake of an authenticated link: its
    /// identity, the largest message it accepts, and which key it has (a
    /// pending one: a rotation was interrupted after the node got it).
    pub fn peer(&self) -> Option<Peer> {
        self.shared
            .peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the link authenticates.
    pub fn authenticates(&self) -> bool {
        self.shared.auth.is_some()
    }

    pub fn stats(&self) -> LinkStats {
        let s = &self.shared;
        let past = *s.past.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.endpoint().map(|e| e.stats()).unwrap_or_default();
        let auth = s.auth_counters.snapshot();
        LinkStats {
            bytes_in: s.bytes.bytes_in.load(Ordering::Relaxed),
            bytes_out: s.bytes.bytes_out.load(Ordering::Relaxed),
            messages_in: past.messages_in + now.messages_in,
            messages_out: past.messages_out + now.messages_out,
            console_bytes_in: past.console_bytes_in + now.console_bytes_in,
            reconnects: s.reconnects.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            auth_ok: auth.ok,
            auth_dropped: auth.dropped,
            auth_failed: auth.failed,
        }
    }

    /// Closes the link for good (a child process is asked to exit, then
    /// killed). Resolves when it is down.
    pub async fn stop(&self) {
        self.shared.stop.cancel();
        let mut state = self.shared.state.subscribe();
        let _ = state.wait_for(|s| *s == LinkState::Stopped).await;
    }
}

async fn supervise(shared: Arc<Shared>, handler: Arc<dyn Handler>, options: LinkOptions) {
    let ctx = ConnectCtx {
        name: shared.name.clone(),
        handler,
        console: shared.console.clone(),
        bytes: shared.bytes.clone(),
        timeout: options.connect_timeout,
        pid: shared.pid.clone(),
        stop: shared.stop.clone(),
        kept: Arc::default(),
        auth: shared.auth.clone(),
        auth_counters: shared.auth_counters.clone(),
        peer: shared.peer.clone(),
    };
    let mut backoff = Backoff::new(options.backoff_min, options.backoff_max);
    let mut connected_before = false;
    let mut failing_since_up = 0u64;
    loop {
        shared.state.send_replace(LinkState::Connecting);
        let attempt = tokio::select! {
            _ = shared.stop.cancelled() => break,
            attempt = connect(&shared.spec, &ctx) => attempt,
        };
        let why = match attempt {
            Ok(conn) => {
                if connected_before {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                connected_before = true;
                failing_since_up = 0;
                let since = Instant::now();
                let why = run_connection(&shared, conn).await;
                if since.elapsed() >= options.stable_after {
                    backoff.reset();
                }
                why
            }
            Err(e) => {
                // Once per outage; the state says it until the link is up.
                if shared.failures.fetch_add(1, Ordering::Relaxed) == 0 || failing_since_up == 0 {
                    tracing::warn!(node = %shared.name, "cannot connect: {e}");
                } else {
                    tracing::debug!(node = %shared.name, "cannot connect: {e}");
                }
                failing_since_up += 1;
                e
            }
        };
        if shared.stop.is_cancelled() {
            break;
        }
        shared.state.send_replace(LinkState::Down(why.clone()));
        let _ = shared.events.send(LinkEvent::Down(why));
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    shared.state.send_replace(LinkState::Stopped);
}

/// Runs one connection until it ends; returns why it ended.
async fn run_connection(shared: &Shared, conn: Connection) -> String {
    let Connection { endpoint, teardown } = conn;
    tracing::info!(node = %shared.name, "link up");
    // the node's own m when its handshake said (never above the ceiling)
    let said = shared
        .peer
        .lock()
        .ok()
        .and_then(|p| p.as_ref()?.max_message);
    let limit = said.map_or(NODE_MESSAGE_LIMIT, |m| (m as usize).min(NODE_MESSAGE_LIMIT));
    endpoint.set_peer_limit(limit, &format!("node `{}`", shared.name));
    let console = forward_console(&endpoint, shared.console.clone());
    shared.current.send_replace(Some(endpoint.clone()));
    shared.state.send_replace(LinkState::Up);
    let _ = shared.events.send(LinkEvent::Up(endpoint.clone()));
    tokio::select! {
        _ = shared.stop.cancelled() => endpoint.close(),
        _ = endpoint.closed() => {}
    }
    shared.current.send_replace(None);
    let why = match endpoint.down_reason() {
        Some(e) => e
            .args()
            .get(1)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| e.to_string()),
        None => "closed".to_owned(),
    };
    {
        let stats = endpoint.stats();
        let mut past = shared.past.lock().unwrap_or_else(|p| p.into_inner());
        past.messages_in += stats.messages_in;
        past.messages_out += stats.messages_out;
        past.console_bytes_in += stats.console_bytes_in;
    }
    drop(endpoint);
    if let Some(teardown) = teardown {
        teardown.await;
    }
    console.abort();
    tracing::info!(node = %shared.name, "link down: {why}");
    why
}

/// Copies a connection's console bytes into the link's console broadcast.
fn forward_console(
    endpoint: &Endpoint,
    to: broadcast::Sender<Bytes>,
) -> tokio::task::JoinHandle<()> {
    let mut from = endpoint.console();
    tokio::spawn(async move {
        loop {
            match from.recv().await {
                Ok(bytes) => {
                    let _ = to.send(bytes);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    })
}
