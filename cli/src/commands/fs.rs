//! `moat fs ls|get|put|rm|mkdir`: files on a node, through its `fs` app
//! (`open/rd/wr/cl/ls/stat/hash/rm/rmdir/mkdir/mv`, docs/protocol.md: What every node answers).
//!
//! Transfers go in chunks sized to the node's message limit. `put` writes
//! to a temporary name, checks the node's SHA-256 of it against the local
//! file, and only then renames it over the target: an interrupted upload
//! leaves the old file, never half of a new one. `get` checks the hash
//! too.

use super::cmd::remote_failure;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use moat::client::{self, Client, Target};
use moat::render;
use mux_runtime::error::{RemoteError, WellKnown};
use mux_runtime::message::PathElem;
use mux_runtime::Value;
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List a folder on the node (default: its root).
    Ls(LsArgs),
    /// Copy a file from the node (to LOCAL, default: the same name here;
    /// `-`: stdout).
    Get(GetArgs),
    /// Copy a file to the node (to REMOTE, default: its name at the root).
    Put(PutArgs),
    /// Remove a file (or an empty folder) on the node.
    Rm(RmArgs),
    /// Make a folder on the node.
    Mkdir(RmArgs),
    /// Mount the node's files on a local folder (FUSE) until Ctrl-C or
    /// `fusermount3 -u DIR`.
    Mount(super::fs_mount::MountArgs),
}

#[derive(clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub target: Target,
    /// Folder on the node.
    #[arg(default_value = "")]
    pub path: String,
    /// Show type and size.
    #[arg(short, long)]
    pub long: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub target: Target,
    /// File on the node.
    pub remote: String,
    /// Where to write it (`-`: stdout).
    pub local: Option<PathBuf>,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub target: Target,
    /// Local file (`-`: stdin).
    pub local: PathBuf,
    /// Path on the node (default: the local file's name at the root).
    pub remote: Option<String>,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct RmArgs {
    #[command(flatten)]
    pub target: Target,
    /// Path on the node.
    pub path: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Ls(a) => ls(a),
        Command::Get(a) => get(a),
        Command::Put(a) => put(a),
        Command::Rm(a) => simple(a, "rm"),
        Command::Mkdir(a) => simple(a, "mkdir"),
        Command::Mount(a) => super::fs_mount::run(a),
    }
}

fn fs_path(cmd: &str) -> Vec<PathElem> {
    vec!["fs".into(), cmd.into()]
}

/// Calls `fs.<cmd>` and turns a remote error into the verb's failure.
async fn fs_call(client: &Client, cmd: &str, kwargs: Value, json: bool) -> anyhow::Result<Value> {
    let path = fs_path(cmd);
    client
        .call(&path, kwargs)
        .await
        .map_err(|e| fs_failure(client, &path, &e, json))
}

fn fs_failure(client: &Client, path: &[PathElem], e: &RemoteError, json: bool) -> anyhow::Error {
    let err = remote_failure(path, e, json);
    if e.kind() == Some(WellKnown::NoPath) && e.args().len() == 2 {
        // `fs` is a loadable app: say how to load it.
        if matches!(e.args()[1].as_str(), Some("no such app")) {
            return err.context(format!(
                "node `{}` runs no `fs` app: add `fs = \"fs.Files\"` to [nodes.{}.config.apps] in moat.toml, then `moat flash`",
                client.node(),
                client.node()
            ));
        }
    }
    err
}

fn ls(a: LsArgs) -> anyhow::Result<()> {
    client::block_on(async move {
        let client = Client::connect(&a.target).await?;
        let kwargs = Value::map([
            ("p", Value::from(a.path.as_str())),
            ("x", Value::Bool(a.long)),
        ]);
        let listing = fs_call(&client, "ls", kwargs, a.json).await?;
        let entries = listing.as_array().unwrap_or_default();
        if a.json {
            println!("{}", ls_json(entries, a.long));
            return Ok(());
        }
        // (name, line) sorted by name.
        let mut lines: Vec<(String, String)> = entries
            .iter()
            .map(|e| {
                let text = |v: &Value| {
                    v.as_str()
                        .map_or_else(|| render::human_compact(v), str::to_owned)
                };
                if !a.long {
                    let name = text(e);
                    return (name.clone(), name);
                }
                let name = e.get("n").map(text).unwrap_or_default();
                let line = if e.get("m").and_then(Value::as_str) == Some("d") {
                    format!("d {:>10}  {name}/", "-")
                } else {
                    let size = e.get("s").and_then(Value::as_int).unwrap_or(0);
                    format!("f {size:>10}  {name}")
                };
                (name, line)
            })
            .collect();
        lines.sort();
        for (_, line) in lines {
            println!("{line}");
        }
        Ok(())
    })?
}

/// `fs ls --json` (docs/json.md): the names sorted; with `-l` objects
/// `{name, kind: "file"|"dir", size}` (the wire's `n`, `m`, `s` spelled
/// out).
fn ls_json(entries: &[Value], long: bool) -> serde_json::Value {
    let mut out: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            if !long {
                return render::json(e);
            }
            let dir = e.get("m").and_then(Value::as_str) == Some("d");
            serde_json::json!({
                "name": e.get("n").map(render::json).unwrap_or_default(),
                "kind": if dir { "dir" } else { "file" },
                "size": e.get("s").and_then(Value::as_int).map(|n| n as i64).unwrap_or(0),
            })
        })
        .collect();
    let key = |v: &serde_json::Value| {
        v.get("name")
            .unwrap_or(v)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    out.sort_by_key(key);
    serde_json::Value::Array(out)
}

fn simple(a: RmArgs, cmd: &str) -> anyhow::Result<()> {
    if a.path.trim_matches('/').is_empty() {
        bail!(
            "give a path on the node (e.g. `moat fs {cmd} data/old.txt`); `{}` names the root folder",
            a.path
        );
    }
    client::block_on(async move {
        let client = Client::connect(&a.target).await?;
        let p = Value::map([("p", Value::from(a.path.as_str()))]);
        let mut cmd = cmd;
        if cmd == "rm" {
            // A folder is removed with rmdir.
            if let Ok(st) = client.call(&fs_path("stat"), p.clone()).await {
                if st.get("m").and_then(Value::as_str) == Some("d") {
                    cmd = "rmdir";
                }
            }
        }
        fs_call(&client, cmd, p, a.json).await?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"node": client.node(), cmd: a.path})
            );
        }
        Ok(())
    })?
}

/// Bytes of one `wr` chunk for a node accepting `limit`-byte messages
/// (room for the request's path, keys and numbers).
pub fn write_chunk(limit: usize) -> usize {
    limit.saturating_sub(64).max(32)
}

/// Bytes asked for per `rd` (the node caps it to its own limit as well).
pub fn read_chunk(limit: usize) -> usize {
    limit.saturating_sub(32).max(32)
}

/// A progress bar on stderr when it is a terminal (and not `--json`).
fn progress(total: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Requests kept in flight during a transfer: two hide a link's round
/// trip (through the mux: 1 MB up in about half the time of one at a
/// time) while the node holds at most two chunks (an ESP8266's heap).
pub const WINDOW: usize = 2;

fn bytes_of(chunk: Value) -> anyhow::Result<Vec<u8>> {
    match chunk {
        Value::Bin(b) => Ok(b),
        Value::Str(s) => Ok(s.into_bytes()),
        other => bail!("fs.rd answered {} instead of bytes", other.type_name()),
    }
}

/// Runs a transfer until it ends or Ctrl-C; either way the caller then
/// closes the node's file (and removes a partial upload), so an
/// interrupted transfer leaves nothing open on the node.
async fn interruptible<T>(
    transfer: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        r = transfer => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

/// `fs.rd` of `n` bytes at `offset` of open file `fd`.
async fn read_at(
    client: &Client,
    fd: &Value,
    offset: usize,
    n: usize,
    json: bool,
) -> anyhow::Result<Vec<u8>> {
    let args = Value::map([
        ("f", fd.clone()),
        ("o", Value::from(offset)),
        ("n", Value::from(n)),
    ]);
    bytes_of(fs_call(client, "rd", args, json).await?)
}

/// Reads the file `remote` from the node, [`WINDOW`] chunks at a time,
/// and checks its hash.
pub async fn read_file(client: &mut Client, remote: &str, json: bool) -> anyhow::Result<Vec<u8>> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let chunk = read_chunk(client.message_limit().await);
    let size = fs_call(client, "stat", Value::map([("p", remote.into())]), json)
        .await?
        .get("s")
        .and_then(Value::as_int)
        .and_then(|s| usize::try_from(s).ok())
        .unwrap_or(0);
    let fd = fs_call(
        client,
        "open",
        Value::map([("p", remote.into()), ("m", "r".into())]),
        json,
    )
    .await?;
    let bar = progress(size as u64, remote, json);
    let mut data = Vec::with_capacity(size.min(1 << 24));
    let client = &*client;
    let result = interruptible(async {
        // The size the node said, in parallel chunks...
        let mut parts = stream::iter((0..size).step_by(chunk))
            .map(|offset| {
                let fd = &fd;
                async move {
                    Ok::<_, anyhow::Error>((
                        offset,
                        read_at(client, fd, offset, chunk, json).await?,
                    ))
                }
            })
            .buffered(WINDOW);
        while let Some((offset, bytes)) = parts.try_next().await? {
            // A node that sends less than asked leaves a gap: fill it.
            while data.len() < offset {
                let more = read_at(client, &fd, data.len(), offset - data.len(), json).await?;
                if more.is_empty() {
                    bail!("{remote} shrank while it was read; try again");
                }
                data.extend_from_slice(&more);
            }
            // Keep only what is new (parts never overlap, but be exact).
            let known = data.len() - offset;
            if bytes.len() > known {
                data.extend_from_slice(&bytes[known..]);
            }
            bar.set_position(data.len() as u64);
        }
        // ...then whatever is left (short reads, a file that grew).
        loop {
            let more = read_at(client, &fd, data.len(), chunk, json).await?;
            if more.is_empty() {
                return Ok(());
            }
            data.extend_from_slice(&more);
            bar.set_position(data.len() as u64);
        }
    })
    .await;
    let closed = fs_call(client, "cl", Value::map([("f", fd)]), json).await;
    bar.finish_and_clear();
    result?;
    closed?;
    let remote_hash = fs_call(client, "hash", Value::map([("p", remote.into())]), json).await?;
    let local_hash = Sha256::digest(&data);
    if remote_hash != Value::Bin(local_hash.to_vec()) {
        bail!(
            "{remote} changed while it was read (its hash on the node differs from the bytes received); try again"
        );
    }
    Ok(data)
}

/// Writes `data` to `remote` on the node atomically: a temporary file
/// written [`WINDOW`] chunks at a time, hash check, rename.
pub async fn write_file(
    client: &mut Client,
    remote: &str,
    data: &[u8],
    json: bool,
) -> anyhow::Result<()> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let chunk = write_chunk(client.message_limit().await);
    let client = &*client;
    // Its own temporary name (two puts of one file at once do not share
    // one; the later rename wins). A put killed mid-way leaves it open on
    // the node, which removes it when the link closes (fs.py).
    let mut tag = [0u8; 4];
    moat::keys::random_fill(&mut tag)?;
    let tmp = format!("{remote}.{}.part", hex::encode(tag));
    let fd = fs_call(
        client,
        "open",
        Value::map([("p", tmp.as_str().into()), ("m", "w".into())]),
        json,
    )
    .await
    .map_err(|e| {
        match Path::new(remote)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            Some(dir) => e.context(format!(
                "does the folder `{}` exist on the node? (make it with `moat fs mkdir {}`)",
                dir.display(),
                dir.display()
            )),
            None => e,
        }
    })?;
    let bar = progress(data.len() as u64, remote, json);
    let result = stream::iter(data.chunks(chunk).enumerate())
        .map(|(k, piece)| {
            let fd = fd.clone();
            let bar = &bar;
            async move {
                let offset = k * chunk;
                let args = Value::map([
                    ("f", fd),
                    ("d", Value::Bin(piece.to_vec())),
                    ("o", Value::from(offset)),
                ]);
                let n = fs_call(client, "wr", args, json).await?;
                if n.as_int() != Some(piece.len() as i128) {
                    bail!(
                        "the node wrote {} of {} bytes at offset {offset} (is its filesystem full?)",
                        render::human_compact(&n),
                        piece.len()
                    );
                }
                bar.inc(piece.len() as u64);
                Ok(())
            }
        })
        .buffer_unordered(WINDOW)
        .try_collect::<Vec<()>>();
    let result = interruptible(result).await;
    let closed = fs_call(client, "cl", Value::map([("f", fd)]), json).await;
    bar.finish_and_clear();
    let verified = async {
        result?;
        closed?;
        let remote_hash =
            fs_call(client, "hash", Value::map([("p", tmp.as_str().into())]), json).await?;
        if remote_hash != Value::Bin(Sha256::digest(data).to_vec()) {
            bail!("the upload of {remote} arrived damaged (hash mismatch); nothing was replaced, try again");
        }
        fs_call(
            client,
            "mv",
            Value::map([("s", tmp.as_str().into()), ("d", remote.into())]),
            json,
        )
        .await?;
        Ok(())
    }
    .await;
    if verified.is_err() {
        // Best effort: do not leave the partial file behind.
        let _ = client
            .call(&fs_path("rm"), Value::map([("p", tmp.as_str().into())]))
            .await;
    }
    verified
}

fn get(a: GetArgs) -> anyhow::Result<()> {
    let to_stdout = a.local.as_deref() == Some(Path::new("-"));
    let local = match &a.local {
        Some(p) if !to_stdout => p.clone(),
        _ => PathBuf::from(
            Path::new(&a.remote)
                .file_name()
                .with_context(|| format!("`{}` names no file", a.remote))?,
        ),
    };
    client::block_on(async move {
        let mut client = Client::connect(&a.target).await?;
        let data = read_file(&mut client, &a.remote, a.json).await?;
        if to_stdout {
            std::io::stdout().write_all(&data)?;
            std::io::stdout().flush()?;
            return Ok(());
        }
        let local = if local.is_dir() {
            local.join(Path::new(&a.remote).file_name().unwrap_or_default())
        } else {
            local
        };
        moat::local_node::write_atomic(&local, &data, false)?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "node": client.node(), "remote": a.remote, "local": local,
                    "bytes": data.len(), "sha256": hex::encode(Sha256::digest(&data)),
                })
            );
        } else {
            eprintln!(
                "{}:{} -> {} ({} bytes)",
                client.node(),
                a.remote,
                local.display(),
                data.len()
            );
        }
        Ok(())
    })?
}

fn put(a: PutArgs) -> anyhow::Result<()> {
    let data = if a.local == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
        buf
    } else {
        std::fs::read(&a.local).with_context(|| format!("reading {}", a.local.display()))?
    };
    let local_name = if a.local == Path::new("-") {
        None
    } else {
        a.local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    };
    let local_shown = a.local.display().to_string();
    let name = move || -> anyhow::Result<String> {
        match &local_name {
            Some(n) => Ok(n.clone()),
            None if local_shown == "-" => bail!(
                "give the REMOTE file name when reading stdin (e.g. `moat fs put - data/x.bin`)"
            ),
            None => bail!("`{local_shown}` names no file"),
        }
    };
    let remote = match &a.remote {
        Some(r) if r.is_empty() => bail!(
            "the REMOTE path is empty: give a path on the node (e.g. `{}`), a folder ending in `/`, or leave it out for the root",
            name().unwrap_or_else(|_| "data/x.bin".to_owned())
        ),
        Some(r) if r.ends_with('/') => format!("{r}{}", name()?),
        Some(r) => r.clone(),
        None => name()?,
    };
    client::block_on(async move {
        let mut client = Client::connect(&a.target).await?;
        // a folder on the node gets the file inside it, as with `cp`
        let remote = match client
            .call(
                &fs_path("stat"),
                Value::map([("p", remote.as_str().into())]),
            )
            .await
        {
            Ok(st) if st.get("m").and_then(Value::as_str) == Some("d") => {
                format!("{}/{}", remote.trim_end_matches('/'), name()?)
            }
            _ => remote,
        };
        write_file(&mut client, &remote, &data, a.json).await?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "node": client.node(), "remote": remote, "bytes": data.len(),
                    "sha256": hex::encode(Sha256::digest(&data)),
                })
            );
        } else {
            eprintln!(
                "{} -> {}:{remote} ({} bytes)",
                a.local.display(),
                client.node(),
                data.len()
            );
        }
        Ok(())
    })?
}
