//! Who answers the requests a peer sends us.
//!
//! Links are symmetric: a node may send requests up its link, a client may
//! be asked things by the mux. Every [`Endpoint`](super::Endpoint) has a
//! [`Handler`]; each incoming request runs in its own task.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};

use crate::error::RemoteError;
use crate::message::Path;
use crate::value::Value;

/// One request from the peer, as the handler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The command path, e.g. `["fs", "ls"]`.
    pub path: Path,
    /// Keyword arguments (a map; `{}` when the peer sent none).
    pub data: Value,
    /// Error proxy names the caller expects (`x`): not worth logging.
    pub expect: Vec<String>,
}

/// Answers the peer's requests.
///
/// `call` and `stream` return `'static` futures/streams: clone what they
/// need out of `self`. Dropping them (the peer cancelled, the link died)
/// must stop the work.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn call(&self, req: Request) -> BoxFuture<'static, Result<Value, RemoteError>>;

    /// Answers a stream request (`r: every_ms`). The default calls
    /// [`call`](Handler::call) at once and then every `every_ms`, ending
    /// the stream at the first error (docs/protocol.md: Encoding, streams: any command can be
    /// streamed).
    fn stream(
        self: Arc<Self>,
        req: Request,
        every_ms: u32,
    ) -> BoxStream<'static, Result<Value, RemoteError>> {
        repeat_call(move || self.call(req.clone()), every_ms)
    }

    /// A fire-and-forget request or unsolicited message (`{a, d}` without
    /// `i`). Endpoint subscribers see it as well; the default ignores it.
    fn notify(&self, _path: Path, _data: Value) {}
}

/// Calls `call` at once and then every `every_ms` (at least 1 ms), yielding
/// each result; ends after the first error.
pub fn repeat_call<F>(call: F, every_ms: u32) -> BoxStream<'static, Result<Value, RemoteError>>
where
    F: FnMut() -> BoxFuture<'static, Result<Value, RemoteError>> + Send + 'static,
{
    let period = Duration::from_millis(u64::from(every_ms.max(1)));
    let mut ticks = tokio::time::interval(period);
    // A slow command delays the next call rather than bunching calls up.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    stream::unfold(
        (call, ticks, false),
        |(mut call, mut ticks, failed)| async move {
            if failed {
                return None;
            }
            ticks.tick().await;
            let result = call().await;
            let failed = result.is_err();
            Some((result, (call, ticks, failed)))
        },
    )
    .boxed()
}

/// Serves nothing: every request gets `_NPErr`. For pure clients.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHandler;

impl Handler for NoHandler {
    fn call(&self, req: Request) -> BoxFuture<'static, Result<Value, RemoteError>> {
        let path = req.path.iter().map(Value::from).collect();
        Box::pin(async move { Err(RemoteError::no_path(path, "this peer serves no commands")) })
    }
}
