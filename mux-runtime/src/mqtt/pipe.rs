//! Endpoints whose transport is the broker: what arrives on a topic is
//! fed to the endpoint, what it sends is published. The bridge makes one
//! per remote node it forwards to and one per requester it serves
//! ([`NodeScope`] answers those like the mux's local clients).

use std::pin::Pin;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Sink, StreamExt};
use tokio::sync::mpsc;

use crate::endpoint::{Endpoint, EndpointConfig, Handler, Request};
use crate::error::RemoteError;
use crate::framing::Incoming;
use crate::message::{Message, Path};
use crate::mux::{route, Uplink};
use crate::value::Value;

type PublishSink = Pin<Box<dyn Sink<Value, Error = String> + Send>>;

/// An endpoint whose transport is the broker.
pub struct Pipe {
    pub endpoint: Endpoint,
    feed: mpsc::UnboundedSender<Result<Incoming, String>>,
}

impl Pipe {
    /// An endpoint answering the broker's messages with `handler` (fed
    /// with [`feed`](Pipe::feed)), each message it sends handed to
    /// `publish`, one at a time in order.
    pub fn spawn<P>(publish: P, handler: Arc<dyn Handler>, name: String) -> Pipe
    where
        P: Fn(Value) -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        let (feed, rx) = mpsc::unbounded_channel();
        let source = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed();
        let sink: PublishSink = Box::pin(futures::sink::unfold(
            Arc::new(publish),
            |publish, message: Value| async move {
                publish(message).await?;
                Ok(publish)
            },
        ));
        let endpoint = Endpoint::spawn_parts(source, sink, handler, EndpointConfig { name });
        Pipe { endpoint, feed }
    }

    pub fn feed(&self, message: Value) {
        let _ = self.feed.send(Ok(Incoming::Message(message)));
    }

    /// Fails what is pending on it with `why` and closes it.
    pub fn fail(&self, why: &str) {
        let _ = self.feed.send(Err(why.to_owned()));
    }
}

/// Serves requests to one local node arriving from the broker: the path
/// is relative to the node, the rest is the mux's handler.
pub struct NodeScope {
    pub node: String,
    pub uplink: Arc<Uplink>,
}

impl NodeScope {
    fn scoped(&self, mut req: Request) -> Request {
        req.path = route::prefixed(&self.node, &req.path);
        req
    }
}

impl Handler for NodeScope {
    fn call(&self, req: Request) -> BoxFuture<'static, Result<Value, RemoteError>> {
        self.uplink.call(self.scoped(req))
    }

    fn stream(
        self: Arc<Self>,
        req: Request,
        every_ms: u32,
    ) -> BoxStream<'static, Result<Value, RemoteError>> {
        let req = self.scoped(req);
        self.uplink.clone().stream(req, every_ms)
    }

    fn notify(&self, path: Path, data: Value) {
        self.uplink.notify(route::prefixed(&self.node, &path), data)
    }
}

/// An answer over the broker's limit, replaced by an error for the same
/// request so the requester learns why.
pub fn too_big(message: &Value, size: usize, limit: usize, url: &str) -> Vec<u8> {
    let seq = match Message::from_value(message.clone()) {
        Ok(Message::Reply { seq, .. } | Message::StreamItem { seq, .. }) => seq,
        // Anything else is small; send it as it is and let the broker say.
        _ => return crate::msgpack::to_vec(message),
    };
    let error = RemoteError::generic(format!(
        "size: the answer is {size} bytes, over the {limit}-byte message limit of the MQTT \
         bridge to {url}; ask for less (or raise the broker's max_packet_size and \
         [mqtt] max_message)"
    ));
    Message::Error { seq, error }.to_bytes()
}
