//! A node that is a child process (the unix board): spawned in its own
//! folder, talked to over its stdin/stdout with the lossless framing.
//!
//! The node prints [`READY_MARKER`] on stdout once its stdio link serves;
//! everything before is console output (boot messages, tracebacks). Its
//! stderr is console output too. When it dies the connection ends and the
//! supervisor starts it again.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::{ConnectCtx, ConnectError, Connection, Counted};
use crate::framing::LosslessCodec;

/// What `node-runtime/link_stdio.py` prints when its stdio link is ready.
pub const READY_MARKER: &str = "moat: stdio ready";

/// How long a stopping node gets to exit after its stdin closed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How to start the node.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessSpec {
    /// The installed firmware, e.g. `.moat/nodes/N/micropython`.
    pub program: PathBuf,
    /// E.g. `["-X", "heapsize=…k", "-m", "main"]`.
    pub args: Vec<String>,
    /// The node's folder (its filesystem root).
    pub cwd: PathBuf,
    /// The line the node prints when it serves on stdio.
    pub ready_marker: String,
}

impl ProcessSpec {
    pub fn new(program: impl Into<PathBuf>, args: Vec<String>, cwd: impl Into<PathBuf>) -> Self {
        ProcessSpec {
            program: program.into(),
            args,
            cwd: cwd.into(),
            ready_marker: READY_MARKER.to_owned(),
        }
    }
}

/// Starts `spec`'s program in its folder, stdout and stderr piped, killed
/// when dropped (the node's process, or an emulator running it).
pub(crate) fn spawn_child(spec: &ProcessSpec, stdin: Stdio) -> std::io::Result<Child> {
    Command::new(&spec.program)
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

pub async fn connect(spec: &ProcessSpec, ctx: &ConnectCtx) -> Result<Connection, ConnectError> {
    let mut child = spawn_child(spec, Stdio::piped()).map_err(|e| {
        format!(
            "cannot start {} in {}: {e} (run `moat flash` to install the node)",
            spec.program.display(),
            spec.cwd.display()
        )
    })?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("the child process has no stdio pipes".into());
    };
    tokio::spawn(copy_console(stderr, ctx.console.clone()));
    let pid = ctx.pid.clone();
    pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
    let mut stdout = Counted::new(stdout, ctx.bytes.clone());
    let waited = tokio::time::timeout(
        ctx.timeout,
        await_marker(&mut stdout, spec.ready_marker.as_bytes(), ctx),
    )
    .await;
    let rest = match waited {
        Ok(Ok(rest)) => rest,
        Ok(Err(tail)) => {
            pid.store(0, Ordering::Relaxed);
            let status = child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_default();
            return Err(format!(
                "{} exited ({status}) before its stdio link was ready; its last output: {}",
                spec.program.display(),
                tail
            ));
        }
        Err(_) => {
            pid.store(0, Ordering::Relaxed);
            let _ = child.kill().await;
            return Err(format!(
                "{} did not print `{}` within {:?}; is it a moat node runtime?",
                spec.program.display(),
                spec.ready_marker,
                ctx.timeout
            ));
        }
    };
    let mut source = FramedRead::new(stdout, LosslessCodec::default());
    source.read_buffer_mut().extend_from_slice(&rest);
    let sink = FramedWrite::new(
        Counted::new(stdin, ctx.bytes.clone()),
        LosslessCodec::default(),
    );
    let endpoint = match ctx
        .start(
            source,
            sink,
            &spec.program.display().to_string(),
            crate::auth::seal::Form::Stream,
        )
        .await
    {
        Ok(endpoint) => endpoint,
        Err(e) => {
            pid.store(0, Ordering::Relaxed);
            let _ = child.kill().await;
            return Err(e);
        }
    };
    Ok(Connection {
        endpoint,
        teardown: Some(teardown(child, pid, ctx.name.clone()).boxed()),
    })
}

/// Reads stdout until the marker line; what came before goes to the
/// console, what came after is returned (the first message bytes). On EOF:
/// the last output, for the error message.
async fn await_marker<R: AsyncRead + Unpin>(
    out: &mut R,
    marker: &[u8],
    ctx: &ConnectCtx,
) -> Result<Bytes, String> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut seen = Vec::<u8>::new();
    loop {
        if let Some(pos) = find(&buf, marker) {
            let before = buf.split_to(pos);
            if !before.is_empty() {
                let _ = ctx.console.send(before.freeze());
            }
            // Drop the marker and its line end.
            let mut end = marker.len();
            while end < buf.len() && matches!(buf[end], b'\r' | b'\n') {
                end += 1;
            }
            let _ = buf.split_to(end);
            return Ok(buf.freeze());
        }
        // Pass on console output early, keeping a possible marker prefix.
        let keep = marker.len().saturating_sub(1);
        if buf.len() > keep + 256 {
            let console = buf.split_to(buf.len() - keep);
            seen.extend_from_slice(&console);
            let _ = ctx.console.send(console.freeze());
        }
        let n = out.read_buf(&mut buf).await.unwrap_or(0);
        if n == 0 {
            seen.extend_from_slice(&buf);
            let _ = ctx.console.send(buf.freeze());
            let start = seen.len().saturating_sub(400);
            let tail = String::from_utf8_lossy(&seen[start..]).trim().to_owned();
            return Err(if tail.is_empty() {
                "(none)".into()
            } else {
                tail
            });
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Copies a child's output into the link's console broadcast until EOF.
pub(crate) async fn copy_console<R: AsyncRead + Unpin>(
    mut from: R,
    to: tokio::sync::broadcast::Sender<Bytes>,
) {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        buf.clear();
        match from.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let _ = to.send(buf.split().freeze());
            }
        }
    }
}

/// The endpoint has closed (so has the node's stdin): give the node a
/// moment to exit by itself, then kill it.
async fn teardown(mut child: Child, pid: Arc<AtomicU32>, node: String) {
    match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
        // A crash is worth a line in `moat mux`'s output; a clean exit not.
        Ok(Ok(status)) if status.success() => {
            tracing::info!(%node, "node process exited: {status}")
        }
        Ok(Ok(status)) => tracing::warn!(%node, "node process exited: {status}"),
        _ => {
            let _ = child.kill().await;
        }
    }
    pid.store(0, Ordering::Relaxed);
}
