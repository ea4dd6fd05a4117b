//! `moat fs mount` end to end: a unix-port satellite (`moat init`, the
//! shared firmware, `moat flash`, `moat run` on its own TCP port), its
//! files mounted with FUSE and used through `std::fs`.

use moat_e2e::{build_tools_present, moat, run_ok, temp_project, unix_satellite, TempProject};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// Whether FUSE can be used here. Under `CI=true` a missing piece is a
/// failure; otherwise the test says why it skips.
fn fuse_usable() -> bool {
    let fusermount = moat_e2e::on_path("fusermount3");
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if fusermount && dev {
        return true;
    }
    let why = format!(
        "{}{}",
        if dev {
            ""
        } else {
            "/dev/fuse cannot be opened; "
        },
        if fusermount {
            ""
        } else {
            "fusermount3 is not on PATH (apt package fuse3)"
        }
    );
    if std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!("CI=true but FUSE is not usable: {why}");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// `a == b`, reported by length and first difference (not every byte).
fn assert_same(what: &str, a: &[u8], b: &[u8]) {
    let first = a.iter().zip(b).position(|(x, y)| x != y);
    assert!(
        a == b,
        "{what}: {} vs {} bytes, first difference at {first:?}",
        a.len(),
        b.len()
    );
}

fn poll(what: &str, mut done: impl FnMut() -> bool, log: impl Fn() -> String) {
    let end = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < end, "{what} timed out:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_mount_point(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
}

/// Node `demo` running on its own port, and (once mounted) `moat fs mount`.
struct Fixture {
    project: TempProject,
    logs: tempfile::TempDir,
    node: Option<Child>,
    mux: Option<Child>,
    mount: Option<Child>,
    dir: PathBuf,
}

impl Fixture {
    fn start() -> Fixture {
        let firmware = unix_satellite().expect("the shared firmware builds");
        let project = temp_project("unix").expect("moat init");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let manifest = project.path().join("moat.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(
            text.contains("link = { kind = \"tcp\""),
            "manifest changed:\n{text}"
        );
        std::fs::write(&manifest, with_port(&text, port)).unwrap();
        let built = project.path().join(".moat/build/demo/firmware");
        std::fs::create_dir_all(&built).unwrap();
        std::fs::copy(&firmware, built.join("micropython")).unwrap();
        let logs = tempfile::tempdir().unwrap();
        let dir = logs.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let mut f = Fixture {
            project,
            logs,
            node: None,
            mux: None,
            mount: None,
            dir,
        };
        run_ok(&mut f.moat(&["flash"])).expect("moat flash");
        f.node = Some(f.spawn(&["run"], "node.log"));
        poll(
            "the node listening",
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || f.log("node.log"),
        );
        f
    }

    fn moat(&self, args: &[&str]) -> Command {
        let mut c = moat(self.project.path());
        c.args(args)
            .env("XDG_RUNTIME_DIR", self.logs.path())
            .env_remove("MOAT_SOCKET");
        c
    }

    fn spawn(&self, args: &[&str], log: &str) -> Child {
        let log = std::fs::File::create(self.logs.path().join(log)).unwrap();
        self.moat(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("moat starts")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(name)).unwrap_or_default()
    }

    fn node_dir(&self) -> PathBuf {
        self.project.path().join(".moat/nodes/demo")
    }

    /// `moat mux` on the project's default socket (where `moat fs mount`
    /// finds it), until a verb answers through it.
    fn start_mux(&mut self) {
        let mut child = self.spawn(&["mux"], "mux.log");
        let name = self.project.path().file_name().unwrap().to_str().unwrap();
        let id = project_id(self.project.path());
        let socket = self
            .logs
            .path()
            .join("moat")
            .join(format!("{name}-{id}.sock"));
        poll(
            "the mux",
            || {
                if let Some(s) = child.try_wait().unwrap() {
                    panic!("moat mux ended ({s}):\n{}", self.log("mux.log"));
                }
                let out = self.moat(&["cmd", "ping"]).output().unwrap();
                out.status.success() && socket.exists()
            },
            || self.log("mux.log"),
        );
        self.mux = Some(child);
    }

    fn mount(&mut self) {
        let dir = self.dir.to_str().unwrap().to_owned();
        let mut child = self.spawn(&["fs", "mount", &dir], "mount.log");
        let log = || self.log("mount.log");
        poll(
            "the mount",
            || {
                if let Some(s) = child.try_wait().unwrap() {
                    panic!("moat fs mount ended ({s}):\n{}", log());
                }
                is_mount_point(&self.dir)
            },
            log,
        );
        self.mount = Some(child);
    }

    /// `fusermount3 -u`, then `moat fs mount` must exit 0 by itself.
    fn unmount(&mut self) -> std::process::ExitStatus {
        let status = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success(), "fusermount3 -u failed");
        let mut child = self.mount.take().unwrap();
        let mut exit = None;
        poll(
            "moat fs mount exiting",
            || {
                exit = child.try_wait().unwrap();
                exit.is_some()
            },
            || self.log("mount.log"),
        );
        exit.unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut m) = self.mount.take() {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.dir)
                .status();
            let _ = m.kill();
            let _ = m.wait();
        }
        if let Some(mut x) = self.mux.take() {
            let _ = x.kill();
            let _ = x.wait();
        }
        if let Some(n) = self.node.take() {
            stop_run(n);
        }
    }
}

/// Stops `moat run` as Ctrl-C would, so it stops its node (a SIGKILL
/// would leave the node running without it); kills it if it hangs.
fn stop_run(mut run: Child) {
    // SAFETY: plain signal to a child this test started.
    unsafe { libc::kill(run.id() as libc::pid_t, libc::SIGINT) };
    let end = Instant::now() + Duration::from_secs(20);
    while run.try_wait().ok().flatten().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = run.kill();
    let _ = run.wait();
}

#[test]
fn files_written_through_the_mount_are_on_the_node_and_read_back() {
    if !build_tools_present() || !fuse_usable() {
        return;
    }
    let mut f = Fixture::start();
    f.mount();
    let m = f.dir.clone();

    // Every byte value, several node messages long, and not a multiple of a chunk.
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::create_dir(m.join("data")).unwrap();
    std::fs::write(m.join("data/blob.bin"), &data).unwrap();
    let read = |p: &Path| std::fs::read(p).unwrap();
    assert_same("read back", &read(&m.join("data/blob.bin")), &data);
    assert_same(
        "on the node",
        &read(&f.node_dir().join("data/blob.bin")),
        &data,
    );
    let got = run_ok(&mut f.moat(&["fs", "get", "data/blob.bin", "-"])).unwrap();
    assert_same("moat fs get", &got.stdout, &data);
    // A file the node has (the unix port's files are a host folder) reads
    // through the mount in message-sized chunks.
    let theirs: Vec<u8> = data.iter().rev().copied().collect();
    std::fs::write(f.node_dir().join("data/theirs.bin"), &theirs).unwrap();
    assert_same("node's file", &read(&m.join("data/theirs.bin")), &theirs);
    std::fs::remove_file(f.node_dir().join("data/theirs.bin")).unwrap();
    assert_eq!(
        std::fs::metadata(m.join("data/blob.bin")).unwrap().len(),
        data.len() as u64
    );

    // Listing, overwrite with a shorter file, append.
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert!(names(&m).contains(&"data".to_owned()), "{:?}", names(&m));
    assert_eq!(names(&m.join("data")), ["blob.bin"]);
    std::fs::write(m.join("data/blob.bin"), b"short").unwrap();
    assert_eq!(std::fs::read(m.join("data/blob.bin")).unwrap(), b"short");
    {
        use std::io::Write;
        let mut a = std::fs::OpenOptions::new()
            .append(true)
            .open(m.join("data/blob.bin"))
            .unwrap();
        a.write_all(b" and more").unwrap();
    }
    assert_eq!(
        std::fs::read(f.node_dir().join("data/blob.bin")).unwrap(),
        b"short and more"
    );

    // Rename, remove, errors as errno.
    std::fs::rename(m.join("data/blob.bin"), m.join("data/renamed.bin")).unwrap();
    assert_eq!(names(&m.join("data")), ["renamed.bin"]);
    assert!(f.node_dir().join("data/renamed.bin").is_file());
    assert!(!f.node_dir().join("data/blob.bin").exists());
    let missing = std::fs::read(m.join("data/blob.bin")).unwrap_err();
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    let exists = std::fs::create_dir(m.join("data")).unwrap_err();
    assert_eq!(exists.kind(), std::io::ErrorKind::AlreadyExists);
    std::fs::remove_file(m.join("data/renamed.bin")).unwrap();
    std::fs::remove_dir(m.join("data")).unwrap();
    assert!(!f.node_dir().join("data").exists());
    assert!(!names(&m).contains(&"data".to_owned()));

    let status = f.unmount();
    assert!(status.success(), "{status}:\n{}", f.log("mount.log"));
    assert!(!is_mount_point(&m));
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    if !build_tools_present() || !fuse_usable() {
        return;
    }
    let mut f = Fixture::start();
    f.mount();
    let mut child = f.mount.take().unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut exit = None;
    poll(
        "moat fs mount exiting on SIGTERM",
        || {
            exit = child.try_wait().unwrap();
            exit.is_some()
        },
        || f.log("mount.log"),
    );
    assert!(exit.unwrap().success(), "{}", f.log("mount.log"));
    assert!(!is_mount_point(&f.dir), "still mounted after SIGTERM");
}

#[test]
fn the_mount_works_through_the_mux_when_one_runs() {
    if !build_tools_present() || !fuse_usable() {
        return;
    }
    let mut f = Fixture::start();
    f.start_mux();
    f.mount();
    assert!(
        f.log("mount.log").contains("mux at"),
        "mounted without the mux:\n{}",
        f.log("mount.log")
    );
    let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    std::fs::write(f.dir.join("via-mux.bin"), &data).unwrap();
    assert_same(
        "on the node",
        &std::fs::read(f.node_dir().join("via-mux.bin")).unwrap(),
        &data,
    );
    assert_same(
        "read back",
        &std::fs::read(f.dir.join("via-mux.bin")).unwrap(),
        &data,
    );
    let status = f.unmount();
    assert!(status.success(), "{status}:\n{}", f.log("mount.log"));
}

/// `text` (a manifest) with the port of its `link = { … port = N }` line
/// set to `port` (`moat init` picks a random one).
fn with_port(text: &str, port: u16) -> String {
    let mut out: String = text
        .lines()
        .map(|l| match l.find("port = ") {
            Some(at) if l.starts_with("link = ") => {
                let rest = l[at + 7..].trim_start_matches(|c: char| c.is_ascii_digit());
                format!("{}{port}{rest}\n", &l[..at + 7])
            }
            _ => format!("{l}\n"),
        })
        .collect();
    if !text.ends_with('\n') {
        out.pop();
    }
    out
}

/// The `[project] id` `moat init` wrote into `root`'s manifest.
fn project_id(root: &Path) -> String {
    let text = std::fs::read_to_string(root.join("moat.toml")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("id = \""))
        .and_then(|l| l.split('"').next())
        .expect("moat init writes [project] id")
        .to_owned()
}
