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
