//! A lossy UART (or any tty, including a pty): SerialPacker frames carry
//! the reliable layer's maps; bytes between frames are console output
//! (docs/protocol.md: Framing).
//!
//! The connection is up once the reliable handshake completes. A reset by
//! the peer or retries running out end the connection (pending requests
//! fail with `_LnkErr`; the messages in flight may or may not have
//! arrived) and the supervisor reconnects.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{FutureExt, Sink, Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::codec::Framed;

use super::{ConnectCtx, ConnectError, Connection, Counted};
use crate::framing::{FramingError, Incoming, SerialPackerCodec, SerialPackerConfig};
use crate::reliable::{self, Event};
use crate::value::Value;

/// How long a closing link may take to send its closing frame.
const CLOSE_FLUSH: std::time::Duration = std::time::Duration::from_millis(300);

/// A serial link's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SerialSpec {
    /// Device path, e.g. `/dev/ttyUSB0` or a pty, or `tcp:HOST:PORT` for a
    /// UART behind a TCP socket (an emulator's).
    pub path: String,
    pub baud: u32,
    pub packer: SerialPackerConfig,
    pub reliable: reliable::Config,
}

pub async fn connect(spec: &SerialSpec, ctx: &ConnectCtx) -> Result<Connection, ConnectError> {
    // `tcp:HOST:PORT`: a UART exposed as a TCP socket (an emulator's serial
    // port, e.g. QEMU's `-serial tcp:…`); the bytes are as lossy-framed as
    // on a wire.
    if let Some(addr) = spec.path.strip_prefix("tcp:") {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
            format!("cannot connect to the UART socket {addr}: {e} (is the emulator running?)")
        })?;
        let _ = stream.set_nodelay(true);
        return run(spec, ctx, stream).await;
    }
    let port = tokio_serial::new(&spec.path, spec.baud)
        .open_native_async()
        .map_err(|e| {
            format!(
                "cannot open {}: {e} (is the device there, and may you use it?)",
                spec.path
            )
        })?;
    run(spec, ctx, port).await
}

async fn run<IO>(spec: &SerialSpec, ctx: &ConnectCtx, port: IO) -> Result<Connection, ConnectError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let codec = SerialPackerCodec::new(spec.packer)
        .map_err(|e| format!("serial link {}: {e}", spec.path))?;
    let framed = Framed::new(Counted::new(port, ctx.bytes.clone()), codec);
    let frames = ConsoleSplit {
        inner: framed,
        console: ctx.console.clone(),
    };
    let (handle, mut events, mut task) = reliable::spawn(frames, spec.reliable)
        .map_err(|e| format!("serial link {}: {e}", spec.path))?;
    // Up once the handshake completes.
    let up = tokio::time::timeout(ctx.timeout, async {
        loop {
            match events.recv().await {
                Some(Event::Up { .. }) => return Ok(()),
                Some(Event::Down { reason, .. }) => return Err(reason),
                Some(_) => {}
                None => return Err("the serial link task stopped".to_owned()),
            }
        }
    })
    .await;
    match up {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            task.abort();
            return Err(format!("{}: reliable handshake failed: {why}", spec.path));
        }
        Err(_) => {
            task.abort();
            return Err(format!(
                "{}: no reliable-link handshake within {:?} (is the node running with a `uart` link at {} baud?)",
                spec.path, ctx.timeout, spec.baud
            ));
        }
    }
    // Messages until the link resets or goes down: then the stream ends.
    let source = futures::stream::unfold(events, |mut events| async move {
        loop {
            match events.recv().await? {
                Event::Message(v) => return Some((Ok::<_, String>(Incoming::Message(v)), events)),
                Event::Up { .. } => {}
                Event::Reset { lost } => {
                    return Some((
                        Err(format!("the peer reset the link ({lost} messages lost)")),
                        events,
                    ))
                }
                Event::Down { reason, .. } => return Some((Err(reason), events)),
            }
        }
    })
    .boxed();
    let closer = handle.clone();
    let sink = Box::pin(futures::sink::unfold(
        handle,
        |handle, msg: Value| async move { handle.send(msg).await.map(|()| handle) },
    ));
    let endpoint = match ctx
        .start(source, sink, &spec.path, crate::auth::seal::Form::Frame)
        .await
    {
        Ok(endpoint) => endpoint,
        Err(e) => {
            let _ = closer.close("authentication failed");
            drop(closer);
            if tokio::time::timeout(CLOSE_FLUSH, &mut task).await.is_err() {
                task.abort();
            }
            return Err(e);
        }
    };
    Ok(Connection {
        endpoint,
        teardown: Some(
            async move {
                // Tell the node (`n: 0`) that this connection ends. A
                // current node knows the next connection by its new id
                // anyway; one from before connection ids would otherwise
                // take the next reset within t/2 for an echo.
                let _ = closer.close("the host closed the link");
                drop(closer);
                if tokio::time::timeout(CLOSE_FLUSH, &mut task).await.is_err() {
                    task.abort();
                }
            }
            .boxed(),
        ),
    })
}

/// Passes frame payloads on to the reliable layer and console bytes to the
/// console broadcast.
struct ConsoleSplit<T> {
    inner: T,
    console: broadcast::Sender<Bytes>,
}

impl<T> Stream for ConsoleSplit<T>
where
    T: Stream<Item = Result<Incoming, FramingError>> + Unpin,
{
    type Item = Result<Value, FramingError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(Incoming::Console(bytes)))) => {
                    let _ = self.console.send(bytes);
                }
                Poll::Ready(Some(Ok(Incoming::Message(v)))) => return Poll::Ready(Some(Ok(v))),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T> Sink<Value> for ConsoleSplit<T>
where
    T: Sink<Value, Error = FramingError> + Unpin,
{
    type Error = FramingError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Value) -> Result<(), Self::Error> {
        Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
