//! USB CDC (or any tty whose bytes are not lost): the lossless stream
//! framing, console output interleaved with messages (protocol §4).

use tokio_serial::SerialPortBuilderExt;
use tokio_util::codec::Framed;

use super::{ConnectCtx, ConnectError, Connection, Counted};
use crate::endpoint::Endpoint;
use crate::framing::LosslessCodec;

pub async fn connect(path: &str, baud: u32, ctx: &ConnectCtx) -> Result<Connection, ConnectError> {
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
