//! Trust end to end (issue 13): projects that share a name keep to their
//! own nodes, the runtime folder is refused when it is not the user's and
//! private, and Ctrl-C on `moat mux` stops a process node cleanly (its
//! user config boots next time). Real unix-port satellites (the shared
//! firmware, see [`moat_e2e::unix_satellite`]).

use moat_e2e::{moat, run_ok, unix_satellite};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn stdout(o: &Output) -> String {
    text(&o.stdout)
}

fn stderr(o: &Output) -> String {
    text(&o.stderr)
}

/// A project made by `moat init --name NAME` whose node `demo` (board
/// unix) is a process link of the mux, flashed with the shared firmware;
/// its own `XDG_RUNTIME_DIR`, shared with other projects when given.
struct Project {
    _dir: tempfile::TempDir,
    root: PathBuf,
    runtime: PathBuf,
    mux: Option<Child>,
}

impl Project {
    fn new(name: &str, step: u32, runtime: &Path) -> Project {
        Project::with_link(name, step, runtime, "{ kind = \"process\" }")
    }

    /// With `link` (a TOML inline table) as the node's link.
    fn with_link(name: &str, step: u32, runtime: &Path, link: &str) -> Project {
        let firmware = unix_satellite().expect("the shared firmware builds");
        let dir = tempfile::Builder::new()
            .prefix("moat-trust-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("proj");
        run_ok(
            moat(dir.path())
                .arg("init")
                .arg(&root)
                .args(["--name", name]),
        )
        .expect("moat init");
        let manifest = root.join("moat.toml");
        let toml = std::fs::read_to_string(&manifest).unwrap();
        let toml: String = toml
            .lines()
            .map(|l| {
                if l.starts_with("link = ") {
                    format!("link = {link}\n")
                } else if l.starts_with("c = ") {
                    // Tells the two projects' nodes apart.
                    format!("c = {{ step = {step}, ms = 1000 }}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&manifest, toml).unwrap();
        let built = root.join(".moat/build/demo/firmware");
        std::fs::create_dir_all(&built).unwrap();
        std::fs::copy(&firmware, built.join("micropython")).unwrap();
        let p = Project {
            _dir: dir,
            root,
            runtime: runtime.to_owned(),
            mux: None,
        };
        run_ok(&mut p.moat(&["flash"])).expect("moat flash");
        p
    }

    fn moat(&self, args: &[&str]) -> Command {
        let mut c = moat(&self.root);
        c.args(args)
            .env("XDG_RUNTIME_DIR", &self.runtime)
            .env_remove("MOAT_SOCKET");
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("mux.log")).unwrap_or_default()
    }

    /// `moat mux` in a process group of its own (as a shell runs it in a
    /// terminal), until `moat cmd c.get` answers through it.
    fn start_mux(&mut self) {
        let log = std::fs::File::create(self.root.join("mux.log")).unwrap();
        let child = self
            .moat(&["mux"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("moat mux starts");
        self.mux = Some(child);
        let end = Instant::now() + WAIT;
        loop {
            let o = self.moat(&["cmd", "c.get"]).output().unwrap();
            if o.status.success() && stderr(&o).is_empty() {
                return;
            }
            if let Some(status) = self.mux.as_mut().unwrap().try_wait().unwrap() {
                panic!("moat mux ended ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < end,
                "the mux did not answer c.get: {}\n{}",
                stderr(&o),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ctrl-C in the mux's terminal: SIGINT to its whole process group.
    fn interrupt_mux(&mut self) -> ExitStatus {
        let mut child = self.mux.take().expect("a mux runs");
        let pgid = child.id() as libc::pid_t;
        // SAFETY: kill has no memory preconditions; -pgid names the group.
        assert_eq!(unsafe { libc::kill(-pgid, libc::SIGINT) }, 0);
        let end = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the mux did not stop on SIGINT:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A `moat run` process group, stopped when dropped (a failed assertion
/// leaves no node running).
struct NodeRun(Option<Child>);

impl Drop for NodeRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: kill has no memory preconditions; -pgid names the group.
            unsafe { libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

/// `moat run` (the node in the foreground) in a process group of its own,
/// until its TCP port answers.
fn start_node(p: &Project, port: u16) -> NodeRun {
    let log = std::fs::File::create(p.root.join("node.log")).unwrap();
    let mut child = p
        .moat(&["run"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("moat run starts");
    let end = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("moat run ended ({status}):\n{}", node_log(p));
        }
        assert!(
            Instant::now() < end,
            "node did not listen:\n{}",
            node_log(p)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    NodeRun(Some(child))
}

fn node_log(p: &Project) -> String {
    std::fs::read_to_string(p.root.join("node.log")).unwrap_or_default()
}

/// Ctrl-C to `moat run`'s group; waits for it to end.
fn stop_node(p: &Project, mut run: NodeRun) {
    let mut child = run.0.take().expect("running");
    // SAFETY: kill has no memory preconditions; -pgid names the group.
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGINT) };
    let end = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("moat run did not stop on SIGINT:\n{}", node_log(p));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// The node key in `.moat/keys/demo`.
fn local_key(p: &Project) -> Vec<u8> {
    let text = std::fs::read_to_string(p.root.join(".moat/keys/demo")).unwrap();
    hex::decode(text.trim()).unwrap()
}

#[test]
fn a_rotated_key_keeps_working_after_a_node_restart() {
    let runtime = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = Project::with_link(
        "rot",
        1,
        runtime.path(),
        &format!("{{ kind = \"tcp\", host = \"127.0.0.1\", port = {port} }}"),
    );
    let old = local_key(&p);
    let node = start_node(&p, port);
    let o = run_ok(&mut p.moat(&["key", "rotate", "--json"])).unwrap();
    assert!(stdout(&o).contains("\"rotated\":true"), "{}", stdout(&o));
    let new = local_key(&p);
    assert_ne!(old, new);
    assert!(
        !p.root.join(".moat/keys/demo.new").exists(),
        "the pending key is gone"
    );
    // The node keeps it in both configs (its fallback too).
    for file in ["moat.cfg", "moat_fb.cfg"] {
        let bytes = std::fs::read(p.root.join(".moat/nodes/demo").join(file)).unwrap();
        assert!(
            bytes.windows(32).any(|w| w == new.as_slice()),
            "{file} lacks the new key"
        );
        assert!(
            !bytes.windows(32).any(|w| w == old.as_slice()),
            "{file} still has the old key"
        );
    }
    stop_node(&p, node);
    let node = start_node(&p, port);
    let o = run_ok(&mut p.moat(&["cmd", "c.get"]));
    stop_node(&p, node);
    o.unwrap_or_else(|e| panic!("{e:#}\n{}", node_log(&p)));
}

impl Drop for Project {
    fn drop(&mut self) {
        if let Some(mut c) = self.mux.take() {
            // SAFETY: as above; the group holds the mux (its nodes stop
            // with it).
            unsafe { libc::kill(-(c.id() as libc::pid_t), libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

#[test]
fn ctrl_c_on_the_mux_stops_a_process_node_cleanly_and_its_apps_boot_next_time() {
    let runtime = tempfile::tempdir().unwrap();
    let mut p = Project::new("cc", 1, runtime.path());
    p.start_mux();
    let marker = p.root.join(".moat/nodes/demo/moat.run");
    assert!(marker.exists(), "the running node has its crash marker");
    let status = p.interrupt_mux();
    assert!(status.success(), "mux exit {status}:\n{}", p.log());
    assert!(
        !marker.exists(),
        "the node was not stopped cleanly (crash marker left):\n{}",
        p.log()
    );
    // Again: the user's app `c` (not in the fallback config) answers.
    p.start_mux();
    let o = run_ok(&mut p.moat(&["cfg", "get", "apps"])).unwrap();
    assert!(stdout(&o).contains("counter.Counter"), "{}", stdout(&o));
}

#[test]
fn flash_clears_a_stale_crash_marker() {
    let runtime = tempfile::tempdir().unwrap();
    let p = Project::new("stale", 1, runtime.path());
    let marker = p.root.join(".moat/nodes/demo/moat.run");
    std::fs::write(&marker, "n").unwrap();
    run_ok(&mut p.moat(&["flash"])).unwrap();
    assert!(!marker.exists());
}

#[test]
fn two_projects_named_alike_each_reach_their_own_node() {
    let runtime = tempfile::tempdir().unwrap();
    let mut a = Project::new("q", 3, runtime.path());
    let mut b = Project::new("q", 5, runtime.path());
    a.start_mux();
    // The second mux binds its own socket (the name alone was shared).
    b.start_mux();
    for (p, step) in [(&a, 3), (&b, 5)] {
        let o = run_ok(&mut p.moat(&["cfg", "get", "c.step"])).unwrap();
        assert_eq!(stdout(&o).trim(), step.to_string(), "{}", stderr(&o));
        let o = run_ok(&mut p.moat(&["cmd", "sys.info"])).unwrap();
        assert!(!stdout(&o).is_empty());
    }
    let sockets: Vec<String> = std::fs::read_dir(runtime.path().join("moat"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sock"))
        .collect();
    assert_eq!(sockets.len(), 2, "{sockets:?}");
    assert!(sockets.iter().all(|s| s.starts_with("q-")), "{sockets:?}");
}

/// A runtime folder others can write, or another user's, is refused by
/// the mux and by clients, naming the fix.
#[test]
fn a_runtime_folder_that_is_not_private_and_ours_is_refused_with_the_fix() {
    let runtime = tempfile::tempdir().unwrap();
    let dir = runtime.path().join("moat");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Needs no node: the check comes first.
    let proj = tempfile::tempdir().unwrap();
    run_ok(moat(proj.path()).args(["init", "p"])).unwrap();
    let root = proj.path().join("p");
    let run = |args: &[&str]| {
        moat(&root)
            .args(args)
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env_remove("MOAT_SOCKET")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for args in [&["mux"][..], &["cmd", "ping"], &["cfg", "set", "x", "1"]] {
        let o = run(args);
        assert!(!o.status.success(), "{args:?} ran");
        let e = stderr(&o);
        assert!(
            e.contains("has mode 0777") && e.contains(&format!("chmod 700 {}", dir.display())),
            "{args:?}: {e}"
        );
    }
    // Another user's folder (and socket): only root can make one.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: the other-owner case needs a second uid (run as root to cover it)");
        return;
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let other: u32 = 65534;
    chown(&dir, other);
    for args in [&["mux"][..], &["cmd", "ping"]] {
        let o = run(args);
        assert!(!o.status.success(), "{args:?} ran");
        let e = stderr(&o);
        assert!(
            e.contains(&format!("belongs to uid {other}, not to you"))
                && e.contains("XDG_RUNTIME_DIR"),
            "{args:?}: {e}"
        );
    }
    // Our folder, but a socket another user put there (e.g. before the
    // folder was made private): clients send it nothing.
    chown(&dir, 0);
    let id = std::fs::read_to_string(root.join("moat.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("id = \"").map(|r| r[..16].to_owned()))
        .unwrap();
    let sock = dir.join(format!("p-{id}.sock"));
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    chown(&sock, other);
    let o = run(&["cmd", "ping"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("the mux socket") && e.contains(&format!("belongs to uid {other}")),
        "{e}"
    );
}

fn chown(path: &Path, uid: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
    let r = unsafe { libc::chown(c.as_ptr(), uid, uid) };
    assert_eq!(r, 0, "chown {}", path.display());
}

// ---- authenticated links (docs/auth.md) ----

use mux_runtime::msgpack::{self, Limits};
use mux_runtime::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

/// A project whose node `demo` is a TCP node run by `moat run` on a port
/// of its own (loopback, authenticated: the scaffold's default).
fn tcp_project(name: &str, runtime: &Path) -> (Project, u16) {
    let port = free_port();
    let link = format!("{{ kind = \"tcp\", host = \"127.0.0.1\", port = {port} }}");
    (Project::with_link(name, 1, runtime, &link), port)
}

/// `[project] id` of `p`'s manifest.
fn project_id(p: &Project) -> String {
    std::fs::read_to_string(p.root.join("moat.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("id = \"").map(|r| r[..16].to_owned()))
        .expect("moat.toml has an id")
}

/// Points the manifest's link (not the flashed node) at `port`.
fn point_at(p: &Project, port: u16) {
    let file = p.root.join("moat.toml");
    let toml: String = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("link = ") {
                format!("link = {{ kind = \"tcp\", host = \"127.0.0.1\", port = {port} }}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(file, toml).unwrap();
}

/// A plain TCP client speaking unauthenticated MsgPack, as anyone on the
/// network could.
struct Raw {
    io: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let io = TcpStream::connect(("127.0.0.1", port)).unwrap();
        io.set_read_timeout(Some(WAIT)).unwrap();
        Raw {
            io,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, v: &Value) {
        self.io.write_all(&msgpack::to_vec(v)).unwrap();
    }

    /// The next message, or `None` once the node closed the connection.
    fn recv(&mut self) -> Option<Value> {
        loop {
            if let Some((v, used)) = msgpack::decode(&self.buf, &Limits::default()).unwrap() {
                self.buf.drain(..used);
                return Some(v);
            }
            let mut chunk = [0u8; 4096];
            match self.io.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("no answer from the node: {e}"),
            }
        }
    }
}

fn req(path: &[&str], d: Value, i: i64) -> Value {
    Value::map([
        (
            "a",
            Value::Array(path.iter().map(|s| Value::from(*s)).collect()),
        ),
        ("d", d),
        ("i", Value::from(i)),
    ])
}

/// The node's `sys.info` `au` counters `[ok, bad, fail]`, asked with the
/// right key.
fn node_au(p: &Project) -> [i128; 3] {
    let o = run_ok(&mut p.moat(&["cmd", "sys.info", "--json"])).unwrap();
    let info: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let au = &info["au"];
    ["ok", "bad", "fail"].map(|k| au[k].as_i64().unwrap_or_else(|| panic!("au: {info}")) as i128)
}

#[test]
fn a_client_without_the_key_gets_auerr_and_nothing_it_sent_runs() {
    let runtime = tempfile::tempdir().unwrap();
    let (p, port) = tcp_project("nokey", runtime.path());
    let node = start_node(&p, port);
    let evil = p.root.join(".moat/nodes/demo/evil.py");
    let kw = |pairs: Vec<(&str, Value)>| Value::map(pairs);
    let attempts = [
        vec![req(&["ping"], kw(vec![("m", "hi".into())]), 2)],
        vec![req(&["cfg", "r"], kw(vec![]), 2)],
        // Open, write and close pipelined, as a script would.
        vec![
            req(
                &["fs", "open"],
                kw(vec![("p", "evil.py".into()), ("m", "w".into())]),
                2,
            ),
            req(
                &["fs", "wr"],
                kw(vec![("f", 1.into()), ("d", Value::Bin(b"x=1".to_vec()))]),
                4,
            ),
            req(&["fs", "cl"], kw(vec![("f", 1.into())]), 6),
        ],
    ];
    for msgs in &attempts {
        let mut c = Raw::connect(port);
        for m in msgs {
            c.send(m);
        }
        let first = c.recv().expect("an answer before the close");
        assert_eq!(
            first.get("e"),
            Some(&Value::Proxy("_AuErr".into())),
            "{first}"
        );
        // Told once, then closed.
        assert_eq!(c.recv(), None, "the node kept talking");
    }
    // A handshake with a wrong key: the node's proof checks nothing here,
    // our proof is wrong.
    let mut c = Raw::connect(port);
    c.send(&Value::map([
        ("h", 1.into()),
        ("c", Value::Bin(vec![1; 16])),
    ]));
    let challenge = c.recv().expect("a challenge");
    assert_eq!(challenge.get("h"), Some(&Value::from(2)), "{challenge}");
    assert_eq!(challenge.get("n"), Some(&Value::from("demo")));
    c.send(&Value::map([
        ("h", 3.into()),
        ("t", Value::Bin(vec![0; 32])),
    ]));
    let refused = c.recv().expect("a refusal");
    assert_eq!(
        refused,
        Value::map([
            ("e", Value::Proxy("_AuErr".into())),
            ("d", Value::Array(vec!["wrong key".into()])),
        ])
    );
    assert_eq!(c.recv(), None);
    assert!(!evil.exists(), "a file was written without the key");
    // The right key works (moat's own client), and the node counted the
    // four failed handshakes.
    let o = run_ok(&mut p.moat(&["cmd", "--direct", "ping", "m=hi"])).unwrap();
    assert_eq!(stdout(&o).trim(), "{m: hi}");
    let [_, _, fail] = node_au(&p);
    assert_eq!(fail, 4, "{}", node_log(&p));
    stop_node(&p, node);
}

#[test]
fn a_client_pointed_at_another_projects_node_is_refused_with_both_names() {
    let runtime = tempfile::tempdir().unwrap();
    let (theirs, port) = tcp_project("q", runtime.path());
    let (ours, _) = tcp_project("q", runtime.path());
    let node = start_node(&theirs, port);
    point_at(&ours, port);
    let o = ours.moat(&["cmd", "--direct", "ping"]).output().unwrap();
    stop_node(&theirs, node);
    assert!(!o.status.success(), "{}", stdout(&o));
    let want = format!(
        "port {port} answers node 'demo' of project 'q' (id {}), not node 'demo' of this project 'q' (id {})",
        project_id(&theirs),
        project_id(&ours)
    );
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
}

/// What the proxy does to one sealed message.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// A copy with one bit of its tag'd body flipped first.
    Flip,
    /// The message, then the same bytes again.
    Replay,
    /// An unsealed message first.
    Inject,
    /// Held back until the next sealed message has gone (then stale).
    Reorder,
}

/// Faults waiting for the next sealed messages of one direction.
type Plan = Arc<Mutex<std::collections::VecDeque<Fault>>>;

/// A message-level TCP proxy between the mux and a node: it forwards
/// whole MsgPack messages and applies the planned faults to sealed ones
/// (`{s: …}` or encrypted `{x: …}`), one fault a message.
struct AuthProxy {
    port: u16,
    to_node: Plan,
    to_host: Plan,
    /// Every byte forwarded, both directions.
    wire: Wire,
}

/// What went over the proxy.
type Wire = Arc<Mutex<Vec<u8>>>;

impl AuthProxy {
    fn start(upstream: u16) -> AuthProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (to_node, to_host) = (Plan::default(), Plan::default());
        let (tn, th) = (to_node.clone(), to_host.clone());
        let wire = Wire::default();
        let w = wire.clone();
        // Threads end when either side closes (the test's processes end).
        std::thread::spawn(move || {
            for host in listener.incoming().flatten() {
                let Ok(node) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let injected = req(&["ping"], Value::map([("m", "injected".into())]), 100);
                let spoofed = Value::map([("d", Value::from("spoofed")), ("i", 3.into())]);
                pump(
                    host.try_clone().unwrap(),
                    node.try_clone().unwrap(),
                    tn.clone(),
                    injected,
                    w.clone(),
                );
                pump(node, host, th.clone(), spoofed, w.clone());
            }
        });
        AuthProxy {
            port,
            to_node,
            to_host,
            wire,
        }
    }

    fn plan(&self, to_node: &[Fault], to_host: &[Fault]) {
        self.to_node.lock().unwrap().extend(to_node);
        self.to_host.lock().unwrap().extend(to_host);
    }
}

/// Copies messages `from` → `to`, applying `plan`, recording them in
/// `wire`; `inject` is the unsealed message an injection sends.
fn pump(mut from: TcpStream, mut to: TcpStream, plan: Plan, inject: Value, wire: Wire) {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut held: Option<Vec<u8>> = None;
        let mut chunk = [0u8; 4096];
        loop {
            let n = match from.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Ok(Some((v, used))) = msgpack::decode(&buf, &Limits::default()) {
                let msg: Vec<u8> = buf.drain(..used).collect();
                wire.lock().unwrap().extend_from_slice(&msg);
                let sealed = v.get("s").is_some() || v.get("x").is_some();
                let fault = if sealed {
                    plan.lock().unwrap().pop_front()
                } else {
                    None
                };
                let mut out = Vec::new();
                match fault {
                    Some(Fault::Flip) => {
                        let mut bad = msg.clone();
                        *bad.last_mut().unwrap() ^= 0x01;
                        out.extend_from_slice(&bad);
                        out.extend_from_slice(&msg);
                    }
                    Some(Fault::Replay) => {
                        out.extend_from_slice(&msg);
                        out.extend_from_slice(&msg);
                    }
                    Some(Fault::Inject) => {
                        out.extend_from_slice(&msgpack::to_vec(&inject));
                        out.extend_from_slice(&msg);
                    }
                    Some(Fault::Reorder) => {
                        held = Some(msg);
                        continue;
                    }
                    None => {
                        out.extend_from_slice(&msg);
                        if sealed {
                            if let Some(old) = held.take() {
                                out.extend_from_slice(&old);
                            }
                        }
                    }
                }
                if to.write_all(&out).is_err() {
                    return;
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// `moat cmd mux ls --json`'s entry for node `demo`.
fn mux_ls(p: &Project) -> serde_json::Value {
    let o = run_ok(&mut p.moat(&["cmd", "mux", "ls", "--json"])).unwrap();
    let ls: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    ls["demo"].clone()
}

#[test]
fn altered_replayed_reordered_and_injected_messages_are_dropped_counted_and_the_link_goes_on() {
    let runtime = tempfile::tempdir().unwrap();
    let (mut p, port) = tcp_project("mitm", runtime.path());
    let node = start_node(&p, port);
    let proxy = AuthProxy::start(port);
    // The mux reaches the node through the proxy.
    point_at(&p, proxy.port);
    p.start_mux();
    let ping = |m: &str| {
        let o = run_ok(&mut p.moat(&["cmd", "ping", &format!("m={m}")])).unwrap();
        assert_eq!(stdout(&o).trim(), format!("{{m: {m}}}"));
    };
    let [_, bad_before, _] = node_au(&p);
    let dropped_before = mux_ls(&p)["auth_dropped"].as_u64().unwrap();
    // Mux → node: one fault on each of the next three requests.
    proxy.plan(&[Fault::Flip, Fault::Replay, Fault::Inject], &[]);
    for m in ["a", "b", "c"] {
        ping(m);
    }
    // Node → mux: on the next three replies, then two stream items
    // swapped (the older one arrives last and is dropped).
    proxy.plan(
        &[],
        &[Fault::Flip, Fault::Replay, Fault::Inject, Fault::Reorder],
    );
    for m in ["d", "e", "f"] {
        ping(m);
    }
    let o = run_ok(&mut p.moat(&["cmd", "c.get", "--stream", "100", "--count", "4"])).unwrap();
    assert_eq!(stdout(&o).lines().count(), 4, "{}", stdout(&o));
    ping("still");
    let [_, bad, _] = node_au(&p);
    assert_eq!(bad - bad_before, 3, "node drops:\n{}", node_log(&p));
    let ls = mux_ls(&p);
    assert_eq!(
        ls["auth_dropped"].as_u64().unwrap() - dropped_before,
        4,
        "{ls}"
    );
    assert_eq!(ls["state"], "up", "{ls}");
    assert_eq!(ls["reconnects"], 0, "{ls}");
    assert!(ls["auth_ok"].as_u64().unwrap() > 6, "{ls}");
    assert!(!node_log(&p).contains("injected"), "{}", node_log(&p));
    drop(p);
    drop(node);
}

#[test]
fn a_process_link_with_auth_on_authenticates_through_the_mux() {
    let runtime = tempfile::tempdir().unwrap();
    let link = "{ kind = \"process\", auth = true }";
    let mut p = Project::with_link("proc", 1, runtime.path(), link);
    p.start_mux();
    let [ok, _, _] = node_au(&p);
    assert!(ok > 0, "the node accepted no sealed message");
    let ls = mux_ls(&p);
    assert_eq!(ls["kind"], "process", "{ls}");
    assert!(ls["auth_ok"].as_u64().unwrap() > 0, "{ls}");
    assert_eq!(ls["auth_dropped"], 0, "{ls}");
    assert!(ls["m"].as_u64().is_some(), "the node's m is kept: {ls}");
}

#[test]
fn an_encrypted_link_hides_what_it_carries_and_still_drops_forgeries() {
    let runtime = tempfile::tempdir().unwrap();
    let port = free_port();
    let link = format!("{{ kind = \"tcp\", host = \"127.0.0.1\", port = {port}, encrypt = true }}");
    let mut p = Project::with_link("enc", 1, runtime.path(), &link);
    let node = start_node(&p, port);
    let proxy = AuthProxy::start(port);
    let file = p.root.join("moat.toml");
    let toml = std::fs::read_to_string(&file)
        .unwrap()
        .replace(&format!("port = {port}"), &format!("port = {}", proxy.port));
    std::fs::write(&file, toml).unwrap();
    p.start_mux();
    let ls = mux_ls(&p);
    assert_eq!(ls["encrypted"], true, "{ls}");
    let [_, bad_before, _] = node_au(&p);
    // One forged message each way; the pings still answer.
    proxy.plan(&[Fault::Flip], &[Fault::Flip]);
    for m in ["plainly-visible-marker", "another-visible-marker"] {
        let o = run_ok(&mut p.moat(&["cmd", "ping", &format!("m={m}")])).unwrap();
        assert_eq!(stdout(&o).trim(), format!("{{m: {m}}}"));
    }
    let [_, bad, _] = node_au(&p);
    assert_eq!(bad - bad_before, 1, "node drops:\n{}", node_log(&p));
    let wire = proxy.wire.lock().unwrap().clone();
    let seen = String::from_utf8_lossy(&wire);
    assert!(!seen.contains("visible-marker"), "readable on the wire");
    assert!(!seen.contains("ping"), "request paths readable on the wire");
    // The node's name travels in the clear in step 2 only.
    assert!(seen.contains("demo"), "the proxy saw no handshake");
    drop(p);
    drop(node);
}
