//! The first hour of a new user (issue 15 §4): each failure a new user met,
//! reproduced with the real `moat` binary, against a real unix-port
//! satellite where a node is involved.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use moat_e2e::{copy_dir, moat, run_ok};

/// Bounds a failure; a working setup never comes near it.
const PATIENCE: Duration = Duration::from_secs(30);

/// A test app: an object MsgPack cannot carry (so it travels as a proxy)
/// and the node's proxy count.
const PAPP: &str = r#"
from app import App


class P(App):
    def cmd_obj(self):
        return self

    def cmd_npx(self):
        return len(self.root.px)
"#;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `moat ARGS` in `root` and returns its output, whatever the status.
fn moat_out(root: &Path, args: &[&str]) -> Output {
    moat(root).args(args).output().expect("run moat")
}

/// A copy of the shared satellite project (`moat init`'s scaffold: node
/// `demo`, unix, TCP) on a port of its own, flashed, with the test app.
struct Scaffold {
    _dir: tempfile::TempDir,
    root: PathBuf,
    children: Vec<Child>,
}

impl Scaffold {
    fn new() -> Option<Scaffold> {
        if !moat_e2e::build_tools_present() {
            return None;
        }
        let sat = moat_e2e::satellite_project().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("moat-1h-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("proj");
        copy_dir(&sat, &root).unwrap();
        let toml = std::fs::read_to_string(root.join("moat.toml")).unwrap();
        let port = moat_e2e::node::free_port();
        let toml: String = toml
            .lines()
            .map(|l| {
                if l.starts_with("link = ") {
                    format!("link = {{ kind = \"tcp\", host = \"127.0.0.1\", port = {port} }}\n")
                } else if l.starts_with("apps = ") {
                    "apps = { fs = \"fs.Files\", c = \"counter.Counter\", p = \"papp.P\" }\n"
                        .to_owned()
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(root.join("moat.toml"), toml).unwrap();
        let _ = std::fs::remove_dir_all(root.join(".moat/nodes"));
        // before flashing: the build checks the apps it names
        std::fs::create_dir_all(root.join(".moat/nodes/demo")).unwrap();
        std::fs::write(root.join(".moat/nodes/demo/papp.py"), PAPP).unwrap();
        run_ok(moat(&root).arg("flash")).unwrap();
        Some(Scaffold {
            _dir: dir,
            root,
            children: Vec::new(),
        })
    }

    /// `moat run` in the background, until a direct `ping` answers.
    fn run(&mut self) {
        let child = moat(&self.root)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.until(&["cmd", "--direct", "ping", "m=1"], "1");
    }

    /// Runs `moat ARGS` until it succeeds printing `want` (the node may
    /// still be booting), within [`PATIENCE`].
    fn until(&self, args: &[&str], want: &str) -> String {
        let t0 = Instant::now();
        loop {
            let out = moat_out(&self.root, args);
            let t = text(&out);
            if out.status.success() && t.contains(want) {
                return t;
            }
            assert!(
                t0.elapsed() < PATIENCE,
                "moat {args:?} never printed {want:?}: {t}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        text(&run_ok(moat(&self.root).args(args)).unwrap())
    }

    fn node_dir(&self) -> PathBuf {
        self.root.join(".moat/nodes/demo")
    }
}

impl Drop for Scaffold {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: kill(2) of our own child; `moat run` passes it on.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

// ---- without a node ---------------------------------------------------------

#[test]
fn moat_version_exits_zero() {
    let out = moat_out(Path::new("."), &["version"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("moat "));
}

#[test]
fn wire_decode_reads_stdin_with_a_dash() {
    let mut child = moat(Path::new("."))
        .args(["wire", "decode", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"81 a1 61 01\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // the vector notation of {"a": 1} (a map with a key "a" and 1)
    assert!(
        v.to_string().contains("\"a\"") && v.to_string().contains('1'),
        "{v}"
    );
}

#[test]
fn a_too_long_project_name_is_one_clear_error_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let name = "n".repeat(120);
    let out = moat_out(dir.path(), &["init", &name]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("--name"), "{t}");
    assert_eq!(t.matches("error").count(), 1, "{t}");
    assert!(!t.contains("SUN_LEN"), "{t}");
    assert!(!dir.path().join(&name).join("moat.toml").exists());
}

#[test]
fn global_dir_and_manifest_path_flags_find_the_project() {
    let dir = tempfile::tempdir().unwrap();
    run_ok(moat(dir.path()).args(["init", "proj"])).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let proj = dir.path().join("proj");
    let proj = proj.to_str().unwrap();
    for args in [
        vec!["-C", proj, "cfg", "upload", "--dry-run"],
        vec!["cfg", "upload", "--dry-run", "-C", proj],
        vec![
            "--manifest-path",
            &format!("{proj}/moat.toml"),
            "cfg",
            "upload",
            "--dry-run",
        ],
    ] {
        let out = moat_out(elsewhere.path(), &args);
        let t = text(&out);
        assert!(!t.contains("no moat.toml"), "{args:?}: {t}");
        assert!(t.contains("demo"), "{args:?}: {t}");
    }
    let out = moat_out(
        elsewhere.path(),
        &["--manifest-path", "nope.toml", "version"],
    );
    assert!(!out.status.success());
}

#[test]
fn emulated_scaffolds_name_their_socket_and_device_scaffolds_say_where_the_port_goes() {
    let dir = tempfile::tempdir().unwrap();
    for board in ["qemu-mps2", "rpi-pico"] {
        let root = dir.path().join(board);
        let out = run_ok(
            moat(dir.path())
                .arg("init")
                .arg(&root)
                .args(["--board", board]),
        )
        .unwrap();
        let toml = std::fs::read_to_string(root.join("moat.toml")).unwrap();
        assert!(
            toml.lines()
                .any(|l| l.starts_with("port = \"tcp:127.0.0.1:")),
            "{board}: {toml}"
        );
        assert!(
            !text(&out).contains("set the node's"),
            "{board}: {}",
            text(&out)
        );
    }
    for board in ["esp32", "esp8266"] {
        let root = dir.path().join(board);
        let out = run_ok(
            moat(dir.path())
                .arg("init")
                .arg(&root)
                .args(["--board", board]),
        )
        .unwrap();
        let toml = std::fs::read_to_string(root.join("moat.toml")).unwrap();
        let line = toml
            .lines()
            .position(|l| l.trim_start_matches("# ").starts_with("port = "))
            .expect("a port line")
            + 1;
        let t = text(&out);
        assert!(t.contains(&format!("moat.toml:{line}")), "{board}: {t}");
    }
}

#[test]
fn log_lines_carry_no_colours_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    run_ok(moat(dir.path()).args(["init", "proj"])).unwrap();
    let root = dir.path().join("proj");
    // the node is not running: the mux logs its link failing
    let log = dir.path().join("mux.log");
    let mut mux = moat(&root)
        .args(["mux", "--socket"])
        .arg(dir.path().join("m.sock"))
        .env("MOAT_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.contains("DEBUG") || t.contains("INFO") || t.contains("WARN") {
            break t;
        }
        assert!(t0.elapsed() < PATIENCE, "the mux logged nothing: {t}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(mux.id() as i32, libc::SIGTERM) };
    let _ = mux.wait();
    assert!(
        !text.contains('\x1b'),
        "ANSI escapes in a log file: {text:?}"
    );
}

// ---- with a node ------------------------------------------------------------

#[test]
fn cfg_set_of_a_new_app_with_restart_starts_it() {
    let Some(mut s) = Scaffold::new() else { return };
    s.run();
    let out = s.ok(&["cfg", "set", "apps.q", "papp.P", "--restart", "--direct"]);
    assert!(out.contains("app q restarted"), "{out}");
    s.until(&["cmd", "--direct", "q.npx"], "");
}

#[test]
fn fs_put_into_a_folder_concurrently_and_killed_leaves_no_part_file() {
    let Some(mut s) = Scaffold::new() else { return };
    s.run();
    let local = s.root.join("s.txt");
    std::fs::write(&local, b"hello").unwrap();
    let l = local.to_str().unwrap();
    s.ok(&["fs", "mkdir", "--direct", "dir"]);
    // a folder, with or without the slash: the file goes inside it
    s.ok(&["fs", "put", "--direct", l, "dir/"]);
    assert_eq!(
        std::fs::read(s.node_dir().join("dir/s.txt")).unwrap(),
        b"hello"
    );
    s.ok(&["fs", "put", "--direct", l, "dir"]);
    // empty paths: one clear error each, nothing sent
    for args in [
        vec!["fs", "put", "--direct", l, ""],
        vec!["fs", "rm", "--direct", ""],
    ] {
        let out = moat_out(&s.root, &args);
        assert!(!out.status.success());
        let t = text(&out);
        assert!(
            t.contains("give") && !t.contains("errno") && !t.contains("_OsErr"),
            "{t}"
        );
    }
    // two puts of one name at once both succeed; one of them wins whole
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let other: Vec<u8> = big.iter().map(|b| b ^ 0xff).collect();
    std::fs::write(s.root.join("a.bin"), &big).unwrap();
    std::fs::write(s.root.join("b.bin"), &other).unwrap();
    let puts: Vec<Child> = ["a.bin", "b.bin"]
        .iter()
        .map(|f| {
            moat(&s.root)
                .args(["fs", "put", "--direct", f, "same.bin"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in puts {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let got = std::fs::read(s.node_dir().join("same.bin")).unwrap();
    assert!(got == big || got == other, "a mix of two uploads");
    // a put killed mid-way: its temporary file goes with its link
    let huge: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(s.root.join("huge.bin"), &huge).unwrap();
    let mut put = moat(&s.root)
        .args(["fs", "put", "--direct", "huge.bin"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let parts = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".part"))
            .collect()
    };
    let t0 = Instant::now();
    while parts(&s.node_dir()).is_empty() {
        assert!(t0.elapsed() < PATIENCE, "the put never started");
        assert!(
            put.try_wait().unwrap().is_none(),
            "the put ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    put.kill().unwrap();
    let _ = put.wait();
    let t0 = Instant::now();
    while !parts(&s.node_dir()).is_empty() {
        assert!(
            t0.elapsed() < PATIENCE,
            "a killed put left {:?} on the node",
            parts(&s.node_dir())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(parts(&s.node_dir().join("dir")).is_empty());
}

#[test]
fn a_printed_proxy_pastes_back_and_a_clients_proxies_go_with_its_link() {
    let Some(mut s) = Scaffold::new() else { return };
    s.run();
    // one link: the proxy is made, printed, pasted back, released
    let out = s.ok(&["cmd", "--direct", "p.obj"]);
    let printed = out.trim().to_owned();
    assert!(printed.starts_with("Proxy("), "{printed}");
    // a direct link per moat run: when it closed, its proxy went with it
    s.until(&["cmd", "--direct", "p.npx"], "0");
    // pasting back: sys.unproxy takes the printed form (it was released
    // already, so the node says which proxy it does not know, by name)
    let out = moat_out(
        &s.root,
        &["cmd", "--direct", "sys.unproxy", &format!("p={printed}")],
    );
    let t = text(&out);
    assert!(
        !t.contains("'Proxy("),
        "the printed proxy was sent as a string: {t}"
    );
}

#[test]
fn flash_run_on_the_scaffold_starts_the_unix_node_with_the_mux() {
    let Some(mut s) = Scaffold::new() else { return };
    let sock = s.root.join("m.sock");
    let flash = moat(&s.root)
        .args(["flash", "--run"])
        .env("MOAT_SOCKET", &sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    s.children.push(flash);
    // through the mux (MOAT_SOCKET must answer)
    let t0 = Instant::now();
    loop {
        let out = moat(&s.root)
            .args(["cmd", "ping", "m=7"])
            .env("MOAT_SOCKET", &sock)
            .output()
            .unwrap();
        if out.status.success() && text(&out).contains('7') {
            break;
        }
        assert!(
            t0.elapsed() < PATIENCE,
            "the node never answered through the mux: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A bad `apps` entry, a class that is not there, or an app module that
/// does not compile: `moat build` and `moat diff-update` refuse before
/// anything reaches the node, naming the moat.toml entry or the file and
/// line; the running node keeps its apps.
#[test]
fn bad_apps_and_modules_are_refused_before_the_node_naming_where() {
    let Some(mut s) = Scaffold::new() else { return };
    s.run();
    let toml_path = s.root.join("moat.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    let line = toml
        .lines()
        .position(|l| l.starts_with("apps = "))
        .expect("an apps line")
        + 1;
    let refused = |args: &[&str], want: &[&str]| {
        let out = moat_out(&s.root, args);
        let t = text(&out);
        assert!(!out.status.success(), "moat {args:?} succeeded: {t}");
        for w in want {
            assert!(t.contains(w), "moat {args:?} does not say {w:?}: {t}");
        }
    };
    // A module no firmware has (with the near name offered).
    std::fs::write(
        &toml_path,
        toml.replace("counter.Counter", "countr.Counter"),
    )
    .unwrap();
    let at = format!("moat.toml:{line}:");
    refused(
        &["build"],
        &[
            &at,
            "nodes.demo.config.apps.c",
            "no module `countr`",
            "did you mean `counter`",
        ],
    );
    refused(&["diff-update"], &[&at, "no module `countr`"]);
    // A class the module does not define.
    std::fs::write(
        &toml_path,
        toml.replace("counter.Counter", "counter.Countr"),
    )
    .unwrap();
    refused(&["build"], &[&at, "defines no `Countr`"]);
    std::fs::write(&toml_path, &toml).unwrap();
    // An app module that does not compile: named with its line, nothing sent.
    let app = s.root.join("apps/counter.py");
    let good = std::fs::read_to_string(&app).unwrap();
    let bad_line = good.lines().count() + 2;
    std::fs::write(&app, format!("{good}\ndef broken(:\n    pass\n")).unwrap();
    let at = format!("apps/counter.py:{bad_line}: SyntaxError");
    refused(&["build"], &[&at]);
    refused(&["diff-update"], &[&at, "nothing was sent"]);
    // The node still runs its apps as they were.
    s.until(&["cmd", "--direct", "c.get"], "");
    std::fs::write(&app, good).unwrap();
    s.ok(&["diff-update"]);
}
