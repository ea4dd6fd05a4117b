//! Authenticated connections (docs/auth.md): after a connector has its
//! transport up and before the [`Endpoint`] runs, the host (the initiator)
//! does the handshake over it; then every message it sends is sealed and
//! every one it receives opened. A message that does not open (altered,
//! replayed, reordered, injected, unsealed) is dropped and counted, and the
//! link goes on: one bad packet must not let an attacker cut the link any
//! more than it lets them in.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future;
use futures::stream::BoxStream;
use futures::{Sink, SinkExt, Stream, StreamExt};

use super::{ConnectCtx, ConnectError};
use crate::auth::handshake::{self, HandshakeError};
use crate::auth::seal::Form;
use crate::auth::{self, AuthConfig, AuthCounters, Initiator, Opener, Peer, Sealer};
use crate::endpoint::Endpoint;
use crate::framing::Incoming;
use crate::value::Value;

type Source = BoxStream<'static, Result<Incoming, String>>;
type BoxSink = std::pin::Pin<Box<dyn Sink<Value, Error = String> + Send>>;

/// Runs the endpoint over `source`/`sink`, authenticated when the link
/// says so. `place` names where the node was reached in messages
/// (`port 27587`, `/dev/ttyUSB0`); `form` is how the link's kind carries
/// sealed messages.
pub(crate) async fn start<S, K, E, F>(
    ctx: &ConnectCtx,
    source: S,
    sink: K,
    place: &str,
    form: Form,
) -> Result<Endpoint, ConnectError>
where
    S: Stream<Item = Result<Incoming, E>> + Send + Unpin + 'static,
    K: Sink<Value, Error = F> + Send + Unpin + 'static,
    E: fmt::Display + Send + 'static,
    F: fmt::Display + Send + 'static,
{
    let Some(auth) = &ctx.auth else {
        return Ok(Endpoint::spawn_parts(
            source,
            sink,
            ctx.handler.clone(),
            ctx.endpoint_config(),
        ));
    };
    let source: Source = source.map(|r| r.map_err(|e| e.to_string())).boxed();
    let sink: BoxSink = Box::pin(sink.sink_map_err(|e| e.to_string()));
    let shake = handshake_over(auth, source, sink, ctx);
    let (source, sink, peer, session) = match tokio::time::timeout(ctx.timeout, shake).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return Err(failed(ctx, e.describe(place))),
        Err(_) => {
            let e = HandshakeError::NoAnswer {
                node: auth.node.clone(),
                waited: ctx.timeout,
            };
            return Err(failed(ctx, e.describe(place)));
        }
    };
    if peer.key_index > 0 {
        tracing::info!(node = %ctx.name, key = peer.key_index, "the node answers to a pending key");
    }
    *ctx.peer.lock().unwrap_or_else(|p| p.into_inner()) = Some(peer);
    let (sealer, opener) = session.in_form(form).split();
    Ok(Endpoint::spawn_parts(
        opened(source, opener, ctx.auth_counters.clone(), &ctx.name),
        sealed(sink, sealer),
        ctx.handler.clone(),
        ctx.endpoint_config(),
    ))
}

fn failed(ctx: &ConnectCtx, why: String) -> ConnectError {
    ctx.auth_counters.failed.fetch_add(1, Ordering::Relaxed);
    why
}

/// Steps 1 to 3 on the transport; console bytes meanwhile go to the
/// link's console.
async fn handshake_over(
    auth: &AuthConfig,
    mut source: Source,
    mut sink: BoxSink,
    ctx: &ConnectCtx,
) -> Result<(Source, BoxSink, Peer, auth::Session), HandshakeError> {
    let closed = || HandshakeError::Closed {
        node: auth.node.clone(),
    };
    let ni = auth::nonce().map_err(|e| HandshakeError::Malformed {
        node: auth.node.clone(),
        why: format!("no random bytes for a nonce here: {e}"),
    })?;
    let initiator = Initiator::new(auth, ni);
    sink.send(initiator.hello()).await.map_err(|_| closed())?;
    let challenge = loop {
        match source.next().await {
            Some(Ok(Incoming::Message(v))) => break v,
            Some(Ok(Incoming::Console(bytes))) => {
                let _ = ctx.console.send(bytes);
            }
            Some(Err(_)) | None => return Err(closed()),
        }
    };
    let done = initiator.on_challenge(&challenge)?;
    sink.send(done.proof).await.map_err(|_| closed())?;
    Ok((source, sink, done.peer, done.session))
}

/// Incoming sealed messages opened; the rest dropped and counted. An
/// unsealed `_AuErr` is dropped like any unsealed message (anyone can
/// inject one) but kept: when the link then ends, it says why.
fn opened(source: Source, opener: Opener, counters: Arc<AuthCounters>, node: &str) -> Source {
    struct St {
        source: Source,
        opener: Opener,
        counters: Arc<AuthCounters>,
        node: String,
        refused: Option<String>,
        warned: bool,
    }
    let st = St {
        source,
        opener,
        counters,
        node: node.to_owned(),
        refused: None,
        warned: false,
    };
    futures::stream::unfold(Some(st), |st| async move {
        let mut st = st?;
        loop {
            match st.source.next().await {
                Some(Ok(Incoming::Message(v))) => match st.opener.open(&v) {
                    Ok(msg) => {
                        st.counters.ok.fetch_add(1, Ordering::Relaxed);
                        return Some((Ok(Incoming::Message(msg)), Some(st)));
                    }
                    Err(why) => {
                        st.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        if let Some(reason) = handshake::auth_error(&v) {
                            st.refused = Some(reason);
                        }
                        // Once per connection: junk must not flood the log.
                        if !st.warned {
                            tracing::warn!(node = %st.node, "dropped {why} (dropped messages are counted: auth_dropped in mux ls)");
                            st.warned = true;
                        } else {
                            tracing::debug!(node = %st.node, "dropped {why}");
                        }
                    }
                },
                Some(other) => return Some((other, Some(st))),
                None => {
                    let reason = st.refused.take()?;
                    let why = format!("node '{}' refused the link: {reason}", st.node);
                    return Some((Err(why), None));
                }
            }
        }
    })
    .boxed()
}

/// Outgoing messages sealed under the next counter.
fn sealed(sink: BoxSink, mut sealer: Sealer) -> BoxSink {
    Box::pin(sink.with(move |v: Value| future::ready(sealer.seal(&v).map_err(|e| e.to_string()))))
}
