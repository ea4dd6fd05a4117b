//! A node running a TCP server (docs/protocol.md: Framing: stream framing, default port
//! 27587).

use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::{ConnectCtx, ConnectError, Connection, Counted};
use crate::framing::StreamCodec;
use futures::StreamExt;

pub async fn connect(addr: &str, ctx: &ConnectCtx) -> Result<Connection, ConnectError> {
    let io = tokio::time::timeout(ctx.timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out after {:?}", ctx.timeout))?
        .map_err(|e| format!("cannot connect to {addr}: {e} (is the node up and listening?)"))?;
    // Requests are small; waiting to coalesce them only adds latency.
    let _ = io.set_nodelay(true);
    let framed = Framed::new(Counted::new(io, ctx.bytes.clone()), StreamCodec::default());
    let (sink, source) = framed.split();
    let place = match addr.rsplit_once(':') {
        Some((_, port)) => format!("port {port}"),
        None => addr.to_owned(),
    };
    Ok(Connection::new(
        ctx.start(source, sink, &place, crate::auth::seal::Form::Stream)
            .await?,
    ))
}
