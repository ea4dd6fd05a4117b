//! Files on a node through its `fs` app, the way diff-update needs them:
//! uploads go in chunks sized to the link's message limit (a few in flight,
//! each with its offset) to `PATH.moat-tmp`, the node's SHA-256 of that
//! file is compared with the local bytes, and only a match is renamed over
//! `PATH` (`fs.mv`, atomic). A damaged upload is removed and sent again;
//! after [`ATTEMPTS`] it is reported, with the old file still in place.

use super::table::TEMP_SUFFIX;
use crate::client::Client;
use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use mux_runtime::error::{RemoteError, WellKnown};
use mux_runtime::message::PathElem;
use mux_runtime::Value;
use sha2::{Digest, Sha256};

/// Tries per file before a hash mismatch is reported.
pub const ATTEMPTS: u32 = 3;

/// `wr` requests in flight at once (each carries its own offset, so the
/// node's order of serving them does not matter).
const IN_FLIGHT: usize = 4;

/// Room in a message for everything but a `wr` chunk's bytes (path, keys,
/// fd, offset, sequence number; through a mux the node's name too).
const WR_OVERHEAD: usize = 64;

/// Bytes of one chunk for a node taking `limit`-byte messages.
pub fn chunk_size(limit: usize) -> usize {
    limit.saturating_sub(WR_OVERHEAD).max(32)
}

/// The node's `fs` app.
pub struct Files<'c> {
    client: &'c Client,
    chunk: usize,
    /// Damaged uploads sent again so far.
    pub retries: u32,
}

fn fs_path(cmd: &str) -> Vec<PathElem> {
    vec!["fs".into(), cmd.into()]
}

/// A remote failure of `fs.<cmd>` as an error naming the fix where one is known.
fn failure(client: &Client, cmd: &str, e: RemoteError) -> anyhow::Error {
    if e.kind() == Some(WellKnown::NoPath)
        && e.args().get(1).and_then(Value::as_str) == Some("no such app")
    {
        return anyhow::anyhow!(
            "node `{}` runs no `fs` app, which diff-update needs: add `fs = \"fs.Files\"` to [nodes.{}.config.apps] in moat.toml, then `moat cfg upload` (or reflash)",
            client.node(),
            client.node()
        );
    }
    anyhow::anyhow!("fs.{cmd} on node `{}`: {e}", client.node())
}

impl<'c> Files<'c> {
    /// `limit`: the largest message the node takes.
    pub fn new(client: &'c Client, limit: usize) -> Files<'c> {
        Files {
            client,
            chunk: chunk_size(limit),
            retries: 0,
        }
    }

    async fn call(&self, cmd: &str, kwargs: Value) -> anyhow::Result<Value> {
        self.client
            .call(&fs_path(cmd), kwargs)
            .await
            .map_err(|e| failure(self.client, cmd, e))
    }

    /// Removes `path`; a file that is not there is fine.
    pub async fn remove(&self, path: &str) -> anyhow::Result<()> {
        match self
            .client
            .call(&fs_path("rm"), Value::map([("p", path.into())]))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == Some(WellKnown::FileNotFound) => Ok(()),
            Err(e) => Err(failure(self.client, "rm", e)),
        }
    }

    /// The node's SHA-256 of `path`.
    pub async fn hash(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        match self
            .call("hash", Value::map([("p", path.into()), ("l", 32.into())]))
            .await?
        {
            Value::Bin(b) => Ok(b),
            other => bail!("fs.hash answered {} instead of bytes", other.type_name()),
        }
    }

    /// Writes `data` to `tmp` (created or truncated); `sent(n)` hears of
    /// each chunk the node took.
    async fn write(
        &self,
        tmp: &str,
        data: &[u8],
        sent: &(dyn Fn(u64) + Sync),
    ) -> anyhow::Result<()> {
        let fd = self
            .call("open", Value::map([("p", tmp.into()), ("m", "w".into())]))
            .await?;
        let written = futures::stream::iter(data.chunks(self.chunk).enumerate())
            .map(|(k, chunk)| {
                let offset = k * self.chunk;
                let kw = Value::map([
                    ("f", fd.clone()),
                    ("d", Value::Bin(chunk.to_vec())),
                    ("o", Value::from(offset)),
                ]);
                async move {
                    let n = self.call("wr", kw).await?;
                    if n.as_int() != Some(chunk.len() as i128) {
                        bail!(
                            "the node wrote {n:?} of {} bytes at offset {offset} of {tmp} (is its filesystem full?)",
                            chunk.len()
                        );
                    }
                    sent(chunk.len() as u64);
                    Ok(())
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await;
        let closed = self.call("cl", Value::map([("f", fd)])).await;
        written?;
        closed?;
        Ok(())
    }

    /// Uploads `data` to `path` atomically (see the module docs).
    pub async fn put(
        &mut self,
        path: &str,
        data: &[u8],
        sent: &(dyn Fn(u64) + Sync),
    ) -> anyhow::Result<()> {
        let tmp = format!("{path}{TEMP_SUFFIX}");
        let want = Sha256::digest(data).to_vec();
        for attempt in 1..=ATTEMPTS {
            let outcome = async {
                self.write(&tmp, data, sent).await?;
                Ok::<bool, anyhow::Error>(self.hash(&tmp).await? == want)
            }
            .await;
            match outcome {
                Ok(true) => {
                    self.call(
                        "mv",
                        Value::map([("s", tmp.as_str().into()), ("d", path.into())]),
                    )
                    .await
                    .with_context(|| {
                        format!("{path} arrived intact as {tmp} but could not be renamed")
                    })?;
                    return Ok(());
                }
                Ok(false) => {
                    // Damaged on the way: drop it, send again.
                    self.remove(&tmp).await?;
                    if attempt < ATTEMPTS {
                        self.retries += 1;
                        tracing::warn!("{path}: the node's copy does not match (hash mismatch); sending it again");
                    }
                }
                Err(e) => {
                    let _ = self.remove(&tmp).await;
                    return Err(e.context(format!("uploading {path}")));
                }
            }
        }
        bail!(
            "{path} arrived damaged {ATTEMPTS} times (its hash on the node differs from the bytes sent); the node keeps its old file — check the link and try again"
        )
    }

    /// Reads `path` from the node; `None` when there is no such file.
    pub async fn get(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let fd = match self
            .client
            .call(
                &fs_path("open"),
                Value::map([("p", path.into()), ("m", "r".into())]),
            )
            .await
        {
            Ok(fd) => fd,
            Err(e) if e.kind() == Some(WellKnown::FileNotFound) => return Ok(None),
            Err(e) => return Err(failure(self.client, "open", e)),
        };
        let mut data = vec![];
        let read = async {
            loop {
                let kw = Value::map([
                    ("f", fd.clone()),
                    ("o", Value::from(data.len())),
                    ("n", Value::from(self.chunk)),
                ]);
                let bytes = match self.call("rd", kw).await? {
                    Value::Bin(b) => b,
                    other => bail!("fs.rd answered {} instead of bytes", other.type_name()),
                };
                if bytes.is_empty() {
                    return Ok(());
                }
                if data.len() + bytes.len() > MAX_READ {
                    bail!("{path} is larger than {MAX_READ} bytes");
                }
                data.extend_from_slice(&bytes);
            }
        }
        .await;
        let closed = self.call("cl", Value::map([("f", fd)])).await;
        read?;
        closed?;
        Ok(Some(data))
    }
}

/// Largest file [`Files::get`] reads (configs are small).
const MAX_READ: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_leave_room_for_the_request() {
        assert_eq!(chunk_size(1024), 960);
        assert_eq!(chunk_size(10), 32);
    }
}
