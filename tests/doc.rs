//! `moat doc` end to end: a project's unix node (the shared satellite's
//! firmware and its build's `docs.json`), documented while it runs (the
//! firmware it runs, then a module replaced by `moat diff-update`), when
//! it is down (the latest build, said so), `moat cmd … --help`, the mux's
//! own commands and `mux.doc` through a running mux.

use moat_e2e::{moat, run_ok, satellite_project, temp_project, TempProject};
use serde_json::Value as Json;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// A project with node `demo` on its own TCP port, holding the shared
/// satellite's build (firmware, record.json, docs.json), flashed; the node
/// and a mux once started, stopped on drop (also when a test fails).
struct Fixture {
    project: TempProject,
    port: u16,
    runtime: tempfile::TempDir,
    node: Option<Child>,
    mux: Option<Child>,
}

impl Fixture {
    fn new() -> Fixture {
        let satellite = satellite_project().expect("the shared firmware builds");
        let project = temp_project("unix").expect("moat init");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let manifest = project.path().join("moat.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let text: Vec<String> = text
            .lines()
            .map(|l| match l.find("port = ") {
                Some(at) if l.starts_with("link = ") => {
                    let rest = l[at + 7..].trim_start_matches(|c: char| c.is_ascii_digit());
                    format!("{}{port}{rest}", &l[..at + 7])
                }
                _ => l.to_owned(),
            })
            .collect();
        std::fs::write(&manifest, text.join("\n") + "\n").unwrap();
        // The satellite is `moat init`'s scaffold too: the same firmware.
        let from = satellite.join(".moat/build/demo");
        let to = project.path().join(".moat/build/demo");
        std::fs::create_dir_all(to.join("firmware")).unwrap();
        for f in ["record.json", "docs.json", "firmware/micropython"] {
            std::fs::copy(from.join(f), to.join(f))
                .unwrap_or_else(|e| panic!("{}: {e}", from.join(f).display()));
        }
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

    fn moat(&self, args: &[&str]) -> Command {
        let mut c = moat(self.root());
        c.args(args)
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env_remove("MOAT_SOCKET");
        c
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.runtime.path().join(name)).unwrap_or_default()
    }

    fn spawn(&self, args: &[&str], log: &str) -> Child {
        let log = std::fs::File::create(self.runtime.path().join(log)).unwrap();
        self.moat(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("moat starts")
    }

    /// `moat run` until the node's port answers.
    fn start(&mut self) {
        self.node = Some(self.spawn(&["run"], "node.log"));
        let end = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(s) = self.node.as_mut().unwrap().try_wait().unwrap() {
                panic!("moat run ended ({s}):\n{}", self.log("node.log"));
            }
            assert!(
                Instant::now() < end,
                "node did not listen:\n{}",
                self.log("node.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `moat mux` until `moat cmd ping` answers through its socket.
    fn start_mux(&mut self) {
        self.mux = Some(self.spawn(&["mux"], "mux.log"));
        let end = Instant::now() + WAIT;
        loop {
            let out = self.out(&["cmd", "mux", "info", "--json"]);
            if out.status.success() && self.out(&["cmd", "ping"]).status.success() {
                return;
            }
            if let Some(s) = self.mux.as_mut().unwrap().try_wait().unwrap() {
                panic!("moat mux ended ({s}):\n{}", self.log("mux.log"));
            }
            assert!(Instant::now() < end, "no mux:\n{}", self.log("mux.log"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops a child as Ctrl-C/SIGTERM would, and waits for it.
    fn stop(child: &mut Child, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        let end = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_node(&mut self) {
        if let Some(mut c) = self.node.take() {
            Fixture::stop(&mut c, "-INT");
        }
    }

    fn out(&self, args: &[&str]) -> Output {
        self.moat(args).output().expect("moat runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = run_ok(&mut self.moat(args)).unwrap_or_else(|e| panic!("{e:#}"));
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Json {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut c) = self.mux.take() {
            Fixture::stop(&mut c, "-TERM");
        }
        self.stop_node();
    }
}

fn params(doc: &Json) -> Vec<(String, Json)> {
    doc["command"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p["default"].clone()))
        .collect()
}

#[test]
fn doc_documents_what_the_node_runs_its_built_ins_and_the_mux() {
    let mut f = Fixture::new();
    f.start();

    // An app command, from the firmware the node runs.
    let text = f.ok(&["doc", "demo", "c.add"]);
    assert!(text.starts_with("demo c.add(n=1)\n"), "{text}");
    assert!(
        text.contains("Add `n` to the count; returns the new count."),
        "{text}"
    );
    assert!(text.contains("in the firmware the node runs"), "{text}");
    assert!(text.contains("streams: no stream of its own"), "{text}");
    let add = f.json(&["doc", "demo", "c.add", "--json"]);
    assert_eq!(add["basis"], "node", "{add}");
    assert_eq!(add["class"], "counter.Counter");
    assert_eq!(add["module"]["from"], "firmware");
    assert_eq!(params(&add), [("n".to_owned(), Json::from("1"))]);
    assert_eq!(add["command"]["stream"], false);
    assert_eq!(add["notes"], Json::Array(vec![]), "{add}");
    let get = f.json(&["doc", "c.get", "--json"]);
    assert_eq!(get["command"]["stream"], true, "{get}");
    assert_eq!(get["command"]["doc"], "The current count.");

    // `moat cmd … --help` is the same doc.
    assert_eq!(f.ok(&["cmd", "demo", "c.add", "--help"]), text);
    let verb_help = f.ok(&["cmd", "--help"]);
    assert!(verb_help.contains("Usage: moat cmd"), "{verb_help}");

    // Built-ins, from the runtime's own sources.
    let info = f.json(&["doc", "demo", "sys.info", "--json"]);
    assert_eq!(info["class"], "sys_app.Sys", "{info}");
    assert!(
        info["command"]["doc"]
            .as_str()
            .unwrap()
            .contains("runtime version"),
        "{info}"
    );
    let r = f.json(&["doc", "demo", "cfg.r", "--json"]);
    assert_eq!(params(&r), [("p".to_owned(), Json::from("()"))]);
    let mods = f.json(&["doc", "demo", "sys.up.mods", "--json"]);
    assert_eq!(mods["class"], "update.Update", "{mods}");

    // The whole node, one line a command.
    let all = f.ok(&["doc", "demo"]);
    for line in [
        "c.get [stream]",
        "c.add ",
        "sys.info ",
        "cfg.r ",
        "ping ",
        "sys.up.mods ",
    ] {
        assert!(all.contains(line), "{line:?} missing:\n{all}");
    }
    let bad = f.out(&["doc", "demo", "c.nope"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no such command"),
        "{bad:?}"
    );

    // The mux's own commands need no mux.
    let ls = f.ok(&["doc", "mux", "ls"]);
    assert!(
        ls.starts_with("mux ls()\n") && ls.contains("streams: yes"),
        "{ls}"
    );

    // Through a running mux: `mux.doc` answers what `moat doc --json` does.
    f.start_mux();
    let via = f.json(&["cmd", "mux", "doc", "p=[demo, c, add]", "--json"]);
    assert_eq!(via, add, "mux.doc differs from moat doc --json");
    let via_mux = f.json(&["cmd", "mux", "doc", "p=[mux, console]", "--json"]);
    assert_eq!(via_mux["command"]["name"], "console", "{via_mux}");
    let no = f.out(&["cmd", "mux", "doc", "p=[demo, nope]"]);
    assert!(!no.status.success(), "{no:?}");
    if let Some(mut c) = f.mux.take() {
        Fixture::stop(&mut c, "-TERM");
    }

    // A module replaced by diff-update: documented from the uploaded source.
    let counter = f.root().join("apps/counter.py");
    let src = std::fs::read_to_string(&counter).unwrap();
    let changed = src.replace(
        "\"\"\"Add `n` to the count; returns the new count.\"\"\"",
        "\"\"\"Add `n` (new doc).\"\"\"",
    );
    assert_ne!(src, changed, "the scaffold's counter changed");
    std::fs::write(&counter, changed).unwrap();
    run_ok(&mut f.moat(&["diff-update"])).expect("moat diff-update");
    let add2 = f.json(&["doc", "demo", "c.add", "--json"]);
    assert_eq!(add2["command"]["doc"], "Add `n` (new doc).", "{add2}");
    assert_eq!(add2["module"]["from"], "override", "{add2}");
    assert_eq!(add2["module"]["file"], "counter.py", "{add2}");
    assert_eq!(add2["notes"], Json::Array(vec![]), "{add2}");

    // The node down: the latest build, said so.
    f.stop_node();
    let offline = f.ok(&["doc", "demo", "c.add"]);
    assert!(offline.contains("Add `n` to the count"), "{offline}");
    assert!(offline.contains("note: node not reached"), "{offline}");
    let j = f.json(&["doc", "demo", "c.add", "--json", "--offline"]);
    assert_eq!(j["basis"], "build");
    assert_eq!(j["module"]["from"], "build");
}

/// `moat build` writes docs.json next to its record.
#[test]
fn build_keeps_docs_next_to_its_record() {
    let satellite: PathBuf = satellite_project().expect("the shared firmware builds");
    let docs: Json = serde_json::from_slice(
        &std::fs::read(satellite.join(".moat/build/demo/docs.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(docs["format"], 1);
    assert_eq!(docs["target"], "demo");
    let counter = &docs["modules"]["counter"];
    assert_eq!(counter["hash"].as_str().unwrap().len(), 16, "{counter}");
    assert!(
        counter["classes"]["Counter"]["cmds"]["get"]["stream"] == true,
        "{counter}"
    );
    assert!(docs["modules"]["sys_app"]["classes"]["Sys"].is_object());
    let record: Json = serde_json::from_slice(
        &std::fs::read(satellite.join(".moat/build/demo/record.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        record["inputs"]["modules"]["counter"], counter["hash"],
        "docs.json's hashes are the _hash table's"
    );
}
