//! Driving a unix-port satellite from a test: a node folder (its filesystem
//! root, holding `moat.cfg`), the process, and protocol connections over
//! TCP or the process's stdio, using the foundation MsgPack codec.
//!
//! Which MicroPython: `$MOAT_MICROPYTHON` with `MICROPYPATH` pointing at the
//! source tree's `node-runtime/` (a development shortcut), else the firmware
//! built by `moat build` ([`crate::unix_satellite`]), where the runtime is
//! frozen.

use mux_runtime::msgpack::{self, Limits};
use mux_runtime::Value;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub mod uart;

/// How long any single wait may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// The MicroPython binary to run and, in development, its module path.
#[derive(Clone, Debug)]
pub struct Firmware {
    pub program: PathBuf,
    pub micropypath: Option<String>,
}

/// The satellite firmware (see the module docs).
pub fn firmware() -> Firmware {
    if let Some(p) = std::env::var_os("MOAT_MICROPYTHON") {
        let rt = crate::workspace_root().join("node-runtime");
        return Firmware {
            program: PathBuf::from(p),
            micropypath: Some(format!("{}:.frozen", rt.display())),
        };
    }
    let program = crate::unix_satellite()
        .unwrap_or_else(|e| panic!("no unix satellite firmware (moat build failed): {e:#}"));
    Firmware {
        program,
        micropypath: None,
    }
}

/// Runs a MicroPython script (e.g. a runtime unit test) with the firmware.
pub fn run_script(fw: &Firmware, script: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(&fw.program);
    cmd.arg(script).args(args);
    if let Some(p) = &fw.micropypath {
        cmd.env("MICROPYPATH", p);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", fw.program.display()))
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// `"sys.mem"` -> `["sys", "mem"]`; all-digit parts become integers.
pub fn path(p: &str) -> Value {
    Value::Array(
        p.split('.')
            .map(|s| match s.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => Value::from(s),
            })
            .collect(),
    )
}

/// A map with string keys.
pub fn kw<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::map(pairs)
}

/// One satellite: its folder and (while running) its process.
pub struct Node {
    pub dir: tempfile::TempDir,
    logs: tempfile::TempDir,
    pub fw: Firmware,
    pub heap_kb: u32,
    pub port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Node {
    /// A node folder with no config yet; `heap_kb` is passed as `-X heapsize`.
    /// Running from sources (`$MOAT_MICROPYTHON`) compiles every module on
    /// the node, which needs more heap: there at least 256 KiB are used.
    pub fn new(heap_kb: u32) -> Node {
        let fw = firmware();
        let heap_kb = if fw.micropypath.is_some() {
            heap_kb.max(256)
        } else {
            heap_kb
        };
        Node {
            dir: tempfile::tempdir().expect("temp dir"),
            logs: tempfile::tempdir().expect("temp dir"),
            fw,
            heap_kb,
            port: free_port(),
            child: None,
            starts: 0,
        }
    }

    /// `{link: {tcp: {h: "127.0.0.1", p: port, a: false}}}` plus `extra`
    /// top-level entries.
    pub fn tcp_cfg(&self, extra: Vec<(&str, Value)>) -> Value {
        let mut v = vec![(
            "link",
            kw([(
                "tcp",
                kw([
                    ("h", "127.0.0.1".into()),
                    ("p", self.port.into()),
                    // Loopback only: allowed without auth (docs/auth.md).
                    ("a", false.into()),
                ]),
            )]),
        )];
        v.extend(extra);
        Value::map(v)
    }

    pub fn write_cfg(&self, name: &str, cfg: &Value) {
        std::fs::write(self.dir.path().join(name), msgpack::to_vec(cfg)).expect("write config");
    }

    pub fn write_file(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).expect("write file");
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.fw.program);
        cmd.arg("-X")
            .arg(format!("heapsize={}k", self.heap_kb))
            .args(["-m", "main"])
            .current_dir(self.dir.path());
        match &self.fw.micropypath {
            Some(p) => cmd.env("MICROPYPATH", p),
            None => cmd.env_remove("MICROPYPATH"),
        };
        cmd
    }

    fn log_file(&mut self) -> (std::fs::File, std::fs::File) {
        self.starts += 1;
        let p = self.logs.path().join(format!("console{}.log", self.starts));
        let f = std::fs::File::create(&p).expect("log file");
        (f.try_clone().expect("log file"), f)
    }

    /// Starts the process with stdout/stderr going to a log (TCP links).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let (o, e) = self.log_file();
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(o)
            .stderr(e)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.fw.program.display()));
        self.child = Some(child);
    }

    /// Starts the process with a stdio link; returns the connection after
    /// the ready marker.
    pub fn start_stdio(&mut self) -> Conn {
        assert!(self.child.is_none(), "node already running");
        let (_, e) = self.log_file();
        let mut child = self
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(e)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.fw.program.display()));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        self.child = Some(child);
        let mut c = Conn::new(Box::new(stdout), Box::new(StdinWriter(stdin)));
        c.wait_console("moat: stdio ready\n");
        c
    }

    /// Everything the node printed so far (all runs).
    pub fn console(&self) -> String {
        let mut s = String::new();
        for n in 1..=self.starts {
            if let Ok(t) = std::fs::read(self.logs.path().join(format!("console{n}.log"))) {
                s.push_str(&String::from_utf8_lossy(&t));
            }
        }
        s
    }

    /// Connects to the node's TCP link, retrying while it boots.
    pub fn connect(&mut self) -> Conn {
        self.connect_port(self.port)
    }

    pub fn connect_port(&mut self, port: u16) -> Conn {
        let end = Instant::now() + WAIT;
        loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => return Conn::tcp(s),
                Err(e) => {
                    if let Some(st) = self.try_exit() {
                        panic!(
                            "node exited ({st}) before accepting connections:\n{}",
                            self.console()
                        );
                    }
                    if Instant::now() > end {
                        panic!("cannot connect to port {port}: {e}\n{}", self.console());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let st = self.child.as_mut()?.try_wait().expect("try_wait")?;
        self.child = None;
        Some(st)
    }

    /// Waits for the process to end by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_exit() {
                return st;
            }
            if Instant::now() > end {
                panic!("node still running after {limit:?}:\n{}", self.console());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash as far as the node can tell.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    pub fn running(&mut self) -> bool {
        self.child.is_some() && self.try_exit().is_none()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

struct StdinWriter(ChildStdin);

impl Write for StdinWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// An error reply: `e` (a proxy or an "E:..." string) and `d` (its args).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeErr {
    pub e: Value,
    pub d: Value,
}

impl NodeErr {
    /// The proxy name of a well-known error, e.g. "_FnErr".
    pub fn proxy(&self) -> Option<&str> {
        match &self.e {
            Value::Proxy(p) => Some(p),
            _ => None,
        }
    }
}

/// One protocol connection (TCP or stdio). A reader thread feeds bytes in;
/// top-level bytes 0x00-0x7F are console output.
pub struct Conn {
    rx: Receiver<Vec<u8>>,
    tx: Box<dyn Write + Send>,
    buf: Vec<u8>,
    pub console: Vec<u8>,
    queue: VecDeque<Value>,
    /// Unsolicited messages (`{a, d}` without `i`) seen while waiting.
    pub unsolicited: Vec<Value>,
    seq: i128,
    eof: bool,
    sock: Option<TcpStream>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // the reader thread holds a clone: shut the socket down for real
        if let Some(s) = &self.sock {
            s.shutdown(std::net::Shutdown::Both).ok();
        }
    }
}

impl Conn {
    /// A connection over a TCP socket.
    pub fn tcp(s: TcpStream) -> Conn {
        s.set_nodelay(true).ok();
        let r = s.try_clone().expect("clone socket");
        let k = s.try_clone().expect("clone socket");
        let mut c = Conn::new(Box::new(r), Box::new(s));
        c.sock = Some(k);
        c
    }

    /// Accepts one connection on `l` within [`WAIT`].
    pub fn accept(l: &TcpListener) -> Conn {
        l.set_nonblocking(true).expect("nonblocking listener");
        let end = Instant::now() + WAIT;
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).expect("blocking socket");
                    return Conn::tcp(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("no connection from the node: {e}"),
            }
        }
    }

    pub fn new(mut r: Box<dyn Read + Send>, tx: Box<dyn Write + Send>) -> Conn {
        let (stx, rx) = channel();
        std::thread::spawn(move || {
            let mut b = vec![0u8; 8192];
            loop {
                match r.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stx.send(b[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Conn {
            rx,
            tx,
            buf: Vec::new(),
            console: Vec::new(),
            queue: VecDeque::new(),
            unsolicited: Vec::new(),
            seq: 0,
            eof: false,
            sock: None,
        }
    }

    pub fn send_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.tx.write_all(b)?;
        self.tx.flush()
    }

    pub fn send(&mut self, v: &Value) {
        self.send_raw(&msgpack::to_vec(v)).expect("send to node");
    }

    fn parse(&mut self) {
        loop {
            let Some(&b0) = self.buf.first() else { return };
            if b0 < 0x80 {
                self.console.push(b0);
                self.buf.remove(0);
                continue;
            }
            match msgpack::decode(&self.buf, &Limits::default()) {
                Ok(Some((v, used))) => {
                    self.buf.drain(..used);
                    self.queue.push_back(v);
                }
                Ok(None) => return,
                Err(_) => {
                    self.console.push(b0);
                    self.buf.remove(0);
                }
            }
        }
    }

    fn pump(&mut self, end: Instant) -> bool {
        let left = end.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(b) => {
                self.buf.extend_from_slice(&b);
                self.parse();
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                false
            }
        }
    }

    /// The next message within `limit`; `None` on timeout or when the node
    /// closed the link.
    pub fn next_within(&mut self, limit: Duration) -> Option<Value> {
        let end = Instant::now() + limit;
        loop {
            if let Some(v) = self.queue.pop_front() {
                return Some(v);
            }
            if self.eof || !self.pump(end) {
                if let Some(v) = self.queue.pop_front() {
                    return Some(v);
                }
                return None;
            }
        }
    }

    /// Whether the node closed the link (waits up to `limit`).
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while !self.eof && Instant::now() < end {
            if self.next_within(Duration::from_millis(50)).is_some() {
                continue;
            }
        }
        self.eof
    }

    /// Waits until `text` appears on the console.
    pub fn wait_console(&mut self, text: &str) {
        let end = Instant::now() + WAIT;
        while !String::from_utf8_lossy(&self.console).contains(text) {
            if Instant::now() > end || self.eof {
                panic!(
                    "no {text:?} on the console; got {:?}",
                    String::from_utf8_lossy(&self.console)
                );
            }
            self.pump(Instant::now() + Duration::from_millis(50));
        }
    }

    /// Sends a request and returns its sequence number.
    pub fn request(&mut self, p: &str, d: Value, r: Option<i64>) -> i128 {
        self.seq += 2;
        let i = self.seq;
        let mut m = vec![("a", path(p)), ("d", d), ("i", Value::Int(i))];
        if let Some(r) = r {
            m.push(("r", r.into()));
        }
        self.send(&Value::map(m));
        i
    }

    /// The next message answering our request `i` (unsolicited messages are
    /// collected; other answers are dropped).
    pub fn answer(&mut self, i: i128, limit: Duration) -> Option<Value> {
        let end = Instant::now() + limit;
        loop {
            let v = self.next_within(end.saturating_duration_since(Instant::now()))?;
            match v.get("i").and_then(Value::as_int) {
                Some(j) if j == i + 1 => return Some(v),
                Some(_) => {}
                None => self.unsolicited.push(v),
            }
        }
    }

    /// Calls a command; `Ok(result)` or the node's error.
    pub fn call(&mut self, p: &str, d: Value) -> Result<Value, NodeErr> {
        let i = self.request(p, d, None);
        let v = self
            .answer(i, WAIT)
            .unwrap_or_else(|| panic!("no answer to {p} (link closed or timeout)"));
        if let Some(e) = v.get("e") {
            return Err(NodeErr {
                e: e.clone(),
                d: v.get("d").cloned().unwrap_or(Value::Nil),
            });
        }
        Ok(v.get("d").cloned().unwrap_or(Value::Nil))
    }

    /// Calls a command that must succeed.
    pub fn ok(&mut self, p: &str, d: Value) -> Value {
        self.call(p, d)
            .unwrap_or_else(|e| panic!("{p} failed: {e:?}"))
    }

    /// Calls a command that must fail.
    pub fn fails(&mut self, p: &str, d: Value) -> NodeErr {
        match self.call(p, d) {
            Ok(v) => panic!("{p} succeeded with {v} but should have failed"),
            Err(e) => e,
        }
    }

    /// Waits for an unsolicited message with action `a` (e.g. `["link"]`).
    pub fn wait_unsolicited(&mut self, a: &Value, limit: Duration) -> Option<Value> {
        let end = Instant::now() + limit;
        loop {
            if let Some(pos) = self.unsolicited.iter().position(|m| m.get("a") == Some(a)) {
                return Some(self.unsolicited.remove(pos));
            }
            let v = self.next_within(end.saturating_duration_since(Instant::now()))?;
            if v.get("i").is_none() {
                self.unsolicited.push(v);
            }
        }
    }
}
