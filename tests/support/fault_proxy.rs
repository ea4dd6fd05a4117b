//! A fault-injecting link proxy for tests: it sits between host and node
//! and drops, duplicates, delays or corrupts bytes or whole frames at
//! configured rates, or cuts the line.
//!
//! - [`TcpProxy`]: listens on a loopback port and forwards each accepted
//!   connection to an upstream `host:port` (a TCP node, or QEMU's serial
//!   socket). [`TcpProxy::cut`] closes the live connections.
//! - [`SerialProxy`]: two pty pairs with the proxy between their master
//!   ends; the node opens [`SerialProxy::node_path`], the host
//!   [`SerialProxy::host_path`]. [`SerialProxy::set_cut`] makes the line
//!   go silent (a pulled cable).
//! - [`Pipe`]: the pump both use, between any two file descriptors.
//!
//! Faults are drawn from a seeded generator, so a run is repeatable given
//! the same input timing. "Frames" are found by a [`Framing`]: SerialPacker
//! frames on a lossy serial line, MsgPack objects on a stream, or whatever
//! one read returned. Bytes outside frames (console text) are forwarded
//! as they come and only see the byte-level faults.
//!
//! The pumps are threads polling with a short timeout, so they stop
//! promptly when the proxy is dropped.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mux_runtime::msgpack::{self, Limits};

/// Fault rates (0.0..=1.0) for one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Each byte is replaced by a different one.
    pub corrupt_byte: f64,
    /// Each byte is left out.
    pub drop_byte: f64,
    /// Each frame is left out.
    pub drop_frame: f64,
    /// Each frame is sent twice.
    pub dup_frame: f64,
    /// One byte of each frame is changed.
    pub corrupt_frame: f64,
    /// Each frame is held back by `delay` (the frames behind it wait too:
    /// a wire keeps its order).
    pub delay_frame: f64,
    pub delay: Duration,
    /// Every reliable-layer closing frame (`{a: "r", n: 0, …}`) is left
    /// out, as when a host's last frame does not make it to the node.
    pub drop_closing: bool,
}

impl Faults {
    /// No faults: a plain forwarder.
    pub fn none() -> Faults {
        Faults::default()
    }
}

/// How the proxy finds frames in a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Whatever one read returned is a frame.
    Chunks,
    /// SerialPacker: `START LEN DATA CRC16` (docs/protocol.md: Framing); `max` decides
    /// whether LEN takes one byte or up to two.
    SerialPacker { start: u8, max: usize },
    /// MsgPack objects back to back.
    MsgPack,
}

impl Framing {
    /// SerialPacker with the protocol defaults (start 0x85, max 127).
    pub fn serial_packer() -> Framing {
        Framing::SerialPacker {
            start: 0x85,
            max: 127,
        }
    }
}

/// What a direction did, for asserting that faults really happened.
#[derive(Debug, Default)]
pub struct Stats {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub frames: AtomicU64,
    pub corrupted_bytes: AtomicU64,
    pub dropped_bytes: AtomicU64,
    pub dropped_frames: AtomicU64,
    pub duplicated_frames: AtomicU64,
    pub corrupted_frames: AtomicU64,
    pub delayed_frames: AtomicU64,
}

impl Stats {
    /// A plain copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            bytes_in: g(&self.bytes_in),
            bytes_out: g(&self.bytes_out),
            frames: g(&self.frames),
            corrupted_bytes: g(&self.corrupted_bytes),
            dropped_bytes: g(&self.dropped_bytes),
            dropped_frames: g(&self.dropped_frames),
            duplicated_frames: g(&self.duplicated_frames),
            corrupted_frames: g(&self.corrupted_frames),
            delayed_frames: g(&self.delayed_frames),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames: u64,
    pub corrupted_bytes: u64,
    pub dropped_bytes: u64,
    pub dropped_frames: u64,
    pub duplicated_frames: u64,
    pub corrupted_frames: u64,
    pub delayed_frames: u64,
}

/// splitmix64: small, seeded, good enough for fault dice.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A piece of the stream: a frame, or bytes between frames.
#[derive(Debug, PartialEq)]
struct Unit {
    bytes: Vec<u8>,
    frame: bool,
}

/// Cuts a byte stream into [`Unit`]s per a [`Framing`].
struct Splitter {
    framing: Framing,
    buf: Vec<u8>,
}

impl Splitter {
    fn new(framing: Framing) -> Splitter {
        Splitter {
            framing,
            buf: Vec::new(),
        }
    }

    fn push(&mut self, bytes: &[u8], out: &mut Vec<Unit>) {
        if self.framing == Framing::Chunks {
            out.push(Unit {
                bytes: bytes.to_vec(),
                frame: true,
            });
            return;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            let Some((n, frame)) = self.next_unit() else {
                return;
            };
            out.push(Unit {
                bytes: self.buf.drain(..n).collect(),
                frame,
            });
        }
    }

    /// Everything still buffered, as loose bytes (after a quiet spell the
    /// peers' parsers reset too).
    fn flush(&mut self, out: &mut Vec<Unit>) {
        if !self.buf.is_empty() {
            out.push(Unit {
                bytes: std::mem::take(&mut self.buf),
                frame: false,
            });
        }
    }

    /// Length of the next complete unit at the head of `buf` and whether it
    /// is a frame; `None` while more bytes are needed.
    fn next_unit(&self) -> Option<(usize, bool)> {
        let b = &self.buf;
        if b.is_empty() {
            return None;
        }
        match self.framing {
            Framing::Chunks => Some((b.len(), true)),
            Framing::MsgPack => match msgpack::decode(b, &Limits::default()) {
                Ok(Some((_, used))) => Some((used, b[0] >= 0x80)),
                Ok(None) => None,
                Err(_) => Some((1, false)),
            },
            Framing::SerialPacker { start, max } => {
                if b[0] != start {
                    let n = b.iter().position(|&x| x == start).unwrap_or(b.len());
                    return Some((n, false));
                }
                let (len, hl) = if max <= 255 {
                    (usize::from(*b.get(1)?), 1)
                } else {
                    let l0 = usize::from(*b.get(1)?);
                    if l0 < 0x80 {
                        (l0, 1)
                    } else {
                        ((l0 & 0x7F) | (usize::from(*b.get(2)?) << 7), 2)
                    }
                };
                if len == 0 || len > max {
                    return Some((1, false));
                }
                let total = 1 + hl + len + 2;
                (b.len() >= total).then_some((total, true))
            }
        }
    }
}

/// Applies one direction's faults to units.
struct Mangler {
    faults: Arc<Mutex<Faults>>,
    rng: Rng,
    stats: Arc<Stats>,
}

impl Mangler {
    /// The bytes to write for `unit`, each with a hold-back.
    fn apply(&mut self, unit: Unit) -> Vec<(Vec<u8>, Duration)> {
        let f = *self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let s = &self.stats;
        let mut bytes = unit.bytes;
        let mut copies = 1;
        let mut hold = Duration::ZERO;
        if unit.frame {
            s.frames.fetch_add(1, Ordering::Relaxed);
            if self.rng.chance(f.drop_frame) || f.drop_closing && is_closing(&bytes) {
                s.dropped_frames.fetch_add(1, Ordering::Relaxed);
                return Vec::new();
            }
            if self.rng.chance(f.corrupt_frame) && !bytes.is_empty() {
                let i = self.rng.below(bytes.len());
                bytes[i] ^= 1 + self.rng.below(255) as u8;
                s.corrupted_frames.fetch_add(1, Ordering::Relaxed);
            }
            if self.rng.chance(f.dup_frame) {
                s.duplicated_frames.fetch_add(1, Ordering::Relaxed);
                copies = 2;
            }
            if self.rng.chance(f.delay_frame) {
                s.delayed_frames.fetch_add(1, Ordering::Relaxed);
                hold = f.delay;
            }
        }
        let mut out = Vec::with_capacity(bytes.len());
        for b in bytes {
            if self.rng.chance(f.drop_byte) {
                s.dropped_bytes.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if self.rng.chance(f.corrupt_byte) {
                s.corrupted_bytes.fetch_add(1, Ordering::Relaxed);
                out.push(b ^ (1 + self.rng.below(255) as u8));
            } else {
                out.push(b);
            }
        }
        if out.is_empty() {
            return Vec::new();
        }
        let mut v = vec![(out.clone(), hold)];
        if copies == 2 {
            v.push((out, Duration::ZERO));
        }
        v
    }
}

/// One direction's settings.
#[derive(Clone, Debug)]
pub struct Direction {
    pub framing: Framing,
    pub faults: Faults,
}

impl Direction {
    pub fn new(framing: Framing, faults: Faults) -> Direction {
        Direction { framing, faults }
    }
}

/// Both pumps between two descriptors.
pub struct Pipe {
    stop: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// `[a → b, b → a]`.
    pub stats: [Arc<Stats>; 2],
    faults: [Arc<Mutex<Faults>>; 2],
}

impl Pipe {
    /// Starts pumping `a → b` with `ab` and `b → a` with `ba`.
    pub fn start(a: OwnedFd, b: OwnedFd, ab: Direction, ba: Direction, seed: u64) -> Pipe {
        Pipe::start_shared(
            a,
            b,
            [ab.framing, ba.framing],
            [
                Arc::new(Mutex::new(ab.faults)),
                Arc::new(Mutex::new(ba.faults)),
            ],
            [Arc::default(), Arc::default()],
            seed,
        )
    }

    /// Like [`Pipe::start`], with faults and counters shared with others
    /// (a TCP proxy's connections).
    pub fn start_shared(
        a: OwnedFd,
        b: OwnedFd,
        framing: [Framing; 2],
        faults: [Arc<Mutex<Faults>>; 2],
        stats: [Arc<Stats>; 2],
        seed: u64,
    ) -> Pipe {
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        // Non-blocking, so a pump whose receiver stopped reading (a dead
        // node's pty) still sees `stop` and the proxy can be dropped.
        for fd in [a.as_raw_fd(), b.as_raw_fd()] {
            // SAFETY: fcntl flag calls on descriptors we own.
            unsafe {
                let fl = libc::fcntl(fd, libc::F_GETFL);
                if fl >= 0 {
                    libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
                }
            }
        }
        let a = Arc::new(a);
        let b = Arc::new(b);
        let mut threads = Vec::new();
        for (i, (from, to)) in [(a.clone(), b.clone()), (b, a)].into_iter().enumerate() {
            let mangler = Mangler {
                faults: faults[i].clone(),
                rng: Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F)),
                stats: stats[i].clone(),
            };
            let (stop, cut) = (stop.clone(), cut.clone());
            let split = Splitter::new(framing[i]);
            threads.push(std::thread::spawn(move || {
                pump(&from, &to, split, mangler, &stop, &cut)
            }));
        }
        Pipe {
            stop,
            cut,
            threads,
            stats,
            faults,
        }
    }

    /// Changes one direction's faults (0: a → b, 1: b → a).
    pub fn set_faults(&self, direction: usize, faults: Faults) {
        *self.faults[direction]
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// While cut, everything read is thrown away.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    /// Whether both pumps have ended (a side closed).
    pub fn finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// How long an incomplete frame may wait for its rest before it goes out
/// as loose bytes (below the 100 ms parser idle reset of docs/protocol.md: Framing).
const FLUSH_AFTER: Duration = Duration::from_millis(30);

fn pump(
    from: &OwnedFd,
    to: &OwnedFd,
    mut split: Splitter,
    mut mangler: Mangler,
    stop: &AtomicBool,
    cut: &AtomicBool,
) {
    let mut buf = vec![0u8; 4096];
    let mut units = Vec::new();
    let mut last_byte = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match poll_read(from.as_raw_fd(), 20) {
            Ok(true) => {}
            Ok(false) => {
                if last_byte.elapsed() >= FLUSH_AFTER {
                    split.flush(&mut units);
                }
            }
            Err(_) => return,
        }
        if units.is_empty() {
            // SAFETY: reading into our own buffer from a descriptor we hold.
            let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                return;
            }
            if n == 0 {
                return;
            }
            last_byte = Instant::now();
            let got = &buf[..n as usize];
            mangler
                .stats
                .bytes_in
                .fetch_add(got.len() as u64, Ordering::Relaxed);
            if cut.load(Ordering::Relaxed) {
                continue;
            }
            split.push(got, &mut units);
        }
        for unit in units.drain(..) {
            for (bytes, hold) in mangler.apply(unit) {
                if !hold.is_zero() {
                    std::thread::sleep(hold);
                }
                if write_all(to.as_raw_fd(), &bytes, stop).is_err() {
                    return;
                }
                mangler
                    .stats
                    .bytes_out
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Whether a whole SerialPacker frame carries a reliable-layer closing
/// frame: its map has `a: "r"` and `n: 0` (fixstr keys, as both sides
/// encode them).
fn is_closing(frame: &[u8]) -> bool {
    let has = |pat: &[u8]| frame.windows(pat.len()).any(|w| w == pat);
    has(b"\xa1a\xa1r") && has(b"\xa1n\x00")
}

/// Whether `fd` is readable within `ms`; errors when it hung up with
/// nothing left to read.
fn poll_read(fd: RawFd, ms: i32) -> std::io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    if rc == 0 {
        return Ok(false);
    }
    if p.revents & libc::POLLIN != 0 {
        return Ok(true);
    }
    if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        // A pty master whose slave is closed reports POLLHUP until someone
        // opens it again: wait rather than end.
        std::thread::sleep(Duration::from_millis(ms as u64));
        return Ok(false);
    }
    Ok(false)
}

/// Writes all of `b`, waiting while the receiver is full; gives up when
/// `stop` is set.
fn write_all(fd: RawFd, mut b: &[u8], stop: &AtomicBool) -> std::io::Result<()> {
    while !b.is_empty() {
        // SAFETY: writing from a live slice to a descriptor we hold.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => {
                    if stop.load(Ordering::Relaxed) {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                _ => return Err(e),
            }
        }
        b = &b[n as usize..];
    }
    Ok(())
}

/// A loopback TCP proxy: each connection to [`TcpProxy::port`] is forwarded
/// to `upstream` with faults (`up`: client → upstream, `down`: back).
pub struct TcpProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    pipes: Arc<Mutex<Vec<(Pipe, TcpStream, TcpStream)>>>,
    acceptor: Option<JoinHandle<()>>,
    /// Totals over every connection so far: `[up, down]`.
    pub stats: [Arc<Stats>; 2],
    faults: [Arc<Mutex<Faults>>; 2],
}

impl TcpProxy {
    pub fn start(upstream: &str, up: Direction, down: Direction, seed: u64) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("local addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let pipes: Arc<Mutex<Vec<(Pipe, TcpStream, TcpStream)>>> = Arc::default();
        let stats = [Arc::new(Stats::default()), Arc::new(Stats::default())];
        let faults = [
            Arc::new(Mutex::new(up.faults)),
            Arc::new(Mutex::new(down.faults)),
        ];
        let acceptor = {
            let (stop, pipes, stats) = (stop.clone(), pipes.clone(), stats.clone());
            let faults = faults.clone();
            let upstream = upstream.to_owned();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Ok((client, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        // Upstream not there: the client sees the close.
                        continue;
                    };
                    let _ = client.set_nonblocking(false);
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    n += 1;
                    let fd = |s: &TcpStream| OwnedFd::from(s.try_clone().expect("clone socket"));
                    let pipe = Pipe::start_shared(
                        fd(&client),
                        fd(&server),
                        [up.framing, down.framing],
                        faults.clone(),
                        stats.clone(),
                        seed.wrapping_add(n),
                    );
                    pipes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((pipe, client, server));
                }
            })
        };
        TcpProxy {
            port,
            stop,
            pipes,
            acceptor: Some(acceptor),
            stats,
            faults,
        }
    }

    /// The loopback port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Closes every live connection (both sides see the line go down).
    pub fn cut(&self) {
        let mut pipes = self.pipes.lock().unwrap_or_else(|p| p.into_inner());
        for (_, c, s) in pipes.iter() {
            let _ = c.shutdown(Shutdown::Both);
            let _ = s.shutdown(Shutdown::Both);
        }
        pipes.clear();
    }

    /// Changes the faults of every connection's direction (0: up, 1: down).
    pub fn set_faults(&self, direction: usize, faults: Faults) {
        *self.faults[direction]
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = faults;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        self.cut();
    }
}

/// One pty pair: the master end and the slave's path (the slave stays
/// open here too, so the master never sees a hang-up between users).
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    pub path: String,
}

/// Opens a pty pair in raw mode.
pub fn pty() -> std::io::Result<Pty> {
    let (mut master, mut slave) = (0, 0);
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: openpty writes two fds and the name buffer we pass.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            name.as_mut_ptr(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty returned two fresh fds that we now own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: `name` is NUL-terminated by openpty.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        // SAFETY: termios calls on a descriptor we own, with a zeroed struct
        // filled by tcgetattr first.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) == 0 {
                libc::cfmakeraw(&mut t);
                libc::tcsetattr(fd, libc::TCSANOW, &t);
            }
        }
    }
    Ok(Pty {
        master,
        slave,
        path,
    })
}

/// A serial line with the proxy in the middle: node ↔ pty A ↔ proxy ↔
/// pty B ↔ host.
pub struct SerialProxy {
    node: Pty,
    host: Pty,
    pub pipe: Pipe,
}

impl SerialProxy {
    /// `to_node`: host → node, `to_host`: node → host.
    pub fn start(to_node: Direction, to_host: Direction, seed: u64) -> std::io::Result<Self> {
        let node = pty()?;
        let host = pty()?;
        let pipe = Pipe::start(
            host.master.try_clone()?,
            node.master.try_clone()?,
            to_node,
            to_host,
            seed,
        );
        Ok(SerialProxy { node, host, pipe })
    }

    /// The tty the node opens.
    pub fn node_path(&self) -> &str {
        &self.node.path
    }

    /// The tty the host opens.
    pub fn host_path(&self) -> &str {
        &self.host.path
    }

    /// Host → node counters.
    pub fn to_node(&self) -> StatsSnapshot {
        self.pipe.stats[0].snapshot()
    }

    /// Node → host counters.
    pub fn to_host(&self) -> StatsSnapshot {
        self.pipe.stats[1].snapshot()
    }

    pub fn set_cut(&self, cut: bool) {
        self.pipe.set_cut(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp_frame(data: &[u8]) -> Vec<u8> {
        let mut v = vec![0x85, data.len() as u8];
        v.extend_from_slice(data);
        v.extend_from_slice(&[0, 0]);
        v
    }

    #[test]
    fn serial_packer_frames_are_found_across_split_reads_and_console_bytes_stay_loose() {
        let mut s = Splitter::new(Framing::serial_packer());
        let mut wire = b"hi".to_vec();
        wire.extend(sp_frame(b"abc"));
        wire.extend(sp_frame(b"de"));
        let mut out = Vec::new();
        for b in wire.chunks(3) {
            s.push(b, &mut out);
        }
        assert_eq!(
            out,
            vec![
                Unit {
                    bytes: b"hi".to_vec(),
                    frame: false
                },
                Unit {
                    bytes: sp_frame(b"abc"),
                    frame: true
                },
                Unit {
                    bytes: sp_frame(b"de"),
                    frame: true
                },
            ]
        );
    }

    #[test]
    fn msgpack_objects_are_frames() {
        let mut s = Splitter::new(Framing::MsgPack);
        let mut out = Vec::new();
        s.push(&[0x92, 0x01], &mut out);
        assert!(out.is_empty());
        s.push(&[0x02, 0xc0], &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].bytes, vec![0x92, 1, 2]);
        assert!(out[0].frame);
    }

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let run = || {
            let mut m = Mangler {
                faults: Arc::new(Mutex::new(Faults {
                    corrupt_byte: 0.1,
                    drop_frame: 0.2,
                    dup_frame: 0.1,
                    ..Faults::none()
                })),
                rng: Rng::new(7),
                stats: Arc::default(),
            };
            (0..200)
                .flat_map(|i| {
                    m.apply(Unit {
                        bytes: vec![i as u8; 10],
                        frame: true,
                    })
                })
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.len() < 220 && a.len() > 100, "{}", a.len());
    }
}
