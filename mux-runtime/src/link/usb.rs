//! USB CDC (or any tty whose bytes are not lost): the lossless stream
//! framing, console output interleaved with messages (docs/protocol.md: Framing).

use tokio_serial::SerialPortBuilderExt;
use tokio_util::codec::Framed;

use super::{ConnectCtx, ConnectError, Connection, Counted};
use crate::framing::LosslessCodec;
use futures::StreamExt;

pub async fn connect(path: &str, baud: u32, ctx: &ConnectCtx) -> Result<Connection, ConnectError> {
    // `tcp:HOST:PORT`: a USB CDC bridged to a TCP socket (an emulator's).
    if let Some(addr) = path.strip_prefix("tcp:") {
        let io = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
            format!("cannot connect to the USB socket {addr}: {e} (is the emulator running?)")
        })?;
        let _ = io.set_nodelay(true);
        return over(io, path, ctx).await;
    }
    let port = tokio_serial::new(path, baud)
        .open_native_async()
        .map_err(|e| {
            format!("cannot open {path}: {e} (is the device plugged in, and may you use it?)")
        })?;
    over(port, path, ctx).await
}

/// The lossless framing over `io`, authenticated when the link says.
async fn over<IO>(io: IO, path: &str, ctx: &ConnectCtx) -> Result<Connection, ConnectError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let framed = Framed::new(
        Counted::new(io, ctx.bytes.clone()),
        LosslessCodec::default(),
    );
    let (sink, source) = framed.split();
    Ok(Connection::new(
        ctx.start(source, sink, path, crate::auth::seal::Form::Stream)
            .await?,
    ))
}
