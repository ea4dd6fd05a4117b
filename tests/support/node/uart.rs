//! The host end of a node's UART link, for tests: a pseudo-terminal, the
//! SerialPacker framing and the reliable layer (mux-runtime's sans-I/O
//! `Machine`), with optional injected byte errors in both directions.

use super::{path, NodeErr, WAIT};
use mux_runtime::framing::crc16::crc16;
use mux_runtime::framing::SerialPackerConfig;
use mux_runtime::msgpack::{self, Limits};
use mux_runtime::reliable::{Config, Event, Machine};
use mux_runtime::Value;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A pseudo-terminal pair in raw mode; the node opens `path`.
pub struct Pty {
    master: File,
    _slave: File,
    pub path: PathBuf,
}

fn raw(fd: i32) {
    // SAFETY: plain termios calls on a descriptor we own.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd, &mut t), 0, "tcgetattr");
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(fd, libc::TCSANOW, &t), 0, "tcsetattr");
    }
}

pub fn pty() -> Pty {
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty fills two descriptors; the name buffer is sized.
    unsafe {
        assert_eq!(
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null()
            ),
            0,
            "openpty failed"
        );
        raw(m);
        raw(s);
        let fl = libc::fcntl(m, libc::F_GETFL);
        libc::fcntl(m, libc::F_SETFL, fl | libc::O_NONBLOCK);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ttyname_r(s, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        Pty {
            master: File::from_raw_fd(m),
            _slave: File::from_raw_fd(s),
            path: path.into(),
        }
    }
}

/// SerialPacker frame parser (byte at a time, idle reset).
struct Frames {
    max: usize,
    st: u8,
    len: usize,
    buf: Vec<u8>,
    crc_hi: u8,
    last: Instant,
}

impl Frames {
    fn feed(&mut self, b: u8, now: Instant) -> Option<Vec<u8>> {
        if self.st != 0 && now.duration_since(self.last) > Duration::from_millis(100) {
            self.st = 0;
        }
        self.last = now;
        match self.st {
            0 => {
                if b == 0x85 {
                    self.st = 1;
                }
            }
            1 => {
                let len = b as usize;
                if len == 0 || len > self.max {
                    self.st = 0;
                } else {
                    self.len = len;
                    self.buf.clear();
                    self.st = 2;
                }
            }
            2 => {
                self.buf.push(b);
                if self.buf.len() == self.len {
                    self.st = 3;
                }
            }
            3 => {
                self.crc_hi = b;
                self.st = 4;
            }
            _ => {
                self.st = 0;
                if u16::from(self.crc_hi) << 8 | u16::from(b) == crc16(&self.buf) {
                    return Some(self.buf.clone());
                }
            }
        }
        None
    }
}

/// The host side of a UART link over a pty.
pub struct UartHost {
    pub pty: Pty,
    machine: Machine,
    frames: Frames,
    cfg: SerialPackerConfig,
    /// Bytes in 1000 that get a bit flipped, each direction.
    pub errors_per_mille: u64,
    rng: u64,
    pub messages: VecDeque<Value>,
    pub flipped: u64,
    seq: i128,
}

impl UartHost {
    pub fn new(errors_per_mille: u64, timeout_ms: u64) -> UartHost {
        let machine = Machine::new(Config {
            window: 8,
            timeout_ms,
            retries: 10,
        })
        .expect("reliable config");
        UartHost {
            pty: pty(),
            machine,
            frames: Frames {
                max: 127,
                st: 0,
                len: 0,
                buf: Vec::new(),
                crc_hi: 0,
                last: Instant::now(),
            },
            cfg: SerialPackerConfig::default(),
            errors_per_mille,
            rng: 0x9E37_79B9_7F4A_7C15,
            messages: VecDeque::new(),
            flipped: 0,
            seq: 0,
        }
    }

    pub fn stats(&self) -> mux_runtime::reliable::Stats {
        *self.machine.stats()
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn corrupt(&mut self, b: &mut [u8]) {
        for x in b.iter_mut() {
            if self.rand() % 1000 < self.errors_per_mille {
                *x ^= 1 << (self.rand() % 8);
                self.flipped += 1;
            }
        }
    }

    fn transmit(&mut self) {
        while let Some(f) = self.machine.poll_transmit() {
            let payload = msgpack::to_vec(&f.to_value());
            let mut bytes = self.cfg.encode_frame(&payload).expect("frame");
            self.corrupt(&mut bytes);
            // the node may not have opened the pty yet: the kernel buffers
            self.pty.master.write_all(&bytes).ok();
        }
    }

    /// Moves bytes and time until `until`; returns early when a message
    /// arrived.
    fn pump(&mut self, until: Instant) {
        let mut buf = [0u8; 512];
        loop {
            let now = Instant::now();
            let mut got = false;
            match self.pty.master.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let mut b = buf[..n].to_vec();
                    self.corrupt(&mut b);
                    for x in b {
                        if let Some(p) = self.frames.feed(x, now) {
                            if let Ok(v) = msgpack::decode_exact(&p, &Limits::default()) {
                                self.machine.handle_value(&v, now);
                            }
                        }
                    }
                    got = true;
                }
                _ => {}
            }
            if self.machine.poll_timeout().is_some_and(|t| t <= now) {
                self.machine.handle_timeout(now);
            }
            self.transmit();
            let mut delivered = false;
            while let Some(ev) = self.machine.poll_event() {
                match ev {
                    Event::Message(v) => {
                        self.messages.push_back(v);
                        delivered = true;
                    }
                    Event::Down { reason, .. } => panic!("reliable link down: {reason}"),
                    Event::Up { .. } | Event::Reset { .. } => {}
                }
            }
            if delivered || now >= until {
                return;
            }
            if !got {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Starts the handshake (the node starts its own too).
    pub fn connect(&mut self) {
        self.machine.connect(Instant::now());
        self.transmit();
    }

    pub fn next_within(&mut self, limit: Duration) -> Option<Value> {
        let end = Instant::now() + limit;
        while self.messages.is_empty() && Instant::now() < end {
            self.pump(end);
        }
        self.messages.pop_front()
    }

    pub fn wait_link_up(&mut self) {
        let end = Instant::now() + WAIT;
        loop {
            let m = self
                .next_within(end.saturating_duration_since(Instant::now()))
                .expect("no link message over the UART");
            if m.get("a") == Some(&path("link")) {
                assert_eq!(m.get("d"), Some(&Value::Bool(true)), "{m}");
                return;
            }
        }
    }

    pub fn call(&mut self, p: &str, d: Value) -> Result<Value, NodeErr> {
        self.seq += 2;
        let i = self.seq;
        let req = Value::map([("a", path(p)), ("d", d), ("i", Value::Int(i))]);
        self.machine
            .send(req, Instant::now())
            .expect("link is down");
        self.transmit();
        let end = Instant::now() + WAIT;
        loop {
            let m = self
                .next_within(end.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|| panic!("no answer to {p} over the UART"));
            if m.get("i").and_then(Value::as_int) != Some(i + 1) {
                continue;
            }
            if let Some(e) = m.get("e") {
                return Err(NodeErr {
                    e: e.clone(),
                    d: m.get("d").cloned().unwrap_or(Value::Nil),
                });
            }
            return Ok(m.get("d").cloned().unwrap_or(Value::Nil));
        }
    }
}
