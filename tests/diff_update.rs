//! `moat diff-update` and `moat cfg upload` against a real unix-port
//! satellite: the firmware `moat build` made for the shared satellite
//! project (node `demo`, app `c` = `counter.Counter`, `fs`), copied into a
//! private project per test so its apps can change, installed with `moat
//! flash` and run as a process on a free TCP port. The node's folder is
//! its filesystem, so the tests can look at what landed there.

use moat_e2e::node::free_port;
use moat_e2e::{build_tools_present, copy_dir, json_lines, moat, run_ok, satellite_project};
use mux_runtime::msgpack::{self, Limits};
use mux_runtime::Value;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// A private copy of the satellite project with its node running.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// The port `moat` connects to (the node's, or a proxy's).
    port: u16,
    /// The port the node listens on.
    node_port: u16,
    node: Option<Child>,
    original_counter: String,
}

impl Fixture {
    /// `None` (after saying why) when the build tools are missing outside CI.
    fn new() -> Option<Fixture> {
        Fixture::with_proxy(false)
    }

    /// With `proxied`, the node listens on a port of its own and `moat`
    /// talks to [`Fixture::port`], where a test puts a proxy.
    fn with_proxy(proxied: bool) -> Option<Fixture> {
        Fixture::with(proxied, None)
    }

    /// `message_limit`: the node's link takes messages of at most this
    /// many bytes (its `m`).
    fn with(proxied: bool, message_limit: Option<u32>) -> Option<Fixture> {
        if !build_tools_present() {
            return None;
        }
        let sat = satellite_project().expect("the shared satellite project builds");
        let dir = tempfile::Builder::new()
            .prefix("moat-du-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("proj");
        copy_dir(&sat.join("apps"), &root.join("apps")).unwrap();
        let build = sat.join(".moat/build/demo");
        let mine = root.join(".moat/build/demo");
        copy_dir(&build.join("firmware"), &mine.join("firmware")).unwrap();
        std::fs::copy(build.join("record.json"), mine.join("record.json")).unwrap();
        let port = free_port();
        let node_port = if proxied { free_port() } else { port };
        let toml = with_port(
            &std::fs::read_to_string(sat.join("moat.toml")).unwrap(),
            port,
        );
        assert!(toml.contains(&format!("port = {port}")), "{toml}");
        // The proxied tests damage bytes in flight to reach the upload's
        // hash check; on an authenticated link the damaged message would
        // be dropped before that (tests/trust.rs covers it), so theirs is
        // an unauthenticated loopback link.
        let toml = if proxied {
            let at = format!("port = {port} }}");
            assert!(toml.contains(&at), "{toml}");
            toml.replace(&at, &format!("port = {port}, auth = false }}"))
        } else {
            toml
        };
        std::fs::write(root.join("moat.toml"), toml).unwrap();
        let original_counter = std::fs::read_to_string(root.join("apps/counter.py")).unwrap();
        let mut f = Fixture {
            _dir: dir,
            root,
            port,
            node_port,
            node: None,
            original_counter,
        };
        run_ok(&mut f.moat(&["flash"])).unwrap();
        // The node's config on another port when proxied; the fallback
        // config (used after a kill) the same as the normal one, so a
        // restarted node serves `fs` again.
        let mut cfg = f.node_config();
        if proxied {
            set_tcp(&mut cfg, "p", node_port.into());
        }
        if let Some(m) = message_limit {
            set_tcp(&mut cfg, "m", m.into());
        }
        let bytes = msgpack::to_vec(&cfg);
        std::fs::write(f.node_dir().join("moat.cfg"), &bytes).unwrap();
        std::fs::write(f.node_dir().join("moat_fb.cfg"), &bytes).unwrap();
        f.start();
        Some(f)
    }

    fn node_dir(&self) -> PathBuf {
        self.root.join(".moat/nodes/demo")
    }

    fn node_config(&self) -> Value {
        let b = std::fs::read(self.node_dir().join("moat.cfg")).unwrap();
        msgpack::decode_exact(&b, &Limits::default()).unwrap()
    }

    /// `moat ARGS` in the project (never through some other mux).
    fn moat(&self, args: &[&str]) -> Command {
        let mut c = moat(&self.root);
        c.args(args).env_remove("MOAT_SOCKET");
        c
    }

    /// `moat diff-update --direct --json EXTRA`: status and the JSON object.
    fn diff_update(&self, extra: &[&str]) -> (Output, serde_json::Value) {
        let mut args = vec!["diff-update", "--direct", "--json"];
        args.extend(extra);
        let out = self.moat(&args).output().unwrap();
        let json = json_lines(&out.stdout)
            .ok()
            .and_then(|v| v.into_iter().last())
            .unwrap_or(serde_json::Value::Null);
        (out, json)
    }

    fn diff_update_ok(&self, extra: &[&str]) -> serde_json::Value {
        let (out, json) = self.diff_update(extra);
        assert!(
            out.status.success(),
            "diff-update failed: {}\n{}\nnode console:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.console()
        );
        json
    }

    /// `moat cmd --direct PATH ARGS --json` → the value (or the failure).
    fn cmd(&self, path: &str, args: &[&str]) -> Result<serde_json::Value, String> {
        let mut a = vec!["cmd", "--direct", "--json", path];
        a.extend(args);
        let out = self.moat(&a).output().unwrap();
        if !out.status.success() {
            return Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    fn start(&mut self) {
        assert!(self.node.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.node_dir().join("console.log"))
            .unwrap();
        let child = Command::new(self.node_dir().join("micropython"))
            .args(["-X", "heapsize=256k", "-m", "main"])
            .current_dir(self.node_dir())
            .env_remove("MICROPYPATH")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.node = Some(child);
        let end = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.node_port)).is_err() {
            assert!(
                Instant::now() < end,
                "the node does not listen:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a power cut as far as the node can tell.
    fn kill(&mut self) {
        if let Some(mut c) = self.node.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.node_dir().join("console.log")).unwrap_or_default()
    }

    fn write_app(&self, name: &str, text: &str) {
        std::fs::write(self.root.join("apps").join(name), text).unwrap();
    }

    fn node_file(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.node_dir().join(name)).ok()
    }

    /// Files on the node whose name ends in `suffix`.
    fn node_files_ending(&self, suffix: &str) -> Vec<String> {
        std::fs::read_dir(self.node_dir())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(suffix))
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.kill();
    }
}

fn set_tcp(cfg: &mut Value, key: &str, v: Value) {
    let Value::Map(top) = cfg else {
        panic!("config is a map")
    };
    let link = &mut top
        .iter_mut()
        .find(|(k, _)| k.as_str() == Some("link"))
        .unwrap()
        .1;
    let Value::Map(kinds) = link else {
        panic!("link is a map")
    };
    let tcp = &mut kinds
        .iter_mut()
        .find(|(k, _)| k.as_str() == Some("tcp"))
        .unwrap()
        .1;
    let Value::Map(tcp) = tcp else {
        panic!("tcp is a map")
    };
    tcp.retain(|(k, _)| k.as_str() != Some(key));
    tcp.push((key.into(), v));
}

/// The counter app with an extra command `ver` answering `v`.
fn counter_v(original: &str, v: u32) -> String {
    format!("{original}\n    def cmd_ver(self):\n        return {v}\n")
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn changed_module_alone_goes_up_then_nothing_then_the_revert_deletes_it() {
    let Some(f) = Fixture::new() else { return };
    // Nothing changed since the build: nothing to send.
    let j = f.diff_update_ok(&[]);
    assert_eq!(names(&j["uploaded"]), Vec::<String>::new());
    assert_eq!(j["bytes_sent"], 0);
    assert!(
        f.cmd("c.ver", &[]).is_err(),
        "the frozen counter has no ver"
    );

    let new = counter_v(&f.original_counter, 2);
    f.write_app("counter.py", &new);
    let j = f.diff_update_ok(&[]);
    assert_eq!(names(&j["uploaded"]), vec!["counter"]);
    assert_eq!(names(&j["deleted"]), Vec::<String>::new());
    assert_eq!(j["restart"], "apps");
    assert_eq!(names(&j["apps"]), vec!["c"]);
    let sent = j["bytes_sent"].as_u64().unwrap();
    assert!(
        sent >= new.len() as u64,
        "{sent} bytes for a {}-byte module",
        new.len()
    );
    assert!(
        sent < 4 * new.len() as u64 + 2000,
        "{sent} bytes for a {}-byte module",
        new.len()
    );
    assert!(j["unchanged"].as_u64().unwrap() > 10);
    assert_eq!(f.node_file("counter.py").as_deref(), Some(new.as_bytes()));
    assert_eq!(f.cmd("c.ver", &[]).unwrap(), 2);
    assert!(f.node_files_ending(".moat-tmp").is_empty());

    // Again: nothing is sent.
    let j = f.diff_update_ok(&[]);
    assert_eq!(names(&j["uploaded"]), Vec::<String>::new());
    assert_eq!(names(&j["deleted"]), Vec::<String>::new());
    assert_eq!(j["bytes_sent"], 0);

    // Back to the frozen version: the override goes.
    f.write_app("counter.py", &f.original_counter);
    let j = f.diff_update_ok(&[]);
    assert_eq!(names(&j["uploaded"]), Vec::<String>::new());
    assert_eq!(names(&j["deleted"]), vec!["counter"]);
    assert!(f.node_file("counter.py").is_none());
    let err = f.cmd("c.ver", &[]).unwrap_err();
    assert!(err.contains("no such command"), "{err}");
    assert!(f.cmd("c.get", &[]).is_ok());
}

#[test]
fn added_module_goes_up_and_removed_goes_away_while_user_files_stay() {
    let Some(f) = Fixture::new() else { return };
    std::fs::write(f.node_dir().join("mine.py"), "X = 1\n").unwrap();
    std::fs::write(f.node_dir().join("data.bin"), b"\x00\x01").unwrap();
    f.write_app("extra.py", "def seven():\n    return 7\n");
    let j = f.diff_update_ok(&[]);
    assert_eq!(names(&j["uploaded"]), vec!["extra"]);
    assert_eq!(
        f.node_file("extra.py").as_deref(),
        Some(&b"def seven():\n    return 7\n"[..])
    );
    assert_eq!(
        f.cmd("sys.up.load", &["m=[extra]"]).unwrap(),
        serde_json::json!({})
    );

    std::fs::remove_file(f.root.join("apps/extra.py")).unwrap();
    let j = f.diff_update_ok(&[]);
    assert_eq!(names(&j["uploaded"]), Vec::<String>::new());
    assert_eq!(names(&j["deleted"]), vec!["extra"]);
    assert!(f.node_file("extra.py").is_none());
    assert!(
        f.node_file("moat.upd").is_none(),
        "the ledger is empty again"
    );
    // The user's files are not the project's business.
    assert_eq!(f.node_file("mine.py").as_deref(), Some(&b"X = 1\n"[..]));
    assert_eq!(f.node_file("data.bin").as_deref(), Some(&b"\x00\x01"[..]));
    assert!(f.cmd("c.get", &[]).is_ok());
}

#[test]
fn small_messages_split_the_module_table_and_the_upload() {
    // No build record: the host cannot name the frozen table, so the node
    // sends all of it, in parts of at most 300 bytes.
    let Some(f) = Fixture::with(false, Some(300)) else {
        return;
    };
    std::fs::remove_file(f.root.join(".moat/build/demo/record.json")).unwrap();
    let new = big_counter(&f.original_counter, 11);
    f.write_app("counter.py", &new);
    let j = f.diff_update_ok(&[]);
    assert_eq!(names(&j["uploaded"]), vec!["counter"]);
    assert!(
        j["query_bytes"].as_u64().unwrap() > 60,
        "several parts asked for: {j}"
    );
    assert_eq!(f.node_file("counter.py").as_deref(), Some(new.as_bytes()));
    assert_eq!(f.cmd("c.ver", &[]).unwrap(), 11);
    let j = f.diff_update_ok(&[]);
    assert_eq!(names(&j["uploaded"]), Vec::<String>::new());
}

#[test]
fn dry_run_shows_the_plan_and_sends_nothing() {
    let Some(f) = Fixture::new() else { return };
    f.write_app("counter.py", &counter_v(&f.original_counter, 3));
    let out = run_ok(&mut f.moat(&["diff-update", "--direct", "--dry-run"])).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("counter") && text.contains("upload counter.py"),
        "{text}"
    );
    assert!(f.node_file("counter.py").is_none());
    let j = f.diff_update_ok(&["--dry-run"]);
    assert_eq!(names(&j["uploaded"]), vec!["counter"]);
    assert_eq!(j["bytes_sent"], 0);
    assert!(f.node_file("counter.py").is_none());
}

#[test]
fn mpy_upload_replaces_the_py_and_the_other_way_round() {
    let Some(f) = Fixture::new() else { return };
    f.write_app("counter.py", &counter_v(&f.original_counter, 4));
    f.diff_update_ok(&[]);
    assert!(f.node_file("counter.py").is_some());

    f.write_app("counter.py", &counter_v(&f.original_counter, 5));
    let j = f.diff_update_ok(&["--mpy"]);
    assert_eq!(names(&j["uploaded"]), vec!["counter"]);
    assert!(f.node_file("counter.py").is_none(), "the stale .py goes");
    let mpy = f.node_file("counter.mpy").expect("counter.mpy uploaded");
    assert_eq!(mpy[0], b'M', "an .mpy file");
    assert_eq!(f.cmd("c.ver", &[]).unwrap(), 5);
    // The same again: nothing to do.
    let j = f.diff_update_ok(&["--mpy"]);
    assert_eq!(names(&j["uploaded"]), Vec::<String>::new());

    // Without --mpy: the source again, the .mpy goes.
    let j = f.diff_update_ok(&[]);
    assert_eq!(names(&j["uploaded"]), vec!["counter"]);
    assert!(f.node_file("counter.mpy").is_none());
    assert!(f.node_file("counter.py").is_some());
    assert_eq!(f.cmd("c.ver", &[]).unwrap(), 5);
}

#[test]
fn reboot_flag_restarts_the_node_which_then_runs_the_new_module() {
    let Some(f) = Fixture::new() else { return };
    f.write_app("counter.py", &counter_v(&f.original_counter, 9));
    let j = f.diff_update_ok(&["--reboot"]);
    assert_eq!(names(&j["uploaded"]), vec!["counter"]);
    assert_eq!(j["restart"], "reboot");
    assert_eq!(f.cmd("c.ver", &[]).unwrap(), 9);
    // A unix node run outside the mux is restarted in place, not ended.
    assert!(
        f.console().matches("tcp server on").count() >= 2,
        "{}",
        f.console()
    );
}

#[test]
fn works_through_the_mux_with_the_links_byte_count() {
    let Some(f) = Fixture::new() else { return };
    let sock = f.root.join("mux.sock");
    let mut mux = f
        .moat(&["mux", "--socket", sock.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + WAIT;
    while !sock.exists() {
        assert!(Instant::now() < end, "the mux does not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let new = counter_v(&f.original_counter, 6);
    f.write_app("counter.py", &new);
    let out = f
        .moat(&["diff-update", "--json", "--socket", sock.to_str().unwrap()])
        .output()
        .unwrap();
    let via_mux = f
        .moat(&["cmd", "--json", "--socket", sock.to_str().unwrap(), "c.ver"])
        .output()
        .unwrap();
    mux.kill().ok();
    mux.wait().ok();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json_lines(&out.stdout).unwrap().pop().unwrap();
    assert_eq!(names(&j["uploaded"]), vec!["counter"]);
    let sent = j["bytes_sent"].as_u64().unwrap();
    assert!(
        sent >= new.len() as u64,
        "{sent} bytes counted on the node's link"
    );
    assert_eq!(String::from_utf8_lossy(&via_mux.stdout).trim(), "6");
    assert_eq!(f.cmd("c.ver", &[]).unwrap(), 6);
}

#[test]
fn cfg_upload_replaces_the_config_and_restarts_the_apps() {
    let Some(f) = Fixture::new() else { return };
    let toml = std::fs::read_to_string(f.root.join("moat.toml")).unwrap();
    let changed = toml.replace("step = 1", "step = 5");
    assert_ne!(toml, changed, "the satellite config sets c.step");
    std::fs::write(f.root.join("moat.toml"), changed).unwrap();
    let before = f.node_file("moat.cfg").unwrap();

    let out = run_ok(&mut f.moat(&["cfg", "upload", "--direct", "--dry-run", "--json"])).unwrap();
    let j = json_lines(&out.stdout).unwrap().pop().unwrap();
    assert_eq!(j["changes"], serde_json::json!(["~ c.step: 1 -> 5"]));
    assert_eq!(j["uploaded"], false);
    assert_eq!(f.node_file("moat.cfg").unwrap(), before);

    // The fallback config goes up with it (a stale one would come back
    // after the next crash).
    std::fs::remove_file(f.node_dir().join("moat_fb.cfg")).unwrap();
    let out = run_ok(&mut f.moat(&["cfg", "upload", "--direct", "--json"])).unwrap();
    let j = json_lines(&out.stdout).unwrap().pop().unwrap();
    assert_eq!(j["uploaded"], true);
    assert_eq!(j["restart"], "apps");
    let fallback =
        msgpack::decode_exact(&f.node_file("moat_fb.cfg").unwrap(), &Limits::default()).unwrap();
    assert!(fallback.get("link").is_some(), "{fallback:?}");
    let now = msgpack::decode_exact(&f.node_file("moat.cfg").unwrap(), &Limits::default()).unwrap();
    assert_eq!(
        now.get("c").and_then(|c| c.get("step")),
        Some(&Value::from(5))
    );
    assert_eq!(f.cmd("cfg.r", &["p=[c, step]"]).unwrap(), 5);
    assert!(f.cmd("c.get", &[]).is_ok(), "the app runs again");
    let out = run_ok(&mut f.moat(&["cfg", "upload", "--direct", "--json"])).unwrap();
    let j = json_lines(&out.stdout).unwrap().pop().unwrap();
    assert_eq!(j["uploaded"], false, "nothing to do the second time");
}

#[test]
fn cfg_upload_without_an_fs_app_saves_the_running_config() {
    let Some(f) = Fixture::new() else { return };
    let toml = std::fs::read_to_string(f.root.join("moat.toml")).unwrap();
    let no_fs = toml.replace("fs = \"fs.Files\", ", "");
    assert_ne!(toml, no_fs, "the satellite runs fs");
    std::fs::write(f.root.join("moat.toml"), &no_fs).unwrap();
    // Through fs: the new config has no fs app any more.
    run_ok(&mut f.moat(&["cfg", "upload", "--direct"])).unwrap();
    let err = f.cmd("fs.ls", &[]).unwrap_err();
    assert!(err.contains("no such app"), "{err}");
    // Now without fs: cfg.w + cfg.s.
    std::fs::write(
        f.root.join("moat.toml"),
        no_fs.replace("step = 1", "step = 3"),
    )
    .unwrap();
    let out = run_ok(&mut f.moat(&["cfg", "upload", "--direct", "--json"])).unwrap();
    let j = json_lines(&out.stdout).unwrap().pop().unwrap();
    assert_eq!(j["changes"], serde_json::json!(["~ c.step: 1 -> 3"]));
    assert_eq!(j["uploaded"], true);
    let now = msgpack::decode_exact(&f.node_file("moat.cfg").unwrap(), &Limits::default()).unwrap();
    assert_eq!(
        now.get("c").and_then(|c| c.get("step")),
        Some(&Value::from(3))
    );
    assert_eq!(f.cmd("cfg.r", &["p=[c, step]"]).unwrap(), 3);
}

/// A small deterministic generator (the seed is printed on failure).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// A counter module of about 24 KB (many chunks) answering `ver` = `v`.
fn big_counter(original: &str, v: u32) -> String {
    let mut s = counter_v(original, v);
    for k in 0..400 {
        s.push_str(&format!(
            "# padding line {k:04} of version {v:04}, to make the upload long\n"
        ));
    }
    s
}

fn sha(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

#[test]
fn node_killed_during_uploads_always_imports_the_old_or_the_new_module() {
    let Some(mut f) = Fixture::new() else { return };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Lcg(seed);
    let tmp = f.node_dir().join("counter.py.moat-tmp");
    // One run measured: how long it takes, and how long its temporary
    // file is on the node (the upload).
    f.write_app("counter.py", &big_counter(&f.original_counter, 0));
    let t0 = Instant::now();
    let mut du = f
        .moat(&["diff-update", "--direct", "--json"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (mut seen, mut gone) = (None, None);
    while du.try_wait().unwrap().is_none() {
        match (tmp.exists(), seen) {
            (true, None) => seen = Some(t0.elapsed()),
            (false, Some(_)) if gone.is_none() => gone = Some(t0.elapsed()),
            _ => {}
        }
        assert!(t0.elapsed() < WAIT, "the measured run hangs");
        std::thread::sleep(Duration::from_millis(1));
    }
    let full = t0.elapsed().as_millis() as u64;
    let upload = match (seen, gone) {
        (Some(a), Some(b)) => (b - a).as_millis() as u64,
        _ => 20,
    };
    assert_eq!(f.cmd("c.ver", &[]).unwrap(), 0);
    let test_end = Instant::now() + Duration::from_secs(240);
    let (mut interrupted, mut mid_upload) = (0, 0);
    for round in 1..=20u32 {
        assert!(
            Instant::now() < test_end,
            "the kill test overran (seed {seed})"
        );
        let old = f.node_file("counter.py");
        let new = big_counter(&f.original_counter, round);
        f.write_app("counter.py", &new);
        let started = Instant::now();
        let started_at = std::time::SystemTime::now();
        let mut du = f
            .moat(&["diff-update", "--direct", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if round % 2 == 0 {
            // Anywhere in the run.
            std::thread::sleep(Duration::from_millis(rng.below(full + 50)));
        } else {
            // Within the upload: once its temporary file is there.
            let fresh = || {
                std::fs::metadata(&tmp)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= started_at)
            };
            while !fresh() && started.elapsed() < WAIT && du.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(rng.below(upload + 1)));
        }
        // This run's temporary file (not a leftover of an earlier one).
        let partial = std::fs::metadata(&tmp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= started_at);
        f.kill();
        let end = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = du.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > end {
                du.kill().ok();
                panic!("diff-update hangs after the node died (round {round}, seed {seed})");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            interrupted += 1;
            if partial {
                mid_upload += 1;
            }
        }
        // What the node has is one whole version: the old or the new.
        let have = f.node_file("counter.py");
        let ok = have.as_deref().map(sha) == old.as_deref().map(sha)
            || have.as_deref().map(sha) == Some(sha(new.as_bytes()));
        assert!(
            ok,
            "round {round} (seed {seed}): counter.py is neither the old nor the new version ({:?} bytes)",
            have.map(|h| h.len())
        );
        f.start();
        // Every module imports.
        let failed = f
            .cmd("sys.up.load", &["m=[counter, app, fs, cfg, root, proto]"])
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): {e}"));
        assert_eq!(failed, serde_json::json!({}), "round {round} (seed {seed})");
    }
    // Afterwards one run brings the node up to date and leaves no litter.
    let j = f.diff_update_ok(&[]);
    assert_eq!(
        f.node_file("counter.py").map(|b| sha(&b)),
        Some(sha(big_counter(&f.original_counter, 20).as_bytes())),
        "{j}"
    );
    assert!(f.node_files_ending(".moat-tmp").is_empty());
    assert_eq!(f.cmd("c.ver", &[]).unwrap(), 20);
    eprintln!(
        "kill test: {interrupted}/20 runs interrupted, {mid_upload} with a partial upload on the node (seed {seed}, run {full} ms, upload {upload} ms)"
    );
    assert!(
        mid_upload > 0,
        "no kill landed in the middle of an upload (seed {seed}, upload {upload} ms)"
    );
}

/// Forwards `listen` → 127.0.0.1:`to`, replacing the first `times`
/// occurrences of `from` by `into` in what the client sends.
fn corrupting_proxy(listen: u16, to: u16, from: &'static [u8], into: &'static [u8], times: usize) {
    let l = TcpListener::bind(("127.0.0.1", listen)).unwrap();
    let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(times));
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let Ok(mut n) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            let (mut c2, mut n2) = (c.try_clone().unwrap(), n.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut n2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
            let left = left.clone();
            std::thread::spawn(move || {
                let mut held: Vec<u8> = vec![];
                let mut buf = [0u8; 4096];
                loop {
                    let k = match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => k,
                    };
                    held.extend_from_slice(&buf[..k]);
                    while let Some(at) = held.windows(from.len()).position(|w| w == from) {
                        if left.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                            break;
                        }
                        left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        held[at..at + into.len()].copy_from_slice(into);
                    }
                    // Keep back what could be the start of the marker.
                    let keep = (1..from.len())
                        .rev()
                        .find(|&j| held.len() >= j && from.starts_with(&held[held.len() - j..]))
                        .unwrap_or(0);
                    let send = held.len() - keep;
                    if n.write_all(&held[..send]).is_err() {
                        break;
                    }
                    held.drain(..send);
                }
                let _ = n.shutdown(std::net::Shutdown::Both);
            });
        }
    });
}

#[test]
fn damaged_upload_is_sent_again_and_refused_when_it_stays_damaged() {
    let Some(f) = Fixture::with_proxy(true) else {
        return;
    };
    corrupting_proxy(f.port, f.node_port, b"CORRUPT-ME", b"CORRUPT-MF", 1);
    let new = format!("# CORRUPT-ME\n{}", counter_v(&f.original_counter, 7));
    f.write_app("counter.py", &new);
    let j = f.diff_update_ok(&[]);
    assert_eq!(names(&j["uploaded"]), vec!["counter"]);
    assert_eq!(j["retries"], 1, "the damaged copy was sent again");
    assert_eq!(f.node_file("counter.py").as_deref(), Some(new.as_bytes()));
    assert_eq!(f.cmd("c.ver", &[]).unwrap(), 7);
}

#[test]
fn upload_that_stays_damaged_is_reported_and_the_node_keeps_its_module() {
    let Some(f) = Fixture::with_proxy(true) else {
        return;
    };
    corrupting_proxy(
        f.port,
        f.node_port,
        b"CORRUPT-ME",
        b"CORRUPT-MF",
        usize::MAX,
    );
    let new = format!("# CORRUPT-ME\n{}", counter_v(&f.original_counter, 8));
    f.write_app("counter.py", &new);
    let (out, j) = f.diff_update(&[]);
    assert!(!out.status.success(), "a damaged upload must fail: {j}");
    let err = j["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(err.contains("damaged"), "{err}");
    assert!(
        f.node_file("counter.py").is_none(),
        "the frozen counter stays"
    );
    assert!(f.node_files_ending(".moat-tmp").is_empty());
    assert!(f.cmd("c.get", &[]).is_ok());
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
