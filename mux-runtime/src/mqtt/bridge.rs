//! The running bridge: one broker connection kept up with back-off, the
//! endpoints it serves (one per requester's reply topic) and the ones it
//! forwards through (one per remote node).
//!
//! Both kinds are ordinary [`Endpoint`]s whose transport is the broker:
//! what comes in on a topic is fed to the endpoint's source, what the
//! endpoint sends is published. So a request from the broker is served by
//! the mux's own handler with the same errors, stream relaying and
//! cancellation as a local client's, and a forwarded request gets the
//! endpoint's sequence numbering, timeouts and `_LnkErr` when the broker
//! connection drops.
//!
//! The poll loop never waits on anything but the broker: incoming messages
//! go into unbounded per-endpoint queues, publishing happens in the
//! endpoints' own write tasks, so one slow requester or node cannot stall
//! the others.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::FutureExt;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::broker::{self, Client, Event, Props, Received, Version};
use super::ha;
use super::payload::{self, NodeState, Presence};
use super::pipe::{too_big, NodeScope, Pipe};
use super::topic::{check_name, Inbound, Topics};
use super::{BrokerAddr, MqttConfig, MqttError, VersionChoice};
use crate::endpoint::{link_down, Endpoint, Handler, NoHandler};
use crate::error::RemoteError;
use crate::link::{Backoff, LinkEvent, NodeLink};
use crate::message::{Message, Path};
use crate::mux::{route, Core, Uplink};
use crate::value::Value;

/// Room kept for the topic, properties and header of a publish when
/// checking a payload against the broker's packet limit.
const PACKET_OVERHEAD: usize = 512;

/// Requester endpoints served at once; the oldest idle one goes first.
const MAX_SERVED: usize = 1024;

/// A node held by another mux, as its retained state says.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteNode {
    pub name: String,
    pub state: NodeState,
}

/// A bridge, ready to start: the configuration checked.
#[derive(Clone, Debug)]
pub struct Setup {
    topics: Topics,
    session: String,
    url: String,
    local: Vec<String>,
    options: broker::Options,
    choice: VersionChoice,
    max_message: usize,
    mux: bool,
    project: String,
    /// Home Assistant entities of the nodes held here.
    entities: Vec<ha::Entity>,
}

impl Setup {
    /// A mux's bridge (`mux`: it holds `local`) or a client's (no nodes,
    /// `mux` false), named `name` on the broker unless the config names
    /// a client id.
    pub fn new(
        config: &MqttConfig,
        project: &str,
        name: &str,
        local: Vec<String>,
        mux: bool,
    ) -> Result<Setup, MqttError> {
        let addr = BrokerAddr::parse(&config.url)?;
        let tls = match (addr.tls, config.tls != super::tls::TlsFiles::default()) {
            (true, _) => Some(super::tls::client_config(&config.tls)?),
            (false, true) => return Err(MqttError::TlsFilesWithoutTls(config.url.clone())),
            (false, false) => None,
        };
        let prefix = config
            .prefix
            .clone()
            .unwrap_or_else(|| Topics::default_prefix(project));
        let topics = Topics::new(&prefix)?;
        let session = config.client_id.clone().unwrap_or_else(|| name.to_owned());
        check_name(&session)?;
        for node in &local {
            check_name(node)?;
        }
        let will = Presence {
            up: false,
            mux,
            nodes: local.clone(),
        };
        let options = broker::Options {
            host: addr.host,
            port: addr.port,
            client_id: session.clone(),
            credentials: config.credentials.clone().or(addr.credentials),
            keep_alive: config.keep_alive,
            // Only a mux's presence is kept: a client's is of no use to
            // anyone after it left.
            will: (topics.session(&session), will.encode(), mux),
            max_incoming: (config.max_message + PACKET_OVERHEAD) as u32,
            tls,
        };
        let entities = config
            .entities
            .iter()
            .filter(|e| local.contains(&e.node))
            .cloned()
            .collect();
        Ok(Setup {
            topics,
            session,
            url: config.url.clone(),
            project: project.to_owned(),
            entities,
            local,
            options,
            choice: config.version,
            max_message: config.max_message,
            mux,
        })
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// Starts the connection task. `core`: the mux whose nodes are served
    /// (`Weak::new()` for a client).
    pub fn start(self, core: Weak<Core>) -> Bridge {
        let (connected, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            limit: AtomicUsize::new(self.max_message),
            setup: self,
            core,
            client: Mutex::default(),
            version: Mutex::default(),
            connected,
            remote: Mutex::default(),
            remote_changed: tokio::sync::Notify::new(),
            local_states: Mutex::default(),
            forward: Mutex::default(),
            served: Mutex::default(),
            stop: CancellationToken::new(),
            leaving: Default::default(),
            counters: Counters::default(),
            last_error: Mutex::new(None),
        });
        tokio::spawn(run(inner.clone()));
        Bridge { inner }
    }
}

/// A requester served: its endpoint and the session it belongs to.
struct Served {
    pipe: Pipe,
    session: Option<String>,
    last_used: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    tick: AtomicU64,
}

struct Inner {
    setup: Setup,
    core: Weak<Core>,
    client: Mutex<Option<Client>>,
    version: Mutex<Option<Version>>,
    connected: watch::Sender<bool>,
    /// The largest payload the bridge publishes now.
    limit: AtomicUsize,
    remote: Mutex<BTreeMap<String, NodeState>>,
    remote_changed: tokio::sync::Notify,
    local_states: Mutex<BTreeMap<String, NodeState>>,
    forward: Mutex<HashMap<String, Pipe>>,
    /// Keyed by reply topic.
    served: Mutex<HashMap<String, Served>>,
    stop: CancellationToken,
    /// Set by [`Bridge::shutdown`]: the connection's end is ours.
    leaving: std::sync::atomic::AtomicBool,
    counters: Counters,
    /// Why the last connection attempt failed (None once connected).
    last_error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running bridge. Cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    inner: Arc<Inner>,
}

impl Bridge {
    pub fn session(&self) -> &str {
        &self.inner.setup.session
    }

    pub fn topics(&self) -> &Topics {
        &self.inner.setup.topics
    }

    pub fn is_connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Waits until connected to the broker (or `timeout`).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.connected.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The version spoken, once connected.
    pub fn version(&self) -> Option<Version> {
        *lock(&self.inner.version)
    }

    /// Nodes other muxes hold, as their states say.
    pub fn remote_nodes(&self) -> Vec<RemoteNode> {
        lock(&self.inner.remote)
            .iter()
            .map(|(name, state)| RemoteNode {
                name: name.clone(),
                state: state.clone(),
            })
            .collect()
    }

    pub fn remote_names(&self) -> Vec<String> {
        lock(&self.inner.remote).keys().cloned().collect()
    }

    /// Waits for some mux to announce `node` (retained states arrive just
    /// after connecting), up to `timeout`.
    pub async fn wait_node(&self, node: &str, timeout: Duration) -> Option<NodeState> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.inner.remote_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(s) = lock(&self.inner.remote).get(node) {
                return Some(s.clone());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// The endpoint requests to remote node `node` go through (paths
    /// relative to the node), or `_LnkErr` saying why there is none.
    pub fn endpoint(&self, node: &str) -> Result<Endpoint, RemoteError> {
        self.inner.forward_endpoint(node)
    }

    /// Records and publishes the state of a node this mux holds.
    pub fn set_local_state(&self, node: &str, state: NodeState) {
        lock(&self.inner.local_states).insert(node.to_owned(), state.clone());
        self.inner.publish_state(node, &state);
    }

    /// Publishes an unsolicited message of local node `node` (path
    /// relative to the node).
    pub fn publish_notice(&self, node: &str, path: &Path, data: &Value) {
        let message = Message::Unsolicited {
            path: path.clone(),
            data: data.clone(),
        };
        let topic = self.inner.setup.topics.notice(node);
        self.inner
            .spawn_publish(topic, message.to_bytes(), false, Props::default());
    }

    /// Publishes the state of `node` as its link changes (up: with the
    /// board and firmware digest read from the node), until the link
    /// stops.
    pub async fn track_link(self, node: String, link: NodeLink) {
        let mut events = link.events();
        let down = |why: String| NodeState {
            up: false,
            mux: self.session().to_owned(),
            why: Some(why),
            ..NodeState::default()
        };
        // Subscribed first, then looked: a link that came up before this
        // task ran is seen here, one that comes up later in `events`.
        match link.endpoint() {
            Some(ep) => {
                let state = describe(&ep, self.session()).await;
                self.set_local_state(&node, state);
            }
            None => self.set_local_state(&node, down("connecting".into())),
        }
        loop {
            match events.recv().await {
                Ok(LinkEvent::Up(ep)) => {
                    let state = describe(&ep, self.session()).await;
                    self.set_local_state(&node, state);
                }
                Ok(LinkEvent::Down(why)) => self.set_local_state(&node, down(why)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// The Home Assistant sensors of node `node` (held here).
    pub fn sensors(&self, node: &str) -> Vec<ha::Entity> {
        self.inner
            .setup
            .entities
            .iter()
            .filter(|e| e.node == node && e.kind == ha::Kind::Sensor)
            .cloned()
            .collect()
    }

    /// Feeds a Home Assistant sensor: while the node's link is up, streams
    /// its command and publishes each value (retained) as the state.
    pub async fn feed_sensor(self, sensor: ha::Entity, link: NodeLink) {
        let topic = self.topics().ha_state(&sensor.node, &sensor.id);
        while let Some(ep) = link.wait_up().await {
            let mut items = ep.stream(sensor.path.clone(), Value::Nil, sensor.every_ms);
            while let Some(item) = items.next().await {
                match item {
                    Ok(v) => self.inner.spawn_publish(
                        topic.clone(),
                        ha::state(sensor.kind, &v, None).into_bytes(),
                        true,
                        Props::default(),
                    ),
                    Err(e) => {
                        tracing::warn!(node = %sensor.node, sensor = %sensor.id, "sensor stream ended: {e}");
                        break;
                    }
                }
            }
            // The stream ended on an error or a lost link: wait a moment
            // (or the next connection) before streaming again.
            tokio::select! {
                _ = ep.closed() => {}
                _ = tokio::time::sleep(Duration::from_millis(u64::from(sensor.every_ms).max(1000))) => {}
            }
        }
    }

    /// Why the last attempt to reach the broker failed, while it is not
    /// reached.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.inner.last_error).clone()
    }

    /// Counters and settings for `mux.info`.
    pub fn info(&self) -> Value {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| Value::from(a.load(Ordering::Relaxed));
        let mut m = vec![
            ("url", Value::from(self.inner.setup.url.as_str())),
            ("prefix", Value::from(self.topics().prefix())),
            ("session", Value::from(self.session())),
            ("connected", Value::Bool(self.is_connected())),
            ("received", get(&c.received)),
            ("published", get(&c.published)),
            ("dropped", get(&c.dropped)),
            ("reconnects", get(&c.reconnects)),
            (
                "max_message",
                Value::from(self.inner.limit.load(Ordering::Relaxed) as u64),
            ),
        ];
        if let Some(v) = self.version() {
            m.push(("version", Value::from(v.to_string())));
        }
        if let Some(why) = self.last_error() {
            m.push(("error", Value::from(why)));
        }
        Value::map(m)
    }

    /// Marks this mux's nodes down, says goodbye and disconnects.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.leaving.store(true, Ordering::Relaxed);
        inner.close_all(None);
        let client = lock(&inner.client).clone();
        if let (Some(client), true) = (client, self.is_connected()) {
            let states: Vec<(String, NodeState)> = lock(&inner.local_states)
                .iter()
                .map(|(n, s)| {
                    let mut s = s.clone();
                    s.up = false;
                    s.why = Some("the mux stopped".into());
                    (n.clone(), s)
                })
                .collect();
            for (node, state) in states {
                let topic = inner.setup.topics.state(&node);
                let _ = client
                    .publish(topic, state.encode(), true, Props::default())
                    .await;
            }
            let bye = inner.presence(false);
            let topic = inner.setup.topics.session(&inner.setup.session);
            let _ = client
                .publish(topic, bye, inner.setup.mux, Props::default())
                .await;
            client.disconnect().await;
            // Give the disconnect a moment to reach the broker.
            let mut rx = inner.connected.subscribe();
            let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|up| !*up)).await;
        }
        inner.stop.cancel();
    }
}

/// The node's state when its link comes up: board and version from
/// `sys.info`, a digest of its frozen modules from `sys.hash`.
async fn describe(ep: &Endpoint, mux: &str) -> NodeState {
    let ask = |cmd: &'static str| {
        let call = ep.call(["sys", cmd], Value::Nil);
        async move {
            tokio::time::timeout(Duration::from_secs(5), call)
                .await
                .ok()
                .and_then(Result::ok)
        }
    };
    let info = ask("info").await;
    let hashes = ask("hash").await;
    let text = |v: &Option<Value>, k: &str| {
        v.as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    NodeState {
        up: true,
        mux: mux.to_owned(),
        board: text(&info, "b"),
        version: text(&info, "v"),
        fw: hashes.map(|h| {
            let digest = Sha256::digest(crate::msgpack::to_vec(&h));
            hex::encode(&digest[..8])
        }),
        why: None,
    }
}

/// An endpoint publishing through `inner` as `how` says.
fn pipe(inner: &Arc<Inner>, how: Outgoing, handler: Arc<dyn Handler>, name: String) -> Pipe {
    let inner = Arc::downgrade(inner);
    Pipe::spawn(
        move |message| {
            let (inner, how) = (inner.clone(), how.clone());
            async move {
                let inner = inner
                    .upgrade()
                    .ok_or_else(|| "the bridge stopped".to_owned())?;
                inner.send(&how, message).await
            }
            .boxed()
        },
        handler,
        name,
    )
}

/// What a publishing endpoint does with each message it sends.
#[derive(Clone)]
enum Outgoing {
    /// A request to a remote node: to its request topic, answers to
    /// `reply`.
    Request { topic: String, reply: String },
    /// An answer to a requester: to its reply topic, with its correlation.
    Answer {
        topic: String,
        correlation: Option<Bytes>,
    },
}

impl Inner {
    fn presence(&self, up: bool) -> Vec<u8> {
        Presence {
            up,
            mux: self.setup.mux,
            nodes: self.setup.local.clone(),
        }
        .encode()
    }

    fn broker_down(&self) -> String {
        format!(
            "not connected to the MQTT broker at {} (retrying)",
            self.setup.url
        )
    }

    fn spawn_publish(&self, topic: String, payload: Vec<u8>, retain: bool, props: Props) {
        let Some(client) = lock(&self.client).clone() else {
            return;
        };
        if !retain && !*self.connected.borrow() {
            // A notice nobody could get. Retained states are queued even
            // before the connection is up (rumqttc sends them once it
            // is, before what the reconnect republishes), so none is
            // lost between the reconnect's snapshot and `connected`.
            return;
        }
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = client.publish(topic, payload, retain, props).await {
                tracing::debug!("MQTT publish failed: {e}");
            }
        });
    }

    /// The node's state, and its Home Assistant availability (a JSON
    /// mirror: `online`/`offline`).
    fn publish_state(&self, node: &str, state: &NodeState) {
        self.spawn_publish(
            self.setup.topics.state(node),
            state.encode(),
            true,
            Props::default(),
        );
        self.spawn_publish(
            self.setup.topics.availability(node),
            availability(state.up),
            true,
            Props::default(),
        );
    }

    /// A command from Home Assistant for an entity of a node held here:
    /// called on the node, its answer published as the entity's state.
    fn ha_command(self: &Arc<Self>, node: &str, entity: &str, payload: &[u8]) {
        let Some(e) = self
            .setup
            .entities
            .iter()
            .find(|e| e.node == node && e.id == entity)
            .cloned()
        else {
            return;
        };
        let Some(args) = ha::command_args(e.kind, payload) else {
            tracing::warn!(
                node,
                entity,
                "ignoring a Home Assistant command it does not take"
            );
            return;
        };
        let asked = args.get("v").and_then(|v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        });
        let Some(core) = self.core.upgrade() else {
            return;
        };
        let inner = self.clone();
        tokio::spawn(async move {
            let result = match core.endpoint_of(&e.node) {
                Ok(ep) => ep.call(e.path.clone(), args).await,
                Err(err) => Err(err),
            };
            match result {
                Ok(v) if e.kind == ha::Kind::Switch => inner.spawn_publish(
                    inner.setup.topics.ha_state(&e.node, &e.id),
                    ha::state(e.kind, &v, asked).into_bytes(),
                    true,
                    Props::default(),
                ),
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(node = %e.node, entity = %e.id, "Home Assistant command failed: {err}")
                }
            }
        });
    }

    /// Publishes one message of an endpoint: a request or an answer.
    async fn send(&self, how: &Outgoing, message: Value) -> Result<(), String> {
        let client = lock(&self.client)
            .clone()
            .filter(|_| *self.connected.borrow())
            .ok_or_else(|| self.broker_down())?;
        let limit = self.limit.load(Ordering::Relaxed);
        let (topic, payload, props) = match how {
            Outgoing::Request { topic, reply } => {
                let (payload, props) = match client.version() {
                    Version::V5 => (
                        crate::msgpack::to_vec(&message),
                        Props {
                            response_topic: Some(reply.clone()),
                            correlation: Some(Bytes::from(self.setup.session.clone())),
                        },
                    ),
                    Version::V311 => (
                        payload::encode_wrapped_request(reply, &message),
                        Props::default(),
                    ),
                };
                (topic.clone(), payload, props)
            }
            Outgoing::Answer { topic, correlation } => {
                let mut payload = crate::msgpack::to_vec(&message);
                if payload.len() > limit {
                    payload = too_big(&message, payload.len(), limit, &self.setup.url);
                }
                let props = Props {
                    response_topic: None,
                    correlation: correlation.clone(),
                };
                (topic.clone(), payload, props)
            }
        };
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        client.publish(topic, payload, false, props).await
    }

    fn forward_endpoint(self: &Arc<Self>, node: &str) -> Result<Endpoint, RemoteError> {
        if !*self.connected.borrow() {
            return Err(link_down(node, &self.broker_down()));
        }
        match lock(&self.remote).get(node) {
            None => {
                return Err(link_down(
                    node,
                    &format!(
                        "no mux has announced node `{node}` on the MQTT broker (under {}); \
                         is the mux holding it running with the same broker?",
                        self.setup.topics.prefix()
                    ),
                ))
            }
            Some(s) if !s.up => {
                let why = s.why.as_deref().unwrap_or("down");
                return Err(link_down(node, &format!("down on mux `{}`: {why}", s.mux)));
            }
            Some(_) => {}
        }
        let mut forward = lock(&self.forward);
        if let Some(p) = forward.get(node).filter(|p| p.endpoint.is_up()) {
            return Ok(p.endpoint.clone());
        }
        let how = Outgoing::Request {
            topic: self.setup.topics.request(node),
            reply: self.setup.topics.reply(&self.setup.session, node),
        };
        let p = pipe(
            self,
            how,
            Arc::new(NoHandler),
            format!("{node} (over MQTT)"),
        );
        let limit = self.limit.load(Ordering::Relaxed);
        p.endpoint.set_peer_limit_fix(
            limit,
            &format!("the MQTT bridge to {}", self.setup.url),
            "send less, or raise the broker's packet limit (mosquitto: max_packet_size) \
             and [mqtt] max_message",
        );
        let ep = p.endpoint.clone();
        forward.insert(node.to_owned(), p);
        Ok(ep)
    }

    /// A request for local node `node` from the broker.
    fn serve(self: &Arc<Self>, node: &str, m: Received) {
        let (reply, message) =
            match payload::decode_request(&m.payload, m.props.response_topic.as_deref()) {
                Ok(found) => found,
                Err(e) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node, "dropping a request from the MQTT broker: {e}");
                    return;
                }
            };
        let tick = self.counters.tick.fetch_add(1, Ordering::Relaxed);
        let mut served = lock(&self.served);
        if let Some(s) = served.get_mut(&reply).filter(|s| s.pipe.endpoint.is_up()) {
            s.last_used = tick;
            s.pipe.feed(message);
            return;
        }
        if served.len() >= MAX_SERVED {
            evict_idlest(&mut served);
        }
        let session = match self.setup.topics.parse(&reply) {
            Some(Inbound::Reply { session, .. }) => Some(session),
            _ => None,
        };
        let handler = Arc::new(NodeScope {
            node: node.to_owned(),
            uplink: Arc::new(Uplink::client(self.core.clone())),
        });
        let name = format!("MQTT requester {}", session.as_deref().unwrap_or(&reply));
        let how = Outgoing::Answer {
            topic: reply.clone(),
            correlation: m.props.correlation.clone(),
        };
        let p = pipe(self, how, handler, name);
        p.feed(message);
        served.insert(
            reply,
            Served {
                pipe: p,
                session,
                last_used: tick,
            },
        );
    }

    fn dispatch(self: &Arc<Self>, m: Received) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let Some(what) = self.setup.topics.parse(&m.topic) else {
            return;
        };
        let local = |n: &str| self.setup.local.iter().any(|l| l == n);
        match what {
            Inbound::Request { node } if local(&node) => self.serve(&node, m),
            Inbound::Request { .. } => {}
            Inbound::Reply { session, node } if session == self.setup.session => {
                match payload::decode_message(&m.payload) {
                    Ok(v) => {
                        if let Some(p) = lock(&self.forward).get(&node) {
                            p.feed(v);
                        }
                    }
                    Err(e) => tracing::warn!(node, "dropping an answer from the broker: {e}"),
                }
            }
            Inbound::Reply { .. } => {}
            Inbound::State { node } if local(&node) => {
                // Someone (a mux that saw our last will from an earlier
                // life) says otherwise: the truth is ours.
                let ours = lock(&self.local_states).get(&node).cloned();
                if let Some(ours) = ours {
                    if NodeState::decode(&m.payload).ok().as_ref() != Some(&ours) {
                        self.publish_state(&node, &ours);
                    }
                }
            }
            Inbound::State { node } => self.remote_state(&node, &m.payload),
            Inbound::Notice { node } if !local(&node) => {
                let Some(core) = self.core.upgrade() else {
                    return;
                };
                match payload::decode_message(&m.payload).map(Message::from_value) {
                    Ok(Ok(Message::Unsolicited { path, data })) => {
                        core.broadcast(route::prefixed(&node, &path), data)
                    }
                    _ => tracing::debug!(node, "ignoring a malformed notice"),
                }
            }
            Inbound::Notice { .. } => {}
            Inbound::HaCommand { node, entity } if local(&node) => {
                self.ha_command(&node, &entity, &m.payload)
            }
            Inbound::HaCommand { .. } => {}
            Inbound::Session { session } => {
                if session != self.setup.session && !payload::Presence::is_up(&m.payload) {
                    self.session_gone(&session);
                }
            }
        }
    }

    fn remote_state(&self, node: &str, payload: &[u8]) {
        let before = {
            let mut remote = lock(&self.remote);
            if payload.is_empty() {
                // The retained state was cleared: the node is gone.
                remote.remove(node)
            } else {
                match NodeState::decode(payload) {
                    Ok(s) => remote.insert(node.to_owned(), s),
                    Err(e) => {
                        tracing::warn!(node, "ignoring a node state: {e}");
                        return;
                    }
                }
            }
        };
        let now_up = lock(&self.remote).get(node).is_some_and(|s| s.up);
        if before.is_some_and(|s| s.up) && !now_up {
            if let Some(p) = lock(&self.forward).remove(node) {
                p.fail(&format!("node `{node}` went down on its mux"));
            }
            if let Some(core) = self.core.upgrade() {
                core.broadcast(crate::message::path([node, "link"]), Value::Bool(false));
            }
        }
        self.remote_changed.notify_waiters();
    }

    /// A session ended (its last will, or it said goodbye): its requests
    /// are cancelled, and the nodes of a vanished mux are marked down.
    fn session_gone(&self, session: &str) {
        let gone: Vec<Served> = {
            let mut served = lock(&self.served);
            let keys: Vec<String> = served
                .iter()
                .filter(|(_, s)| s.session.as_deref() == Some(session))
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| served.remove(k)).collect()
        };
        for s in gone {
            s.pipe.endpoint.close();
        }
        let orphans: Vec<(String, NodeState)> = lock(&self.remote)
            .iter()
            .filter(|(_, s)| s.mux == session && s.up)
            .map(|(n, s)| {
                let mut s = s.clone();
                s.up = false;
                s.why = Some(format!("its mux `{session}` vanished (last will)"));
                (n.clone(), s)
            })
            .collect();
        for (node, state) in orphans {
            // Retained, so every reader sees the node down; the mux
            // republishes the truth when it comes back.
            self.publish_state(&node, &state);
            self.remote_state(&node, &state.encode());
        }
    }

    /// Ends every endpoint: with `why` their pending requests fail with
    /// it, without they are closed (the bridge is stopping).
    fn close_all(&self, why: Option<&str>) {
        for (_, p) in lock(&self.forward).drain() {
            match why {
                Some(why) => p.fail(why),
                None => p.endpoint.close(),
            }
        }
        for (_, s) in lock(&self.served).drain() {
            s.pipe.endpoint.close();
        }
    }

    fn on_connected(self: &Arc<Self>, client: &Client, max_packet: Option<u32>) {
        let limit = match max_packet {
            Some(max) => (max as usize)
                .saturating_sub(PACKET_OVERHEAD)
                .min(self.setup.max_message),
            None => self.setup.max_message,
        };
        self.limit.store(limit, Ordering::Relaxed);
        *lock(&self.version) = Some(client.version());
        let topics = &self.setup.topics;
        let mut filters = vec![
            topics.all_states(),
            topics.all_sessions(),
            topics.replies_to(&self.setup.session),
        ];
        if self.setup.mux {
            filters.push(topics.all_notices());
        }
        filters.extend(self.setup.local.iter().map(|n| topics.request(n)));
        filters.extend(
            self.setup
                .entities
                .iter()
                .filter(|e| e.kind != ha::Kind::Sensor)
                .map(|e| topics.ha_command(&e.node, &e.id)),
        );
        let mut publishes = vec![(
            topics.session(&self.setup.session),
            self.presence(true),
            self.setup.mux,
        )];
        for (node, state) in lock(&self.local_states).iter() {
            publishes.push((topics.state(node), state.encode(), true));
            publishes.push((topics.availability(node), availability(state.up), true));
        }
        for e in &self.setup.entities {
            let (topic, config) = ha::discovery(topics, &self.setup.project, e);
            publishes.push((topic, config.into_bytes(), true));
        }
        let client = client.clone();
        let inner = Arc::downgrade(self);
        // Not awaited here: the poll loop must keep polling for these to
        // go out.
        tokio::spawn(async move {
            for f in filters {
                if let Err(e) = client.subscribe(f).await {
                    tracing::warn!("MQTT subscribe failed: {e}");
                }
            }
            for (topic, payload, retain) in publishes {
                let _ = client
                    .publish(topic, payload, retain, Props::default())
                    .await;
            }
            if let Some(inner) = inner.upgrade() {
                inner.connected.send_replace(true);
            }
        });
    }

    fn on_lost(&self, why: &str) {
        if self.connected.send_replace(false) && !self.leaving.load(Ordering::Relaxed) {
            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("lost the MQTT broker at {}: {why}", self.setup.url);
        }
        if self.leaving.load(Ordering::Relaxed) {
            return;
        }
        self.close_all(Some(&format!(
            "the connection to the MQTT broker at {} was lost ({why}); retrying",
            self.setup.url
        )));
    }
}

fn availability(up: bool) -> Vec<u8> {
    (if up { "online" } else { "offline" }).as_bytes().to_vec()
}

fn evict_idlest(served: &mut HashMap<String, Served>) {
    let idlest = served
        .iter()
        .filter(|(_, s)| s.pipe.endpoint.stats().serving == 0)
        .min_by_key(|(_, s)| s.last_used)
        .or_else(|| served.iter().min_by_key(|(_, s)| s.last_used))
        .map(|(k, _)| k.clone());
    if let Some(k) = idlest.and_then(|k| served.remove(&k)) {
        k.pipe.endpoint.close();
    }
}

/// Keeps the broker connection up: connects (MQTT 5 first unless told
/// otherwise, 3.1.1 when the broker refuses 5), dispatches what arrives,
/// and after a loss fails what was in flight and reconnects with back-off.
async fn run(inner: Arc<Inner>) {
    let mut version = match inner.setup.choice {
        VersionChoice::Only(v) => v,
        VersionChoice::Auto => Version::V5,
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut ever_connected = false;
    // One line per outage, not one per retry.
    let mut complained = false;
    loop {
        let (client, mut conn) = broker::open(&inner.setup.options, version);
        *lock(&inner.client) = Some(client.clone());
        loop {
            let polled = tokio::select! {
                _ = inner.stop.cancelled() => return,
                p = conn.poll() => p,
            };
            match polled {
                Ok(Event::Connected { max_packet }) => {
                    ever_connected = true;
                    complained = false;
                    *lock(&inner.last_error) = None;
                    backoff.reset();
                    tracing::info!(
                        "connected to the MQTT broker at {} ({version})",
                        inner.setup.url
                    );
                    inner.on_connected(&client, max_packet);
                }
                Ok(Event::Message(m)) => inner.dispatch(m),
                Ok(Event::Other) => {}
                Err(e) => {
                    // A loss is told by `on_lost`; a failed attempt here.
                    if !complained && !*inner.connected.borrow() {
                        tracing::warn!(
                            "cannot reach the MQTT broker at {}: {}; retrying",
                            inner.setup.url,
                            e.why
                        );
                    }
                    complained = true;
                    *lock(&inner.last_error) = Some(e.why.clone());
                    inner.on_lost(&e.why);
                    let fall_back = inner.setup.choice == VersionChoice::Auto
                        && version == Version::V5
                        && !ever_connected
                        && e.reached_broker;
                    if fall_back {
                        tracing::info!(
                            "the broker at {} refused MQTT 5 ({}); trying MQTT 3.1.1",
                            inner.setup.url,
                            e.why
                        );
                        version = Version::V311;
                        break;
                    }
                    tokio::select! {
                        _ = inner.stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }
}
