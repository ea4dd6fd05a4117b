//! `moat fs mount [--node N] DIR`: the node's files as a FUSE mount, built
//! on its `fs` app (docs/protocol.md: What every node answers), through the mux or directly.
//!
//! - Reads of a file opened read-only go to the node as `rd` chunks sized
//!   to its message limit, [`WINDOW`] in flight (the helpers of `fs get`).
//! - The node opens files only to read, to truncate-and-write or to append,
//!   so a file opened for writing is a buffer here: filled from the node
//!   when opened without `O_TRUNC`, written back on flush/close with
//!   `fs put`'s atomic upload (temporary name, hash check, rename). Files on
//!   a satellite are small; the buffer is capped at [`MAX_FILE`].
//! - Attributes and listings are cached for [`TTL`] (the kernel is told
//!   the same); every change made through the mount drops what it touches.
//!
//! FUSE callbacks are synchronous: they block on the client's tokio
//! runtime, one request at a time (one FUSE thread).

use super::fs::{read_chunk, read_file, write_file, WINDOW};
use anyhow::{bail, Context};
use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, ReplyXattr, Request,
    Session, WriteFlags,
};
use moat::client::{Client, Target};
use mux_runtime::error::{RemoteError, WellKnown};
use mux_runtime::Value;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub target: Target,
    /// An empty local folder to mount the node's files on.
    pub dir: PathBuf,
}

/// How long attributes and listings are trusted (here and by the kernel).
pub const TTL: Duration = Duration::from_secs(1);

/// Largest file a write buffer holds (a satellite's flash is smaller).
pub const MAX_FILE: usize = 64 << 20;

pub fn run(a: MountArgs) -> anyhow::Result<()> {
    if !a.dir.is_dir() {
        bail!(
            "{} is not a folder: make an empty one to mount on",
            a.dir.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (client, limit) = rt.block_on(async {
        let mut client = Client::connect(&a.target).await?;
        let limit = client.message_limit().await;
        // Fail now, with the fix, when the node has no `fs` app.
        if let Err(e) = fs_call(&client, "stat", Value::map([("p", "".into())])).await {
            if e.kind() == Some(WellKnown::NoPath) {
                bail!(
                    "node `{}` runs no `fs` app: add `fs = \"fs.Files\"` to [nodes.{}.config.apps] in moat.toml, then `moat flash`",
                    client.node(),
                    client.node()
                );
            }
            bail!("fs.stat on node `{}`: {e}", client.node());
        }
        Ok::<_, anyhow::Error>((client, limit))
    })?;
    let node = client.node().to_owned();
    let fs = NodeFs::new(rt.handle().clone(), client.clone(), limit);
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("moat:{node}")),
        MountOption::Subtype("moat".into()),
    ];
    let mut session = Session::new(fs, &a.dir, &config).with_context(|| {
        format!(
            "mounting {} (needs /dev/fuse and fusermount3 from the fuse3 package)",
            a.dir.display()
        )
    })?;
    let mut unmounter = session.unmount_callable();
    let dir = a.dir.clone();
    rt.spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM can be watched");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        // Unmounting ends `session.run()` below.
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = unmounter.unmount() {
                eprintln!(
                    "could not unmount {} ({e}); run `fusermount3 -u {}`",
                    dir.display(),
                    dir.display()
                );
            }
        })
        .await;
    });
    eprintln!(
        "node `{node}` mounted on {} ({}); Ctrl-C or `fusermount3 -u {}` unmounts",
        a.dir.display(),
        client.route(),
        a.dir.display()
    );
    let ended = session.run();
    rt.block_on(client.close());
    rt.shutdown_background();
    ended.with_context(|| format!("serving the mount on {}", a.dir.display()))?;
    eprintln!("{} unmounted", a.dir.display());
    Ok(())
}

async fn fs_call(client: &Client, cmd: &str, kwargs: Value) -> Result<Value, RemoteError> {
    client.call_names(&["fs", cmd], kwargs).await
}

/// The errno a node's error stands for.
pub fn errno(e: &RemoteError) -> Errno {
    match e.kind() {
        Some(WellKnown::FileNotFound) => Errno::ENOENT,
        Some(WellKnown::FileExists) => Errno::EEXIST,
        Some(WellKnown::Os) => e
            .args()
            .first()
            .and_then(Value::as_int)
            .and_then(|n| i32::try_from(n).ok())
            .map_or(Errno::EIO, Errno::from_i32),
        _ => Errno::EIO,
    }
}

/// What the node says about one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub dir: bool,
    pub size: u64,
    /// Seconds since the epoch; `None` when only a listing was seen.
    pub mtime: Option<u64>,
}

impl Meta {
    fn from_stat(v: &Value) -> Meta {
        let int = |k| {
            v.get(k)
                .and_then(Value::as_int)
                .and_then(|n| u64::try_from(n).ok())
        };
        Meta {
            dir: v.get("m").and_then(Value::as_str) == Some("d"),
            size: int("s").unwrap_or(0),
            mtime: int("t"),
        }
    }
}

/// `parent/name` in the node's relative path notation (root = "").
pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// Inode numbers for node paths: stable while mounted, moved by renames.
#[derive(Debug)]
pub struct Inodes {
    by_ino: HashMap<u64, String>,
    by_path: HashMap<String, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut i = Inodes {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
            next: 2,
        };
        i.by_ino.insert(1, String::new());
        i.by_path.insert(String::new(), 1);
        i
    }
}

impl Inodes {
    pub fn path(&self, ino: u64) -> Option<&str> {
        self.by_ino.get(&ino).map(String::as_str)
    }

    pub fn ino(&mut self, path: &str) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_ino.insert(ino, path.to_owned());
        self.by_path.insert(path.to_owned(), ino);
        ino
    }

    /// `from` (and everything under it) is now called `to`; whatever was
    /// at `to` is gone.
    pub fn rename(&mut self, from: &str, to: &str) {
        self.forget(to);
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&prefix))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (old, ino) in moved {
            let new = format!("{to}{}", &old[from.len()..]);
            self.by_path.remove(&old);
            self.by_path.insert(new.clone(), ino);
            self.by_ino.insert(ino, new);
        }
    }

    /// `path` (and everything under it) is gone.
    pub fn forget(&mut self, path: &str) {
        let prefix = format!("{path}/");
        let gone: Vec<String> = self
            .by_path
            .keys()
            .filter(|p| p.as_str() == path || p.starts_with(&prefix))
            .cloned()
            .collect();
        for p in gone {
            if let Some(ino) = self.by_path.remove(&p) {
                self.by_ino.remove(&ino);
            }
        }
    }
}

/// An open file.
enum Handle {
    /// Opened read-only: reads go to the node's fd.
    Read { fd: Value },
    /// Opened for writing: the content, written back when `dirty`.
    Write {
        path: String,
        ino: u64,
        data: Vec<u8>,
        dirty: bool,
    },
}

#[derive(Default)]
struct State {
    inodes: Inodes,
    attrs: HashMap<String, (Meta, Instant)>,
    dirs: HashMap<String, (Vec<(String, Meta)>, Instant)>,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
}

impl State {
    /// Drops what is cached about `path`, its folder's listing and
    /// (for a folder) everything under it.
    fn invalidate(&mut self, path: &str) {
        let prefix = format!("{path}/");
        self.attrs
            .retain(|p, _| p != path && !p.starts_with(&prefix));
        self.dirs
            .retain(|p, _| p != path && !p.starts_with(&prefix));
        self.dirs.remove(parent_of(path));
    }

    fn fresh_attr(&self, path: &str) -> Option<Meta> {
        self.attrs
            .get(path)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(m, _)| *m)
    }

    /// The size of `ino` as an open write buffer has it.
    fn buffered_size(&self, ino: u64) -> Option<u64> {
        self.handles.values().find_map(|h| match h {
            Handle::Write { ino: i, data, .. } if *i == ino => Some(data.len() as u64),
            _ => None,
        })
    }
}

struct NodeFs {
    rt: tokio::runtime::Handle,
    client: Client,
    limit: usize,
    mounted: SystemTime,
    uid: u32,
    gid: u32,
    state: Mutex<State>,
}

type Res<T> = Result<T, Errno>;

impl NodeFs {
    fn new(rt: tokio::runtime::Handle, client: Client, limit: usize) -> NodeFs {
        NodeFs {
            rt,
            client,
            limit,
            mounted: SystemTime::now(),
            uid: nix_uid(),
            gid: nix_gid(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic in one callback must not wedge the mount.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn call(&self, cmd: &str, kwargs: Value) -> Res<Value> {
        self.rt
            .block_on(fs_call(&self.client, cmd, kwargs))
            .map_err(|e| {
                if e.kind() != Some(WellKnown::FileNotFound) {
                    tracing::warn!("fs.{cmd}: {e}");
                }
                errno(&e)
            })
    }

    fn path(&self, ino: INodeNo) -> Res<String> {
        self.state()
            .inodes
            .path(ino.0)
            .map(str::to_owned)
            .ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Res<String> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        Ok(join(&self.path(parent)?, name))
    }

    fn meta(&self, path: &str) -> Res<Meta> {
        if path.is_empty() {
            return Ok(Meta {
                dir: true,
                size: 0,
                mtime: None,
            });
        }
        {
            let st = self.state();
            if let Some(m) = st.fresh_attr(path) {
                return Ok(m);
            }
            // A fresh listing of the folder without it: no such file.
            let (parent, name) = (parent_of(path), path.rsplit('/').next().unwrap_or(path));
            if let Some((entries, at)) = st.dirs.get(parent) {
                if at.elapsed() < TTL && !entries.iter().any(|(n, _)| n == name) {
                    return Err(Errno::ENOENT);
                }
            }
        }
        let m = Meta::from_stat(&self.call("stat", Value::map([("p", path.into())]))?);
        self.state()
            .attrs
            .insert(path.to_owned(), (m, Instant::now()));
        Ok(m)
    }

    fn attr(&self, ino: u64, m: Meta) -> FileAttr {
        let size = if m.dir {
            0
        } else {
            self.state().buffered_size(ino).unwrap_or(m.size)
        };
        let t = m
            .mtime
            .map_or(self.mounted, |s| UNIX_EPOCH + Duration::from_secs(s));
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: if m.dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if m.dir { 0o755 } else { 0o644 },
            nlink: if m.dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 512,
        }
    }

    fn entry(&self, path: &str) -> Res<FileAttr> {
        let m = self.meta(path)?;
        let ino = self.state().inodes.ino(path);
        Ok(self.attr(ino, m))
    }

    fn listing(&self, path: &str, fresh: bool) -> Res<Vec<(String, Meta)>> {
        if !fresh {
            if let Some((entries, _)) = self.state().dirs.get(path) {
                return Ok(entries.clone());
            }
        }
        let v = self.call("ls", Value::map([("p", path.into()), ("x", true.into())]))?;
        let mut entries = Vec::new();
        for e in v.as_array().unwrap_or_default() {
            let Some(name) = e.get("n").and_then(Value::as_str) else {
                continue;
            };
            let mut m = Meta::from_stat(e);
            m.mtime = None;
            entries.push((name.to_owned(), m));
        }
        let now = Instant::now();
        let mut st = self.state();
        for (name, m) in &entries {
            let p = join(path, name);
            // Keep a known mtime when the listing agrees on the rest.
            let known = st.attrs.get(&p).map(|(k, _)| *k);
            let m = match known {
                Some(k) if k.dir == m.dir && k.size == m.size => k,
                _ => *m,
            };
            st.attrs.insert(p, (m, now));
        }
        st.dirs.insert(path.to_owned(), (entries.clone(), now));
        Ok(entries)
    }

    /// `size` bytes at `offset` of the node's open file `fd`: [`WINDOW`]
    /// chunks in flight, then one at a time after a short chunk (the node
    /// may send less than asked), until `size` or the end of the file.
    fn read_range(&self, fd: &Value, offset: u64, size: usize) -> Res<Vec<u8>> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        let chunk = read_chunk(self.limit);
        let client = &self.client;
        let rd = |at: u64, n: usize| async move {
            let args = Value::map([("f", fd.clone()), ("o", at.into()), ("n", n.into())]);
            match fs_call(client, "rd", args).await {
                Ok(Value::Bin(b)) => Ok(b),
                Ok(Value::Str(s)) => Ok(s.into_bytes()),
                Ok(_) => Err(Errno::EIO),
                Err(e) => Err(errno(&e)),
            }
        };
        self.rt.block_on(async {
            let mut out = Vec::with_capacity(size);
            let parts: Vec<Vec<u8>> = stream::iter((0..size).step_by(chunk))
                .map(|k| rd(offset + k as u64, chunk.min(size - k)))
                .buffered(WINDOW)
                .try_collect()
                .await?;
            for part in parts {
                let asked = chunk.min(size - out.len());
                let short = part.len() < asked;
                out.extend_from_slice(&part);
                if short {
                    break;
                }
            }
            while out.len() < size {
                let more = rd(offset + out.len() as u64, chunk.min(size - out.len())).await?;
                if more.is_empty() {
                    break;
                }
                out.extend_from_slice(&more);
            }
            out.truncate(size);
            Ok(out)
        })
    }

    /// Writes `data` over `path` on the node (atomic upload).
    fn upload(&self, path: &str, data: &[u8]) -> Res<()> {
        let mut client = self.client.clone();
        // `json`: quiet (no progress bar); a failure is logged below.
        let r = self.rt.block_on(write_file(&mut client, path, data, true));
        self.state().invalidate(path);
        r.map_err(|e| {
            tracing::warn!("writing {path} back to the node: {e:#}");
            Errno::EIO
        })
    }

    /// An empty `path` on the node (created or truncated).
    fn truncate_on_node(&self, path: &str) -> Res<()> {
        let fd = self.call("open", Value::map([("p", path.into()), ("m", "w".into())]))?;
        let r = self.call("cl", Value::map([("f", fd)]));
        self.state().invalidate(path);
        r.map(drop)
    }

    fn new_handle(&self, h: Handle) -> FileHandle {
        let mut st = self.state();
        st.next_fh += 1;
        let fh = st.next_fh;
        st.handles.insert(fh, h);
        FileHandle(fh)
    }

    /// Writes a dirty buffer back; the handle stays open.
    fn write_back(&self, fh: FileHandle) -> Res<()> {
        let (path, data) = match self.state().handles.get_mut(&fh.0) {
            Some(Handle::Write {
                path, data, dirty, ..
            }) if *dirty => {
                *dirty = false;
                (path.clone(), data.clone())
            }
            _ => return Ok(()),
        };
        let r = self.upload(&path, &data);
        if r.is_err() {
            if let Some(Handle::Write { dirty, .. }) = self.state().handles.get_mut(&fh.0) {
                *dirty = true;
            }
        }
        r
    }

    fn do_open(&self, ino: INodeNo, flags: OpenFlags) -> Res<FileHandle> {
        let path = self.path(ino)?;
        if flags.acc_mode() == OpenAccMode::O_RDONLY {
            let fd = self.call("open", Value::map([("p", path.into()), ("m", "r".into())]))?;
            return Ok(self.new_handle(Handle::Read { fd }));
        }
        let m = self.meta(&path)?;
        if m.dir {
            return Err(Errno::EISDIR);
        }
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let data = if truncate || m.size == 0 {
            Vec::new()
        } else if m.size as usize > MAX_FILE {
            return Err(Errno::EFBIG);
        } else {
            let mut client = self.client.clone();
            self.rt
                .block_on(read_file(&mut client, &path, true))
                .map_err(|e| {
                    tracing::warn!("reading {path} to edit it: {e:#}");
                    Errno::EIO
                })?
        };
        Ok(self.new_handle(Handle::Write {
            path,
            ino: ino.0,
            data,
            dirty: truncate,
        }))
    }

    fn do_setattr(&self, ino: INodeNo, size: Option<u64>, fh: Option<FileHandle>) -> Res<FileAttr> {
        let path = self.path(ino)?;
        if let Some(size) = size {
            let size = usize::try_from(size)
                .ok()
                .filter(|s| *s <= MAX_FILE)
                .ok_or(Errno::EFBIG)?;
            // An open write buffer of this file takes the new size...
            let resized = {
                let mut st = self.state();
                let mut hit = false;
                for (k, h) in st.handles.iter_mut() {
                    if let Handle::Write {
                        ino: i,
                        data,
                        dirty,
                        ..
                    } = h
                    {
                        if *i == ino.0 || fh.is_some_and(|f| f.0 == *k) {
                            data.resize(size, 0);
                            *dirty = true;
                            hit = true;
                        }
                    }
                }
                hit
            };
            // ...else the node's file changes now.
            if !resized {
                if size == 0 {
                    self.truncate_on_node(&path)?;
                } else {
                    let mut client = self.client.clone();
                    let mut data = self
                        .rt
                        .block_on(read_file(&mut client, &path, true))
                        .map_err(|_| Errno::EIO)?;
                    data.resize(size, 0);
                    self.upload(&path, &data)?;
                }
            }
        }
        // Modes, owners and times are not kept by the node: accepted as is.
        self.entry(&path)
    }
}

fn nix_uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

fn nix_gid() -> u32 {
    // SAFETY: getgid cannot fail and touches no memory.
    unsafe { libc::getgid() }
}

impl Filesystem for NodeFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|p| self.entry(&p)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.path(ino).and_then(|p| self.entry(&p)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino, size, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self
            .path(ino)
            .and_then(|p| Ok((self.listing(&p, offset == 0)?, p)));
        let (entries, path) = match listed {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let parent_ino = {
            let mut st = self.state();
            st.inodes.ino(parent_of(&path))
        };
        let mut all = vec![
            (ino.0, FileType::Directory, ".".to_owned()),
            (parent_ino, FileType::Directory, "..".to_owned()),
        ];
        {
            let mut st = self.state();
            for (name, m) in entries {
                let kind = if m.dir {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                all.push((st.inodes.ino(&join(&path, &name)), kind, name));
            }
        }
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in all.into_iter().enumerate().skip(skip) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags) {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let made = self.child(parent, name).and_then(|path| {
            self.truncate_on_node(&path)?;
            let attr = self.entry(&path)?;
            let fh = self.new_handle(Handle::Write {
                path,
                ino: attr.ino.0,
                data: Vec::new(),
                dirty: false,
            });
            Ok((attr, fh))
        });
        match made {
            Ok((attr, fh)) => {
                reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fd = match self.state().handles.get(&fh.0) {
            Some(Handle::Read { fd }) => fd.clone(),
            Some(Handle::Write { data, .. }) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                return reply.data(&data[start..end]);
            }
            None => return reply.error(Errno::EBADF),
        };
        match self.read_range(&fd, offset, size as usize) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.state();
        let Some(Handle::Write { data, dirty, .. }) = st.handles.get_mut(&fh.0) else {
            drop(st);
            return reply.error(Errno::EBADF);
        };
        let end = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(bytes.len()))
            .filter(|e| *e <= MAX_FILE);
        let Some(end) = end else {
            drop(st);
            return reply.error(Errno::EFBIG);
        };
        if data.len() < end {
            data.resize(end, 0);
        }
        data[end - bytes.len()..end].copy_from_slice(bytes);
        *dirty = true;
        drop(st);
        reply.written(bytes.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.write_back(fh) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let written = self.write_back(fh);
        let closed = match self.state().handles.remove(&fh.0) {
            Some(Handle::Read { fd }) => Some(fd),
            _ => None,
        };
        let closed = match closed {
            Some(fd) => self.call("cl", Value::map([("f", fd)])).map(drop),
            None => Ok(()),
        };
        match written.and(closed) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    // The node keeps no extended attributes and no permissions: say so
    // quietly (fuser's defaults log a warning per call).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let made = self.child(parent, name).and_then(|path| {
            let r = self.call("mkdir", Value::map([("p", path.as_str().into())]));
            self.state().invalidate(&path);
            r?;
            self.entry(&path)
        });
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, "rm", reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, "rmdir", reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let moved = (|| {
            let from = self.child(parent, name)?;
            let to = self.child(newparent, newname)?;
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                return Err(Errno::EINVAL);
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                self.state().invalidate(&to);
                match self.meta(&to) {
                    Ok(_) => return Err(Errno::EEXIST),
                    Err(e) if e == Errno::ENOENT => {}
                    Err(e) => return Err(e),
                }
            }
            let r = self.call(
                "mv",
                Value::map([("s", from.as_str().into()), ("d", to.as_str().into())]),
            );
            let mut st = self.state();
            st.invalidate(&from);
            st.invalidate(&to);
            r?;
            st.inodes.rename(&from, &to);
            // Open write buffers follow their file.
            let prefix = format!("{from}/");
            for h in st.handles.values_mut() {
                if let Handle::Write { path, .. } = h {
                    if *path == from || path.starts_with(&prefix) {
                        *path = format!("{to}{}", &path[from.len()..]);
                    }
                }
            }
            Ok(())
        })();
        match moved {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl NodeFs {
    fn remove(&self, parent: INodeNo, name: &OsStr, cmd: &str, reply: ReplyEmpty) {
        let gone = self.child(parent, name).and_then(|path| {
            let r = self.call(cmd, Value::map([("p", path.as_str().into())]));
            let mut st = self.state();
            st.invalidate(&path);
            r?;
            st.inodes.forget(&path);
            Ok(())
        });
        match gone {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renaming_a_folder_moves_the_inodes_under_it_and_drops_the_target() {
        let mut i = Inodes::default();
        let a = i.ino("a");
        let ab = i.ino("a/b");
        let other = i.ino("ab");
        let target = i.ino("c");
        i.rename("a", "c");
        assert_eq!(i.path(a), Some("c"));
        assert_eq!(i.path(ab), Some("c/b"));
        assert_eq!(i.path(other), Some("ab"));
        assert_eq!(i.path(target), None);
        assert_eq!(i.ino("c/b"), ab);
        assert_eq!(i.path(1), Some(""));
    }

    #[test]
    fn forgetting_a_path_forgets_its_children_only() {
        let mut i = Inodes::default();
        let d = i.ino("d");
        let f = i.ino("d/f");
        let dd = i.ino("dd");
        i.forget("d");
        assert_eq!(i.path(d), None);
        assert_eq!(i.path(f), None);
        assert_eq!(i.path(dd), Some("dd"));
        assert_ne!(i.ino("d"), d, "a new file gets a new inode");
    }

    #[test]
    fn node_errors_map_to_errno() {
        let e = |k, args| errno(&RemoteError::well_known(k, args));
        assert_eq!(e(WellKnown::FileNotFound, vec![]), Errno::ENOENT);
        assert_eq!(e(WellKnown::FileExists, vec![]), Errno::EEXIST);
        assert_eq!(
            e(WellKnown::Os, vec![Value::from(28), "no space".into()]),
            Errno::ENOSPC
        );
        assert_eq!(e(WellKnown::Os, vec![]), Errno::EIO);
        assert_eq!(e(WellKnown::Key, vec![]), Errno::EIO);
        assert_eq!(errno(&RemoteError::generic("E:boom")), Errno::EIO);
    }

    #[test]
    fn paths_join_from_the_root() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "b"), "a/b");
        assert_eq!(parent_of("a/b/c"), "a/b");
        assert_eq!(parent_of("a"), "");
    }
}
