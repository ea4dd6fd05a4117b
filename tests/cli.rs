//! The client verbs end to end: a project made by `moat init`, the
//! unix-port firmware built by `moat build` (shared by all tests, see
//! [`moat_e2e::unix_satellite`]), `moat flash`, the node started by
//! `moat run`, and `moat cmd` / `cfg` / `fs` talking to it.

use moat_e2e::{moat, run_ok, temp_project, unix_satellite, TempProject};
use mux_runtime::msgpack;
use mux_runtime::Value;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// A project with node `demo` (board unix) on its own TCP port, flashed
/// with the shared firmware, and its node once started.
struct Fixture {
    project: TempProject,
    /// The node's TCP port.
    port: u16,
    /// `XDG_RUNTIME_DIR` of every moat command: no mux socket unless a
    /// test starts one.
    runtime: tempfile::TempDir,
    node: Option<Child>,
}

impl Fixture {
    fn new() -> Fixture {
        let firmware = unix_satellite().expect("the shared firmware builds");
        let project = temp_project("unix").expect("moat init");
        let port = free_port();
        let manifest = project.path().join("moat.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(
            text.contains("port = 27587"),
            "moat init's manifest changed:\n{text}"
        );
        std::fs::write(
            &manifest,
            text.replace("port = 27587", &format!("port = {port}")),
        )
        .unwrap();
        // What `moat build` leaves for this node (the same sources as the
        // shared satellite project, so the same firmware).
        let built = project.path().join(".moat/build/demo/firmware");
        std::fs::create_dir_all(&built).unwrap();
        std::fs::copy(&firmware, built.join("micropython")).unwrap();
        let f = Fixture {
            project,
            port,
            runtime: tempfile::tempdir().unwrap(),
            node: None,
        };
        run_ok(&mut f.moat(&["flash"])).expect("moat flash");
        f
    }

    fn root(&self) -> &Path {
        self.project.path()
    }

    fn node_dir(&self) -> PathBuf {
        self.root().join(".moat/nodes/demo")
    }

    fn moat(&self, args: &[&str]) -> Command {
        let mut c = moat(self.root());
        c.args(args)
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env_remove("MOAT_SOCKET");
        c
    }

    /// `moat run` in the background, until the node's TCP port answers.
    fn start(&mut self) {
        let log = std::fs::File::create(self.runtime.path().join("node.log")).unwrap();
        let child = self
            .moat(&["run"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("moat run starts");
        self.node = Some(child);
        let end = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.node.as_mut().unwrap().try_wait().unwrap() {
                panic!("moat run ended ({status}):\n{}", self.node_log());
            }
            assert!(
                Instant::now() < end,
                "node did not listen:\n{}",
                self.node_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn node_log(&self) -> String {
        std::fs::read_to_string(self.runtime.path().join("node.log")).unwrap_or_default()
    }

    /// Runs `moat ARGS…`, returning its output whatever the status.
    fn out(&self, args: &[&str]) -> Output {
        self.moat(args).output().expect("moat runs")
    }

    /// Runs `moat ARGS…`, which must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = run_ok(&mut self.moat(args)).unwrap_or_else(|e| panic!("{e:#}"));
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Stops the node as Ctrl-C would; returns `moat run`'s exit code.
    fn interrupt(&mut self) -> Option<i32> {
        let mut child = self.node.take()?;
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let end = Instant::now() + WAIT;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!("moat run did not stop on SIGINT:\n{}", self.node_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if self.node.is_some() {
            let _ = self.interrupt();
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn flash_installs_firmware_and_config_and_keeps_user_files() {
    let f = Fixture::new();
    let dir = f.node_dir();
    assert!(dir.join("micropython").is_file());
    let cfg = msgpack::decode_exact(
        &std::fs::read(dir.join("moat.cfg")).unwrap(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        cfg.get("link")
            .and_then(|l| l.get("tcp"))
            .and_then(|t| t.get("p")),
        Some(&Value::from(f.port))
    );
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let json = f.ok(&["flash", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report[0]["node"], "demo");
    assert_eq!(report[0]["firmware_changed"], false);
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn cmd_ping_prints_the_echo_for_humans_and_as_json() {
    let mut f = Fixture::new();
    f.start();
    assert_eq!(f.ok(&["cmd", "ping", "m=hi"]), "{m: hi}\n");
    // The node named first, and values that are not strings.
    assert_eq!(
        f.ok(&["cmd", "demo", "ping", "m=[1, 2.5, true, null]"]),
        "{m: [1, 2.5, True, None]}\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&f.ok(&["cmd", "ping", "m=hi", "--json"])).unwrap();
    assert_eq!(json, serde_json::json!({"m": "hi"}));
    let info: serde_json::Value =
        serde_json::from_str(&f.ok(&["cmd", "sys.info", "--json"])).unwrap();
    assert_eq!(info["p"], "1.25.0");
    let dir = f.ok(&["cmd", "dir"]);
    assert!(dir.contains("sys") && dir.contains("fs"), "{dir}");
    assert_eq!(f.interrupt(), Some(0), "Ctrl-C stops the node cleanly");
}

#[test]
fn remote_errors_exit_nonzero_and_say_what_they_mean() {
    let mut f = Fixture::new();
    f.start();
    let out = f.out(&["cmd", "sys.nope"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no such command path") && err.contains("nope"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let out = f.out(&["cmd", "sys.nope", "--json"]);
    assert!(!out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["error"]["type"], "_NPErr");

    let out = f.out(&["cmd", "fs.stat", "p=missing.txt"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("file not found"), "{}", stderr(&out));

    // A bad argument never reaches the node.
    let out = f.out(&["cmd", "ping", "m=[1,"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("m=[1,"), "{}", stderr(&out));
}

#[test]
fn a_node_that_is_not_running_is_reported_with_the_fix() {
    let f = Fixture::new();
    let out = f.out(&["cmd", "ping"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("moat run"), "{err}");
}

#[test]
fn streams_print_count_items_and_stop() {
    let mut f = Fixture::new();
    f.start();
    let text = f.ok(&["cmd", "sys.mem", "--stream", "50", "--count", "3"]);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.contains("f: ")), "{text}");
    let json = f.ok(&[
        "cmd", "ping", "m=x", "--stream", "20", "--count", "2", "--json",
    ]);
    let items: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items, vec![serde_json::json!({"m": "x"}); 2]);
    // The node is still fine afterwards (the stream was cancelled).
    assert_eq!(f.ok(&["cmd", "ping", "m=after"]), "{m: after}\n");
}

#[test]
fn cfg_set_changes_the_running_config_and_save_keeps_it() {
    let mut f = Fixture::new();
    f.start();
    assert_eq!(f.ok(&["cfg", "get", "c.step"]), "1\n");
    f.ok(&["cfg", "set", "c.step", "5"]);
    assert_eq!(f.ok(&["cfg", "get", "c.step"]), "5\n");
    f.ok(&["cfg", "set", "extra.list", "[a, 2]", "--save"]);
    let all: serde_json::Value = serde_json::from_str(&f.ok(&["cfg", "get", "--json"])).unwrap();
    assert_eq!(all["c"]["step"], 5);
    assert_eq!(all["extra"]["list"], serde_json::json!(["a", 2]));
    let saved = msgpack::decode_exact(
        &std::fs::read(f.node_dir().join("moat.cfg")).unwrap(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        saved.get("c").and_then(|c| c.get("step")),
        Some(&Value::from(5))
    );
    f.ok(&["cfg", "set", "extra", "--delete"]);
    let all: serde_json::Value = serde_json::from_str(&f.ok(&["cfg", "get", "--json"])).unwrap();
    assert!(all.get("extra").is_none(), "{all}");
    let out = f.out(&["cfg", "get", "no.such.key"]);
    assert!(!out.status.success());
}

#[test]
fn fs_put_and_get_round_trip_binary_data() {
    let mut f = Fixture::new();
    f.start();
    let scratch = tempfile::tempdir().unwrap();
    let mut data: Vec<u8> = (0..=255u8).cycle().take(256 * 20).collect();
    // Bytes that are not a repeating pattern too.
    let mut x: u32 = 12345;
    data.extend((0..3001).map(|_| {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        (x >> 16) as u8
    }));
    let local = scratch.path().join("blob.bin");
    std::fs::write(&local, &data).unwrap();

    f.ok(&["fs", "mkdir", "data"]);
    f.ok(&["fs", "put", local.to_str().unwrap(), "data/blob.bin"]);
    assert_eq!(
        std::fs::read(f.node_dir().join("data/blob.bin")).unwrap(),
        data
    );
    assert_eq!(
        f.ok(&["fs", "ls", "data"]),
        "blob.bin\n",
        "no temporary file is left"
    );
    let long = f.ok(&["fs", "ls", "-l", "data"]);
    assert!(long.contains(&data.len().to_string()), "{long}");

    let back = scratch.path().join("back.bin");
    f.ok(&["fs", "get", "data/blob.bin", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), data);
    let out = run_ok(&mut f.moat(&["fs", "get", "data/blob.bin", "-"])).unwrap();
    assert_eq!(out.stdout, data);

    // Replacing keeps the name; the new content is complete.
    std::fs::write(&local, b"short").unwrap();
    f.ok(&["fs", "put", local.to_str().unwrap(), "data/blob.bin"]);
    assert_eq!(
        std::fs::read(f.node_dir().join("data/blob.bin")).unwrap(),
        b"short"
    );

    f.ok(&["fs", "rm", "data/blob.bin"]);
    f.ok(&["fs", "rm", "data"]);
    assert!(!f.node_dir().join("data").exists());
    let out = f.out(&["fs", "get", "../outside", "-"]);
    assert!(!out.status.success());
}
