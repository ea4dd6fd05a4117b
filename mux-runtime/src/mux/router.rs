//! The mux's request handler: the same for clients and for nodes (a node's
//! requests sent up its link are resolved from the mux root too).

use std::sync::{Arc, Weak};

use futures::future::{self, BoxFuture, FutureExt};
use futures::stream::{self, BoxStream, StreamExt};

use super::route::{self, Route};
use super::{apps, Core};
use crate::endpoint::{link_down, repeat_call, Handler, Request};
use crate::error::RemoteError;
use crate::message::Path;
use crate::value::Value;

/// Answers requests arriving on one link: a client's (`node: None`) or a
/// node's (`node: Some(name)`, whose unsolicited messages are fanned out).
pub struct Uplink {
    pub(super) node: Option<String>,
    pub(super) core: Weak<Core>,
}

impl Uplink {
    /// The handler of a client's requests (a local client's, or one
    /// arriving through the MQTT bridge).
    pub fn client(core: Weak<Core>) -> Uplink {
        Uplink { node: None, core }
    }
}

fn stopping() -> RemoteError {
    link_down("mux", "the mux is starting or stopping")
}

impl Uplink {
    /// Where `path` goes, with the core (or the error to answer).
    fn resolve(&self, path: &Path) -> Result<(Arc<Core>, Route), RemoteError> {
        let core = self.core.upgrade().ok_or_else(stopping)?;
        let route = core.route(path);
        Ok((core, route))
    }
}

impl Handler for Uplink {
    fn call(&self, req: Request) -> BoxFuture<'static, Result<Value, RemoteError>> {
        let (core, route) = match self.resolve(&req.path) {
            Ok(found) => found,
            Err(e) => return future::ready(Err(e)).boxed(),
        };
        match route {
            // A node another mux holds: through the broker.
            Route::Node { node, rest } if core.node(&node).is_none() => {
                match core.remote_endpoint(&node) {
                    Ok(ep) => ep.call_expecting(rest, req.data, req.expect).boxed(),
                    Err(e) => future::ready(Err(e)).boxed(),
                }
            }
            Route::Node { node, rest } => async move {
                let (_slot, ep) = core.reserve(&node).await?;
                ep.call_expecting(rest, req.data, req.expect).await
            }
            .boxed(),
            Route::Mux { rest } => apps::call(&core, &rest, &req.data),
            Route::Root { command } => {
                future::ready(apps::root(&core, &command, &req.data)).boxed()
            }
            Route::Nowhere(e) => future::ready(Err(e)).boxed(),
        }
    }

    fn stream(
        self: Arc<Self>,
        req: Request,
        every_ms: u32,
    ) -> BoxStream<'static, Result<Value, RemoteError>> {
        let (core, route) = match self.resolve(&req.path) {
            Ok(found) => found,
            Err(e) => return stream::once(future::ready(Err(e))).boxed(),
        };
        match route {
            Route::Node { node, rest } if core.node(&node).is_none() => {
                match core.remote_endpoint(&node) {
                    Ok(ep) => ep.stream(rest, req.data, every_ms).boxed(),
                    Err(e) => stream::once(future::ready(Err(e))).boxed(),
                }
            }
            // The node streams; the mux relays. Dropping this stream (the
            // client cancelled or went away) cancels it on the node.
            Route::Node { node, rest } => {
                let opened = async move {
                    let (slot, ep) = core.reserve(&node).await?;
                    Ok((slot, ep.stream(rest, req.data, every_ms)))
                };
                stream::once(opened)
                    .flat_map(|opened| match opened {
                        // The slot is held for as long as the stream is open.
                        Ok((slot, items)) => items
                            .map(move |item| {
                                let _held = &slot;
                                item
                            })
                            .boxed(),
                        Err(e) => stream::once(future::ready(Err(e))).boxed(),
                    })
                    .boxed()
            }
            Route::Mux { rest } if apps::is_console(&rest) => {
                apps::console_stream(&core, &req.data, every_ms)
            }
            _ => {
                drop(core);
                repeat_call(move || self.call(req.clone()), every_ms)
            }
        }
    }

    fn notify(&self, path: Path, data: Value) {
        let Some(core) = self.core.upgrade() else {
            return;
        };
        match &self.node {
            // A node's unsolicited message: to every client, name first.
            Some(node) => {
                if let Some(bridge) = &core.bridge {
                    bridge.publish_notice(node, &path, &data);
                }
                core.broadcast(route::prefixed(node, &path), data)
            }
            // A client's fire-and-forget request: on to the node.
            None => match core.route(&path) {
                Route::Node { node, rest } => {
                    let ep = match core.node(&node) {
                        Some(_) => core.endpoint_of(&node),
                        None => core.remote_endpoint(&node),
                    };
                    if let Ok(ep) = ep {
                        let _ = ep.send(rest, data);
                    }
                }
                other => tracing::debug!("dropping a fire-and-forget message to {other:?}"),
            },
        }
    }
}
