//! A node on an emulated board (QEMU, rp2040js): the emulator is a child
//! process the link starts, and the node's UART or USB serial is a TCP
//! socket the emulator listens on, spoken to like the real thing (a UART:
//! [`serial`](super::serial), SerialPacker frames and the reliable layer;
//! USB CDC: [`usb`](super::usb), the lossless stream). The emulator's
//! stdout and stderr (e.g. the board's console UART) are console output.
//!
//! When the emulator exits (the node reset itself, or crashed) the socket
//! closes, the connection ends and the supervisor starts a new emulator.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::FutureExt;

use super::{serial, usb, ConnectCtx, ConnectError, Connection, LinkSpec, ProcessSpec};

/// How often to look for the emulator's socket while it starts.
const POLL: Duration = Duration::from_millis(50);

pub async fn connect(
    emulator: &ProcessSpec,
    link: &LinkSpec,
    ctx: &ConnectCtx,
) -> Result<Connection, ConnectError> {
    let path = match link {
        LinkSpec::Serial(s) => &s.path,
        LinkSpec::Usb { path, .. } => path,
        other => {
            return Err(format!(
                "an emulated node needs a serial or usb link, not {}",
                other.kind()
            ))
        }
    };
    let Some(addr) = path.strip_prefix("tcp:") else {
        return Err(format!(
            "an emulated node's serial port must be a socket `tcp:HOST:PORT`, not {path}"
        ));
    };
    let kept = ctx.kept.lock().unwrap_or_else(|p| p.into_inner()).take();
    let mut child = match kept {
        Some(mut c) => match c.try_wait() {
            Ok(None) => c, // still running: its node reset and closed the link
            _ => start(emulator, ctx)?,
        },
        None => start(emulator, ctx)?,
    };
    ctx.pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
    // Wait for the socket: the emulator listens shortly after it starts.
    let t0 = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            ctx.pid.store(0, Ordering::Relaxed);
            return Err(format!(
                "the emulator {} exited ({status}) before listening on {addr}",
                emulator.program.display()
            ));
        }
        if t0.elapsed() > ctx.timeout {
            ctx.pid.store(0, Ordering::Relaxed);
            let _ = child.kill().await;
            return Err(format!(
                "the emulator {} did not listen on {addr} within {:?}",
                emulator.program.display(),
                ctx.timeout
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    let connected = match link {
        LinkSpec::Usb { path, baud } => usb::connect(path, *baud, ctx).await,
        LinkSpec::Serial(uart) => serial::connect(uart, ctx).await,
        _ => unreachable!("checked above"),
    };
    let conn = match connected {
        Ok(c) => c,
        Err(e) => {
            ctx.pid.store(0, Ordering::Relaxed);
            let _ = child.kill().await;
            return Err(e);
        }
    };
    let pid = ctx.pid.clone();
    let stop = ctx.stop.clone();
    let kept = ctx.kept.clone();
    let inner = conn.teardown;
    Ok(Connection {
        endpoint: conn.endpoint,
        teardown: Some(
            async move {
                if let Some(t) = inner {
                    t.await;
                }
                // The node closed the link because it resets (the emulator
                // runs on) or the emulator ended (a hard reset): kept for the
                // next connection, which starts a new one if it ended.
                // Stopping the link kills it at once.
                if stop.is_cancelled() {
                    let _ = child.kill().await;
                } else {
                    *kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
                    return;
                }
                pid.store(0, Ordering::Relaxed);
            }
            .boxed(),
        ),
    })
}

/// Starts the emulator, its stdout and stderr copied to the console.
fn start(emulator: &ProcessSpec, ctx: &ConnectCtx) -> Result<tokio::process::Child, ConnectError> {
    let mut child = super::process::spawn_child(emulator, Stdio::null()).map_err(|e| {
        format!(
            "cannot start the emulator {} in {}: {e} (is it installed? run `moat flash` first)",
            emulator.program.display(),
            emulator.cwd.display()
        )
    })?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(super::process::copy_console(out, ctx.console.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(super::process::copy_console(err, ctx.console.clone()));
    }
    Ok(child)
}
