//! USB CDC (or any tty whose bytes are not lost): the lossless stream
//! framing, console output interleaved with messages (protocol §4).

use tokio_serial::SerialPortBuilderExt;
use tokio_util::codec::Framed;

use super::{ConnectCtx, ConnectError, Connection, Counted};
use crate::endpoint::Endpoint;
use crate::framing::LosslessCodec;

pub async fn connect(path: &str, baud: u32, ctx: &ConnectCtx) -> Result<Connection, ConnectError> {
    // `tcp:HOST:PORT`: a USB CDC bridged to a TCP socket (an emulator's).
    if let Some(addr) = path.strip_prefix("tcp:") {
        let io = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
            format!("cannot connect to the USB socket {addr}: {e} (is the emulator running?)")
        })?;
        let _ = io.set_nodelay(true);
        let framed = Framed::new(
            Counted::new(io, ctx.bytes.clone()),
            LosslessCodec::default(),
        );
        return Ok(Connection::new(Endpoint::spawn_with(
            framed,
            ctx.handler.clone(),
            ctx.endpoint_config(),
        )));
    }
    let port = tokio_serial::new(path, baud)
        .open_native_async()
        .map_err(|e| {
            format!("cannot open {path}: {e} (is the device plugged in, and may you use it?)")
        })?;
    let framed = Framed::new(
        Counted::new(port, ctx.bytes.clone()),
        LosslessCodec::default(),
    );
    Ok(Connection::new(Endpoint::spawn_with(
        framed,
        ctx.handler.clone(),
        ctx.endpoint_config(),
    )))
}
