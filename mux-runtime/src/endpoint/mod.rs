//! One protocol peer over any framed transport (docs/protocol.md: Encoding).
//!
//! An [`Endpoint`] owns one link's worth of conversation: it numbers our
//! requests with even sequence numbers, flips bit 0 of every received `i`,
//! routes answers back to whoever asked ([`Endpoint::call`],
//! [`Endpoint::stream`]), serves the peer's requests with a [`Handler`]
//! (links are symmetric), and publishes unsolicited messages and console
//! bytes to subscribers. When the transport ends, every pending request
//! fails with `_LnkErr` at once.
//!
//! The transport is anything that yields [`Incoming`] items and accepts
//! message maps: a tokio-util `Framed` with one of the [`framing`] codecs,
//! the reliable layer, or an in-memory channel in tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mux_runtime::endpoint::Endpoint;
//! use mux_runtime::Value;
//! use futures::StreamExt;
//!
//! let node = Endpoint::connect_unix("/run/user/1000/moat/garden.sock").await?;
//! let pong = node.call(["pump", "ping"], Value::map([("m", "hi".into())])).await?;
//! let mut temps = node.stream(["pump", "t", "temp"], Value::map::<&str>([]), 10_000);
//! while let Some(t) = temps.next().await {
//!     println!("{}", t?);
//! }
//! # Ok(()) }
//! ```
//!
//! [`framing`]: crate::framing

mod handler;
mod stream;
pub mod table;

use std::fmt;
use std::future::Future;
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

pub use handler::{repeat_call, Handler, NoHandler, Request};
pub use stream::ReplyStream;

use crate::error::{RemoteError, WellKnown};
use crate::framing::{Incoming, StreamCodec};
use crate::message::{self, Message, Path, PathElem};
use crate::msgpack;
use crate::seq::{self, Seq};
use crate::value::Value;
use table::{Delivery, Outcome, RequestTable, ServingTable};

/// How many unsolicited messages / console chunks a slow subscriber may
/// fall behind before it misses some (it is told how many it missed).
const BROADCAST_DEPTH: usize = 256;

/// Messages queued for the transport above which the tasks serving the
/// peer's requests wait before sending more: a peer that does not read
/// gets its streams coalesced (docs/protocol.md: Encoding, streams) instead of growing our queue.
pub const HIGH_WATER: usize = 256;

/// The peer's requests served at once; beyond that new ones are refused
/// (a peer flooding requests cannot spawn tasks without bound).
pub const MAX_SERVING: usize = 4096;

/// An unsolicited message or fire-and-forget request: `{a, d}` without `i`.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub path: Path,
    /// `Nil` when the message had no `d`.
    pub data: Value,
}

/// Message counters of one endpoint (bytes are counted by the link).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub messages_in: u64,
    pub messages_out: u64,
    pub console_bytes_in: u64,
    /// Received maps that were not valid messages (logged and dropped).
    pub bad_messages_in: u64,
    /// Our requests waiting for answers right now.
    pub pending: usize,
    /// The peer's requests we are serving right now.
    pub serving: usize,
    /// Messages waiting for the transport.
    pub queued: usize,
}

/// Settings for [`Endpoint::spawn_with`].
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Shown in logs and in `_LnkErr` args, e.g. the node's name.
    pub name: String,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            name: "peer".into(),
        }
    }
}

/// Who waits for an answer to one of our requests.
enum Waiter {
    Call(oneshot::Sender<Result<Value, RemoteError>>),
    Stream(Arc<stream::Slot>),
}

struct State {
    requests: RequestTable<Waiter>,
    serving: ServingTable<AbortHandle>,
    /// Set once the link is gone; everything fails with this from then on.
    down: Option<RemoteError>,
    /// The largest request the peer takes, in encoded bytes, and who it is
    /// for the error (e.g. "node `pump`"): a bigger one fails here instead
    /// of being skipped there.
    /// And what to do about it.
    peer_limit: Option<(usize, String, String)>,
}

#[derive(Default)]
struct Counters {
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    console_bytes_in: AtomicU64,
    bad_messages_in: AtomicU64,
}

struct Shared {
    name: String,
    state: Mutex<State>,
    out: mpsc::UnboundedSender<Value>,
    /// Made on first subscription: most peers (the mux's clients) never
    /// subscribe, and a channel preallocates all its slots.
    notices: OnceLock<broadcast::Sender<Notice>>,
    console: OnceLock<broadcast::Sender<Bytes>>,
    closed: CancellationToken,
    counters: Counters,
    handler: Arc<dyn Handler>,
    /// Messages handed to the write loop and not yet written.
    queued: AtomicUsize,
    /// Signalled when the write loop has drained below [`HIGH_WATER`].
    drained: Notify,
}

/// Closes the link when the last [`Endpoint`] handle is dropped (serving
/// tasks hold only [`Shared`], so they do not keep the link open).
struct Owner(CancellationToken);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A handle on one protocol peer. Cheap to clone; the link closes when the
/// last handle (including open calls and streams) is dropped or on
/// [`close`](Endpoint::close).
#[derive(Clone)]
pub struct Endpoint {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.shared.name)
            .field("up", &self.is_up())
            .finish()
    }
}

impl Endpoint {
    /// Starts talking over `transport`, answering the peer's requests with
    /// `handler`. Spawns the link's tasks on the current tokio runtime.
    pub fn spawn<T, E, F>(transport: T, handler: Arc<dyn Handler>) -> Endpoint
    where
        T: Stream<Item = Result<Incoming, E>> + Sink<Value, Error = F> + Send + 'static,
        E: fmt::Display + Send + 'static,
        F: fmt::Display + Send + 'static,
    {
        Endpoint::spawn_with(transport, handler, EndpointConfig::default())
    }

    /// [`spawn`](Endpoint::spawn) with a name and settings.
    pub fn spawn_with<T, E, F>(
        transport: T,
        handler: Arc<dyn Handler>,
        config: EndpointConfig,
    ) -> Endpoint
    where
        T: Stream<Item = Result<Incoming, E>> + Sink<Value, Error = F> + Send + 'static,
        E: fmt::Display + Send + 'static,
        F: fmt::Display + Send + 'static,
    {
        let (sink, source) = transport.split();
        Endpoint::spawn_parts(source, sink, handler, config)
    }

    /// Like [`spawn_with`](Endpoint::spawn_with) for a transport that comes
    /// as two halves (a child's stdout and stdin, a reliable link's events
    /// and handle).
    pub fn spawn_parts<S, K, E, F>(
        source: S,
        sink: K,
        handler: Arc<dyn Handler>,
        config: EndpointConfig,
    ) -> Endpoint
    where
        S: Stream<Item = Result<Incoming, E>> + Send + Unpin + 'static,
        K: Sink<Value, Error = F> + Send + Unpin + 'static,
        E: fmt::Display + Send + 'static,
        F: fmt::Display + Send + 'static,
    {
        let (out, out_rx) = mpsc::unbounded_channel();
        let closed = CancellationToken::new();
        let shared = Arc::new(Shared {
            name: config.name,
            state: Mutex::new(State {
                requests: RequestTable::new(),
                serving: ServingTable::default(),
                down: None,
                peer_limit: None,
            }),
            out,
            notices: OnceLock::new(),
            console: OnceLock::new(),
            closed: closed.clone(),
            counters: Counters::default(),
            handler,
            queued: AtomicUsize::new(0),
            drained: Notify::new(),
        });
        tokio::spawn(write_loop(shared.clone(), sink, out_rx));
        tokio::spawn(read_loop(shared.clone(), source));
        Endpoint {
            shared,
            _owner: Arc::new(Owner(closed)),
        }
    }

    /// Connects to a Unix-domain socket speaking the stream framing (a
    /// `moat mux`). Serves nothing to the peer.
    pub async fn connect_unix(path: impl AsRef<FsPath>) -> std::io::Result<Endpoint> {
        let path = path.as_ref();
        let io = tokio::net::UnixStream::connect(path).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot connect to {}: {e} (is `moat mux` running?)",
                    path.display()
                ),
            )
        })?;
        Ok(Endpoint::over_stream(io, &path.display().to_string()))
    }

    /// Connects to a node or mux over TCP (stream framing, docs/protocol.md: Framing).
    pub async fn connect_tcp(addr: &str) -> std::io::Result<Endpoint> {
        let io = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot connect to {addr}: {e}")))?;
        io.set_nodelay(true)?;
        Ok(Endpoint::over_stream(io, addr))
    }

    /// Talks the stream framing over any byte stream (serves nothing).
    pub fn over_stream<IO>(io: IO, name: &str) -> Endpoint
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let framed = tokio_util::codec::Framed::new(io, StreamCodec::default());
        Endpoint::spawn_with(
            framed,
            Arc::new(NoHandler),
            EndpointConfig {
                name: name.to_owned(),
            },
        )
    }

    /// Refuses requests bigger than `bytes` encoded (a node's `m`) with an
    /// error naming both sizes and `who` (e.g. "node `pump`"), before
    /// anything is sent.
    pub fn set_peer_limit(&self, bytes: usize, who: &str) {
        self.set_peer_limit_fix(bytes, who, "raise `m` on its link, or send less");
    }

    /// [`set_peer_limit`](Endpoint::set_peer_limit) with what the error
    /// tells to do (a peer whose limit is not its `m`).
    pub fn set_peer_limit_fix(&self, bytes: usize, who: &str, fix: &str) {
        self.shared.lock().peer_limit = Some((bytes, who.to_owned(), fix.to_owned()));
    }

    /// The name given in [`EndpointConfig`].
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Calls `path` with keyword arguments `data` (a map, or `Nil` for none)
    /// and waits for the result. Dropping the future before the answer
    /// arrives cancels the request on the peer.
    pub fn call<E: Into<PathElem>>(
        &self,
        path: impl IntoIterator<Item = E>,
        data: Value,
    ) -> impl Future<Output = Result<Value, RemoteError>> + Send + 'static {
        self.call_expecting(path, data, Vec::new())
    }

    /// [`call`](Endpoint::call) telling the peer which error proxy names
    /// (`x`, e.g. `"_FnErr"`) are expected, so it does not log them.
    pub fn call_expecting<E: Into<PathElem>>(
        &self,
        path: impl IntoIterator<Item = E>,
        data: Value,
        expect: Vec<String>,
    ) -> impl Future<Output = Result<Value, RemoteError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let path = message::path(path);
        let opened = self
            .shared
            .open(Waiter::Call(tx), false, |seq| Message::Request {
                path,
                data: kwargs(data),
                seq,
                stream: None,
                expect,
            });
        let guard = opened.map(|seq| CancelOnDrop {
            endpoint: self.clone(),
            seq,
        });
        async move {
            let guard = guard?;
            // After the answer the guard's cancel finds nothing open.
            rx.await
                .unwrap_or_else(|_| Err(guard.endpoint.down_error()))
        }
    }

    /// Opens a stream: `path` is called at once and then every `every_ms`
    /// on the peer. Items arrive in order; a consumer slower than the
    /// stream gets the latest values (old ones are coalesced away). An
    /// error ends the stream. Dropping the stream cancels it on the peer.
    pub fn stream<E: Into<PathElem>>(
        &self,
        path: impl IntoIterator<Item = E>,
        data: Value,
        every_ms: u32,
    ) -> ReplyStream {
        let slot = Arc::new(stream::Slot::default());
        let path = message::path(path);
        let opened = self
            .shared
            .open(Waiter::Stream(slot.clone()), true, |seq| Message::Request {
                path,
                data: kwargs(data),
                seq,
                stream: Some(every_ms),
                expect: Vec::new(),
            });
        match opened {
            Ok(seq) => ReplyStream::new(self.clone(), seq, slot),
            Err(e) => {
                slot.push(Err(e));
                slot.end();
                ReplyStream::finished(self.clone(), slot)
            }
        }
    }

    /// Sends a fire-and-forget request or unsolicited message `{a, d}`
    /// (no answer). Fails only when the link is down.
    pub fn send<E: Into<PathElem>>(
        &self,
        path: impl IntoIterator<Item = E>,
        data: Value,
    ) -> Result<(), RemoteError> {
        let msg = Message::Unsolicited {
            path: message::path(path),
            data,
        };
        let state = self.shared.lock();
        if let Some(down) = &state.down {
            return Err(down.clone());
        }
        self.shared.send(&msg);
        Ok(())
    }

    /// Unsolicited messages and fire-and-forget requests from the peer,
    /// from now on.
    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.shared
            .notices
            .get_or_init(|| broadcast::channel(BROADCAST_DEPTH).0)
            .subscribe()
    }

    /// Console bytes from the peer (lossless and serial links), from now on.
    pub fn console(&self) -> broadcast::Receiver<Bytes> {
        self.shared
            .console
            .get_or_init(|| broadcast::channel(BROADCAST_DEPTH).0)
            .subscribe()
    }

    /// Whether the link is still up.
    pub fn is_up(&self) -> bool {
        self.shared.lock().down.is_none()
    }

    /// Resolves once the link is down (transport ended, failed or closed).
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.closed.clone().cancelled_owned()
    }

    /// Closes the link: pending requests fail with `_LnkErr`.
    pub fn close(&self) {
        self.shared.closed.cancel();
    }

    pub fn stats(&self) -> EndpointStats {
        let c = &self.shared.counters;
        let state = self.shared.lock();
        EndpointStats {
            messages_in: c.messages_in.load(Ordering::Relaxed),
            messages_out: c.messages_out.load(Ordering::Relaxed),
            console_bytes_in: c.console_bytes_in.load(Ordering::Relaxed),
            bad_messages_in: c.bad_messages_in.load(Ordering::Relaxed),
            pending: state.requests.len(),
            serving: state.serving.len(),
            queued: self.shared.queued.load(Ordering::Relaxed),
        }
    }

    /// Why the link is down (`_LnkErr` with the reason), `None` while up.
    pub fn down_reason(&self) -> Option<RemoteError> {
        self.shared.lock().down.clone()
    }

    /// The error pending and new requests get once the link is down.
    fn down_error(&self) -> RemoteError {
        self.shared
            .lock()
            .down
            .clone()
            .unwrap_or_else(|| link_down(&self.shared.name, "closed"))
    }

    /// Our side gave up on `seq` (dropped call or stream).
    fn cancel(&self, seq: Seq) {
        let mut state = self.shared.lock();
        if state.requests.cancel(seq).is_some() && state.down.is_none() {
            self.shared.send(&Message::cancel(seq));
        }
    }
}

/// `Nil` kwargs travel as `{}`.
fn kwargs(data: Value) -> Value {
    if data.is_nil() {
        Value::Map(Vec::new())
    } else {
        data
    }
}

/// `_LnkErr` with the peer's name and why.
pub fn link_down(name: &str, why: &str) -> RemoteError {
    RemoteError::well_known(WellKnown::LinkDown, vec![name.into(), why.into()])
}

/// Cancels a call on the peer if its future is dropped before the answer.
struct CancelOnDrop {
    endpoint: Endpoint,
    seq: Seq,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        // After an answer the number is no longer open: this sends nothing.
        self.endpoint.cancel(self.seq);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every table update is a single insert/remove, so a panic while
        // holding the lock leaves them consistent: ignore poisoning.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, msg: &Message) {
        // Count before queueing: the write loop may take the message and
        // subtract it before a later increment, wrapping `queued` above
        // HIGH_WATER with no `written` crossing left to wake `room()`.
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.out.send(msg.to_value()).is_ok() {
            self.counters.messages_out.fetch_add(1, Ordering::Relaxed);
        } else {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Waits while the transport is behind (more than [`HIGH_WATER`]
    /// messages queued).
    async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.queued.load(Ordering::Relaxed) < HIGH_WATER || self.closed.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = drained => {}
                _ = self.closed.cancelled() => return,
            }
        }
    }

    /// The write loop took `n` messages off the queue.
    fn written(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::Relaxed);
        if before >= HIGH_WATER && before - n < HIGH_WATER {
            self.drained.notify_waiters();
        }
    }

    /// Opens one of our requests and sends what `build` makes of its number.
    fn open(
        &self,
        waiter: Waiter,
        streaming: bool,
        build: impl FnOnce(Seq) -> Message,
    ) -> Result<Seq, RemoteError> {
        let mut state = self.lock();
        if let Some(down) = &state.down {
            return Err(down.clone());
        }
        let seq = state.requests.open(waiter, streaming).map_err(|_| {
            RemoteError::generic(format!(
                "too many open requests to {}: every sequence number is in use",
                self.name
            ))
        })?;
        let msg = build(seq);
        if let Some((limit, who, fix)) = &state.peer_limit {
            let size = msgpack::to_vec(&msg.to_value()).len();
            if size > *limit {
                let e = format!("request is {size} bytes; {who} accepts {limit}: {fix}");
                state.requests.cancel(seq);
                return Err(RemoteError::generic(e));
            }
        }
        self.send(&msg);
        Ok(seq)
    }

    /// One message from the peer.
    fn receive(self: &Arc<Self>, value: Value) {
        // A broken request still deserves an answer, or its sender waits
        // forever: keep what identifies it.
        let request_seq = match (value.get("a"), value.get("i")) {
            (Some(_), Some(Value::Int(i))) => Seq::try_from(*i).ok(),
            _ => None,
        };
        let mut msg = match Message::from_value(value) {
            Ok(msg) => msg,
            Err(e) => {
                self.counters
                    .bad_messages_in
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %self.name, "dropping an invalid message: {e}");
                if let Some(i) = request_seq {
                    let err = RemoteError::well_known(
                        WellKnown::Value,
                        vec![Value::from(format!("invalid request: {e}"))],
                    );
                    self.send(&Message::error(seq::flip(i), err));
                }
                return;
            }
        };
        self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
        msg.flip_seq();
        match msg {
            Message::Request {
                path,
                data,
                seq,
                stream,
                expect,
            } => self.serve(seq, Request { path, data, expect }, stream),
            Message::Unsolicited { path, data } => {
                self.handler.notify(path.clone(), data.clone());
                // No subscribers is fine: nobody is interested.
                if let Some(tx) = self.notices.get() {
                    let _ = tx.send(Notice { path, data });
                }
            }
            Message::Cancel { seq } => {
                if let Some(task) = self.lock().serving.finish(seq) {
                    task.abort();
                }
            }
            answer => self.deliver(answer),
        }
    }

    /// An answer to one of our requests.
    fn deliver(&self, answer: Message) {
        let mut state = self.lock();
        match state.requests.answer(answer) {
            Delivery::Final(Waiter::Call(tx), outcome) => {
                drop(state);
                let result = match outcome {
                    Outcome::Reply(v) => Ok(v),
                    Outcome::Failed(e) => Err(e),
                    // A plain call ended as a stream: no value.
                    Outcome::End | Outcome::Item { .. } => Ok(Value::Nil),
                };
                // The caller may have given up meanwhile; nothing to do.
                let _ = tx.send(result);
            }
            Delivery::Final(Waiter::Stream(slot), outcome) => {
                drop(state);
                match outcome {
                    Outcome::Reply(v) | Outcome::Item { data: v, .. } => slot.push(Ok(v)),
                    Outcome::Failed(e) => slot.push(Err(e)),
                    Outcome::End => {}
                }
                slot.end();
            }
            Delivery::Ongoing(Waiter::Stream(slot), Outcome::Item { data, .. }) => {
                slot.push(Ok(data))
            }
            Delivery::Ongoing(..) => {}
            Delivery::Unknown => {
                tracing::debug!(peer = %self.name, "dropping an answer to no open request");
            }
        }
    }

    /// Runs the peer's request `seq` in its own task.
    fn serve(self: &Arc<Self>, seq: Seq, req: Request, stream: Option<u32>) {
        let mut state = self.lock();
        if state.down.is_some() {
            return;
        }
        if state.serving.is_serving(seq) {
            drop(state);
            let err =
                RemoteError::well_known(WellKnown::Duplicate, vec![Value::from(seq::flip(seq))]);
            self.send(&Message::error(seq, err));
            return;
        }
        if state.serving.len() >= MAX_SERVING {
            drop(state);
            let err = RemoteError::generic(format!(
                "{MAX_SERVING} requests are already running here; wait for answers before sending more"
            ));
            self.send(&Message::error(seq, err));
            return;
        }
        let shared = self.clone();
        // Spawned under the lock so the task cannot finish before it is
        // registered.
        let task = match stream {
            None => tokio::spawn(async move {
                let answer = match shared.handler.call(req).await {
                    Ok(v) => Message::reply(seq, v),
                    Err(e) => Message::error(seq, e),
                };
                shared.room().await;
                shared.finish(seq, &answer);
            }),
            Some(every_ms) => tokio::spawn(async move {
                let mut items = shared.handler.clone().stream(req, every_ms);
                let mut n = 0;
                while let Some(item) = items.next().await {
                    // A peer that does not read: wait (the source coalesces).
                    shared.room().await;
                    match item {
                        Ok(v) => {
                            n += 1;
                            if !shared.send_if_serving(seq, &Message::stream_item(seq, n, v)) {
                                return;
                            }
                        }
                        Err(e) => return shared.finish(seq, &Message::error(seq, e)),
                    }
                }
                shared.finish(seq, &Message::stream_end(seq));
            }),
        };
        // Cannot collide: checked above under the same lock.
        let _ = state.serving.start(seq, task.abort_handle());
    }

    /// Sends the final answer to `seq` unless it was cancelled meanwhile.
    fn finish(&self, seq: Seq, answer: &Message) {
        let mut state = self.lock();
        if state.serving.finish(seq).is_some() {
            self.send(answer);
        }
    }

    /// Sends a stream item unless the stream was cancelled meanwhile.
    fn send_if_serving(&self, seq: Seq, item: &Message) -> bool {
        let state = self.lock();
        let serving = state.serving.is_serving(seq);
        if serving {
            self.send(item);
        }
        serving
    }

    /// The link is gone: fail everything pending at once, stop serving.
    fn link_lost(&self, why: &str) {
        let mut state = self.lock();
        if state.down.is_some() {
            return;
        }
        let err = link_down(&self.name, why);
        state.down = Some(err.clone());
        let waiters = state.requests.drain();
        let tasks = state.serving.drain();
        drop(state);
        for task in tasks {
            task.abort();
        }
        for waiter in waiters {
            match waiter {
                Waiter::Call(tx) => {
                    let _ = tx.send(Err(err.clone()));
                }
                Waiter::Stream(slot) => {
                    slot.push(Err(err.clone()));
                    slot.end();
                }
            }
        }
        self.closed.cancel();
    }
}

async fn read_loop<S, E>(shared: Arc<Shared>, mut source: S)
where
    S: Stream<Item = Result<Incoming, E>> + Unpin,
    E: fmt::Display,
{
    let why = loop {
        let next = tokio::select! {
            _ = shared.closed.cancelled() => break "closed".to_owned(),
            next = source.next() => next,
        };
        match next {
            Some(Ok(Incoming::Message(v))) => shared.receive(v),
            Some(Ok(Incoming::Console(bytes))) => {
                shared
                    .counters
                    .console_bytes_in
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if let Some(tx) = shared.console.get() {
                    let _ = tx.send(bytes);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(peer = %shared.name, "link failed: {e}");
                break e.to_string();
            }
            None => break "the peer closed the link".to_owned(),
        }
    };
    shared.link_lost(&why);
}

async fn write_loop<K, F>(shared: Arc<Shared>, mut sink: K, mut out: mpsc::UnboundedReceiver<Value>)
where
    K: Sink<Value, Error = F> + Unpin,
    F: fmt::Display,
{
    let result: Result<(), F> = async {
        loop {
            let first = tokio::select! {
                _ = shared.closed.cancelled() => break,
                v = out.recv() => match v { Some(v) => v, None => break },
            };
            sink.feed(first).await?;
            let mut n = 1;
            // Batch whatever else is queued into one flush.
            while let Ok(v) = out.try_recv() {
                sink.feed(v).await?;
                n += 1;
            }
            sink.flush().await?;
            shared.written(n);
        }
        // Best effort: whatever was queued before the close (e.g. the
        // answer to a last request) still goes out.
        while let Ok(v) = out.try_recv() {
            sink.feed(v).await?;
        }
        sink.close().await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(peer = %shared.name, "cannot send: {e}");
        shared.link_lost(&format!("cannot send: {e}"));
    }
}
