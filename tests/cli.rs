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
    mux: Option<Child>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_link(None)
    }

    /// A project whose node uses `link` (a TOML inline table) instead of
    /// its own TCP port.
    fn with_link(link: Option<&str>) -> Fixture {
        let firmware = unix_satellite().expect("the shared firmware builds");
        let project = temp_project("unix").expect("moat init");
        let port = free_port();
        let manifest = project.path().join("moat.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(
            text.contains("link = { kind = \"tcp\""),
            "moat init's manifest changed:\n{text}"
        );
        let text = match link {
            None => with_port(&text, port),
            Some(link) => text
                .lines()
                .map(|l| {
                    if l.starts_with("link = ") {
                        format!("link = {link}")
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
        };
        std::fs::write(&manifest, text).unwrap();
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
            mux: None,
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

    /// The mux's default socket for this project (what clients find).
    fn socket(&self) -> PathBuf {
        let name = self
            .root()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let id = project_id(self.root());
        self.runtime
            .path()
            .join("moat")
            .join(format!("{name}-{id}.sock"))
    }

    /// `moat mux` in the background on the project's default socket,
    /// until `moat cmd ping` answers through it.
    fn start_mux(&mut self) {
        let log = std::fs::File::create(self.runtime.path().join("mux.log")).unwrap();
        let child = self
            .moat(&["mux"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("moat mux starts");
        self.mux = Some(child);
        let end = Instant::now() + WAIT;
        loop {
            if self.socket().exists() && self.out(&["cmd", "ping"]).status.success() {
                return;
            }
            if let Some(status) = self.mux.as_mut().unwrap().try_wait().unwrap() {
                panic!("moat mux ended ({status}):\n{}", self.mux_log());
            }
            assert!(
                Instant::now() < end,
                "no node answers through the mux:\n{}",
                self.mux_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn mux_log(&self) -> String {
        std::fs::read_to_string(self.runtime.path().join("mux.log")).unwrap_or_default()
    }

    /// Stops the mux as SIGTERM does; it must exit cleanly.
    fn stop_mux(&mut self) {
        let Some(mut child) = self.mux.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let end = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > end {
                let _ = child.kill();
                panic!("moat mux did not stop on SIGTERM:\n{}", self.mux_log());
            }
            std::thread::sleep(Duration::from_millis(20));
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
        if self.mux.is_some() && !std::thread::panicking() {
            self.stop_mux();
        } else if let Some(mut mux) = self.mux.take() {
            let _ = mux.kill();
            let _ = mux.wait();
        }
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
    // A failure on this side has the same shape, `type` null.
    let out = f.out(&["cmd", "--node", "nosuch", "ping", "--json"]);
    assert!(!out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["error"]["type"], serde_json::Value::Null, "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("nosuch"), "{json}");
    assert!(stderr(&out).contains(message), "{}", stderr(&out));

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

    // A subtree too big for one message comes from the node in parts;
    // `cfg get` fetches them and puts the whole together.
    let list: Vec<String> = (0..40).map(|i| format!("item{i:03}")).collect();
    let list_arg = format!("[{}]", list.join(", "));
    for k in ["a", "b", "c", "d", "e"] {
        f.ok(&["cfg", "set", &format!("big.{k}"), &list_arg]);
    }
    f.ok(&["cfg", "set", "big.n", "5"]);
    let raw = f.ok(&["cmd", "cfg.r", "p=[big]", "--json"]);
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        raw[0],
        serde_json::json!({"n": 5}),
        "the node answers in parts: {raw}"
    );
    let big: serde_json::Value =
        serde_json::from_str(&f.ok(&["cfg", "get", "big", "--json"])).unwrap();
    for k in ["a", "b", "c", "d", "e"] {
        assert_eq!(big[k], serde_json::json!(list), "{k}");
    }
    assert_eq!(big["n"], 5);
    let all: serde_json::Value = serde_json::from_str(&f.ok(&["cfg", "get", "--json"])).unwrap();
    assert_eq!(all["big"], big);
    assert_eq!(all["c"]["step"], 5);
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
    // --json: spelled-out keys, one document (docs/json.md)
    f.ok(&["fs", "mkdir", "data/sub"]);
    let ls: serde_json::Value =
        serde_json::from_str(&f.ok(&["fs", "ls", "-l", "data", "--json"])).unwrap();
    assert_eq!(
        ls,
        serde_json::json!([
            {"name": "blob.bin", "kind": "file", "size": data.len()},
            {"name": "sub", "kind": "dir", "size": 0},
        ])
    );
    let ls: serde_json::Value =
        serde_json::from_str(&f.ok(&["fs", "ls", "data", "--json"])).unwrap();
    assert_eq!(ls, serde_json::json!(["blob.bin", "sub"]));
    f.ok(&["fs", "rm", "data/sub"]);

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

#[test]
fn client_verbs_find_the_projects_mux_and_reach_a_process_node_through_it() {
    let mut f = Fixture::with_link(Some("{ kind = \"process\" }"));
    // Without the mux a process node cannot be reached; the error says
    // what to start.
    let out = f.out(&["cmd", "ping"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("moat mux"), "{}", stderr(&out));

    f.start_mux();
    assert!(f.socket().exists());
    assert_eq!(f.ok(&["cmd", "ping", "m=hi"]), "{m: hi}\n");
    assert_eq!(f.ok(&["cfg", "get", "c.step"]), "1\n");
    let scratch = tempfile::tempdir().unwrap();
    // About two thousand pipelined requests each way through the mux
    // (a reply lost on the way would hang the transfer).
    let mut x: u32 = 7;
    let data: Vec<u8> = (0..1_000_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    let local = scratch.path().join("d.bin");
    std::fs::write(&local, &data).unwrap();
    f.ok(&["fs", "put", local.to_str().unwrap(), "d.bin"]);
    assert_eq!(std::fs::read(f.node_dir().join("d.bin")).unwrap(), data);
    let back = scratch.path().join("back.bin");
    f.ok(&["fs", "get", "d.bin", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), data);
    // --direct skips the mux, --socket names it.
    assert!(!f.out(&["cmd", "--direct", "ping"]).status.success());
    let socket = f.socket();
    assert_eq!(
        f.ok(&["cmd", "--socket", socket.to_str().unwrap(), "ping", "m=s"]),
        "{m: s}\n"
    );
    // A named socket nobody serves is an error, not a silent fallback.
    let out = f.out(&["cmd", "--socket", "/nonexistent/moat.sock", "ping"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/moat.sock"),
        "{}",
        stderr(&out)
    );
    f.stop_mux();
}

#[test]
fn every_client_verb_prints_the_same_directly_and_through_the_mux() {
    let mut f = Fixture::new();
    f.start();
    f.ok(&["fs", "mkdir", "d"]);
    std::fs::write(f.node_dir().join("d/a.txt"), "hello").unwrap();
    let commands: &[&[&str]] = &[
        &["cmd", "ping", "m=[1, x]"],
        &["cmd", "ping", "m=hi", "--json"],
        &["cmd", "sys.dir"],
        &["cmd", "sys.nope"],
        &["cmd", "sys.nope", "--json"],
        &["cfg", "get", "c"],
        &["cfg", "get", "--json"],
        &["fs", "ls", "-l", "d"],
        &["fs", "get", "d/a.txt", "-"],
        &["fs", "get", "d/missing.txt", "-"],
    ];
    let run_all = |f: &Fixture, extra: &[&str]| -> Vec<(bool, String, String)> {
        commands
            .iter()
            .map(|c| {
                let mut args = c.to_vec();
                args.extend(extra);
                let out = f.out(&args);
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr(&out),
                )
            })
            .collect()
    };
    let direct = run_all(&f, &[]);
    f.start_mux();
    let via_mux = run_all(&f, &[]);
    let forced_direct = run_all(&f, &["--direct"]);
    for ((c, d), m) in commands.iter().zip(&direct).zip(&via_mux) {
        assert_eq!(d, m, "`moat {}` directly vs through the mux", c.join(" "));
    }
    assert_eq!(direct, forced_direct);
    // And the mux really carried them: its link to the node counted them.
    let ls: serde_json::Value =
        serde_json::from_str(&f.ok(&["cmd", "mux", "ls", "--json"])).unwrap();
    assert!(
        ls["demo"]["messages_out"].as_u64().unwrap() >= commands.len() as u64,
        "{ls}"
    );
    assert_eq!(ls["demo"]["state"], "up");
    f.stop_mux();
}

#[test]
fn monitor_shows_the_console_of_a_node_under_the_mux() {
    let mut f = Fixture::with_link(Some("{ kind = \"process\" }"));
    // A module on the node's filesystem that prints when imported, and an
    // app using it: its output is console output on the stdio link.
    std::fs::write(
        f.node_dir().join("talker.py"),
        "from app import App\n\n\nclass Talker(App):\n    def cmd_say(self, m):\n        print(m)\n        return m\n",
    )
    .unwrap();
    f.start_mux();
    f.ok(&["cfg", "set", "apps.tk", "talker.Talker"]);
    f.ok(&["cmd", "cfg.x", "p=[tk]"]);
    let mut monitor = f
        .moat(&["monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = monitor.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdout = stdout;
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let end = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let mut k = 0;
    while !String::from_utf8_lossy(&seen).contains("said 3") {
        assert!(
            Instant::now() < end,
            "monitor showed: {}",
            String::from_utf8_lossy(&seen)
        );
        if f.out(&["cmd", "tk.say", &format!("m=said {k}")])
            .status
            .success()
        {
            k += 1;
        }
        while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.extend(chunk);
        }
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    f.stop_mux();
}

#[test]
fn monitor_explains_that_a_tcp_link_carries_no_console() {
    let mut f = Fixture::new();
    f.start();
    let out = f.out(&["monitor"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no console output"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn demo_runs_the_whole_flow_and_exits_zero() {
    // Builds a project of its own (a minute or two the first time).
    let out = run_ok(moat(&std::env::temp_dir()).arg("demo")).expect("moat demo");
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in ["[5/5]", "$ moat cmd ping m=hello", "{m: hello}", "done"] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn run_passes_the_nodes_exit_status_on() {
    let mut f = Fixture::new();
    f.start();
    // A watchdog that starts at boot with no grace period: with nobody
    // sending `sys.wdt` the unix node ends itself with status 3.
    f.ok(&["cfg", "set", "wdt", "{t: 1, s: 1, n: -1}", "--save"]);
    assert_eq!(f.interrupt(), Some(0), "Ctrl-C ends the node cleanly");
    let mut run = f
        .moat(&["run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = run.kill();
            panic!("the node's watchdog did not end it");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status.code(),
        Some(3),
        "moat run exits with the node's status"
    );
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

/// Holds a process stopped (SIGSTOP) and lets it go on when dropped, also
/// when the test fails.
struct Paused(u32);

impl Paused {
    fn new(pid: u32) -> Paused {
        // SAFETY: plain signal to a pid this test started (its node).
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: as in new().
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// The pid of the node process `moat run` (pid `parent`) started.
fn node_pid(parent: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .expect("moat run's children");
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("moat run has started the node")
}

#[test]
fn an_oversized_request_fails_at_once_and_a_silent_node_is_named_after_the_timeout() {
    let mut f = Fixture::new();
    f.start();
    let big = format!("m={}", "x".repeat(1100));
    let oversized = |f: &Fixture| {
        let out = f.out(&["cmd", "ping", &big]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("request is 11")
                && err.contains(
                    "bytes; node `demo` accepts 1024: raise `m` on its link, or send less"
                ),
            "{err}"
        );
    };
    oversized(&f);
    assert_eq!(f.ok(&["cmd", "ping", "m=after"]), "{m: after}\n");
    // through the mux the mux's link to the node refuses it the same way
    f.start_mux();
    oversized(&f);
    assert_eq!(f.ok(&["cmd", "ping", "m=after"]), "{m: after}\n");
    // a node that stops answering: the call gives up after --timeout,
    // naming the node and the command
    let paused = Paused::new(node_pid(f.node.as_ref().unwrap().id()));
    let out = f.out(&["cmd", "ping", "--timeout", "0.5"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("node `demo` did not answer ping within 0.5 s"),
        "{err}"
    );
    drop(paused);
    assert_eq!(f.ok(&["cmd", "ping", "m=back"]), "{m: back}\n");
    let out = f.out(&["cmd", "ping", "--timeout", "soon"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`soon` is not a number of seconds"),
        "{}",
        stderr(&out)
    );
}
