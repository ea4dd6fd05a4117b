//! `moat mux` end to end: real unix-port satellites (built by `moat build`,
//! installed by `moat flash`) run as process nodes under a `moat mux`
//! child process; clients talk to it over its Unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use moat_e2e::{copy_dir, moat, run_ok};
use mux_runtime::endpoint::{Endpoint, Notice};
use mux_runtime::error::WellKnown;
use mux_runtime::message::path;
use mux_runtime::Value;
use tokio::time::timeout;

/// Bounds a failure; a working setup never comes near it.
const PATIENCE: Duration = Duration::from_secs(20);

/// A test app written into each node's folder (a filesystem module).
const TAPP: &str = r#"
import asyncio
from app import App


class T(App):
    def cmd_say(self, m=""):
        print(m)
        return m

    def cmd_who(self):
        return self.root.cfg.get("who")

    async def cmd_nap(self, ms=60000):
        await asyncio.sleep_ms(ms)
        return ms

    async def cmd_ask(self, p):
        # a request up the node's link, resolved from the mux root
        return await self.root.call(p)
"#;

fn kw(pairs: &[(&str, Value)]) -> Value {
    Value::map(pairs.iter().map(|(k, v)| (*k, v.clone())))
}

/// A temporary project with unix nodes on process links, flashed, and a
/// `moat mux` serving it.
struct MuxProject {
    _dir: tempfile::TempDir,
    root: PathBuf,
    socket: PathBuf,
    mux: Child,
    /// `moat run` of the TCP nodes.
    runners: Vec<Child>,
}

impl MuxProject {
    /// Runs `start` when the firmware can be built here; `None` (the test
    /// returns, said on stderr) when build tools are missing outside CI.
    fn needs_tools(start: impl FnOnce() -> anyhow::Result<MuxProject>) -> Option<MuxProject> {
        moat_e2e::build_tools_present().then(|| start().unwrap())
    }

    /// Process nodes `names` share the satellite's firmware (built once
    /// per test process by `moat build`); each is flashed with `moat flash`.
    fn start(names: &[&str]) -> anyhow::Result<MuxProject> {
        MuxProject::start_with(names, &[], "", "")
    }

    /// Like [`start`](MuxProject::start), plus nodes on TCP links that
    /// `moat run` starts (the mux connects to them).
    /// `extra_apps` is added inside every node's `apps = { … }` (starting
    /// with a comma), `extra_config` to its config table.
    fn start_with(
        names: &[&str],
        tcp_names: &[&str],
        extra_apps: &str,
        extra_config: &str,
    ) -> anyhow::Result<MuxProject> {
        moat_e2e::unix_satellite()?;
        let sat = moat_e2e::satellite_project()?;
        let dir = tempfile::Builder::new().prefix("moat-mux-").tempdir()?;
        let root = dir.path().join("proj");
        copy_dir(&sat.join("apps"), &root.join("apps"))?;
        let mut toml = String::from(
            "[project]\nname = \"muxe2e\"\n[micropython]\nversion = \"1.25.0\"\n[apps]\npaths = [\"apps\"]\n",
        );
        let links = names
            .iter()
            .map(|n| (*n, "{ kind = \"process\" }".to_owned()))
            .chain(tcp_names.iter().map(|n| {
                let port = moat_e2e::node::free_port();
                (
                    *n,
                    format!("{{ kind = \"tcp\", host = \"127.0.0.1\", port = {port} }}"),
                )
            }))
            .collect::<Vec<_>>();
        for (name, link) in &links {
            toml.push_str(&format!(
                "[nodes.{name}]\nboard = \"unix\"\nlink = {link}\n\
                 [nodes.{name}.config]\napps = {{ fs = \"fs.Files\", c = \"counter.Counter\", t = \"tapp.T\"{extra_apps} }}\n\
                 c = {{ step = 1, ms = 20 }}\nwho = \"{name}\"\n{extra_config}\n"
            ));
        }
        std::fs::write(root.join("moat.toml"), toml)?;
        // The satellite's build serves every node: same board, same apps.
        let built = sat.join(".moat/build/demo");
        for (name, _) in &links {
            let to = root.join(".moat/build").join(name);
            copy_dir(&built.join("firmware"), &to.join("firmware"))?;
            std::fs::copy(built.join("record.json"), to.join("record.json"))?;
        }
        for (name, _) in &links {
            // before flashing: the build checks the apps it names
            let dir = root.join(".moat/nodes").join(name);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("tapp.py"), TAPP)?;
        }
        run_ok(moat(&root).arg("flash"))?;
        let runners = tcp_names
            .iter()
            .map(|n| {
                moat(&root)
                    .args(["run", "--node", n])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting moat run")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let socket = dir.path().join("mux.sock");
        let mux = moat(&root)
            .args(["mux", "--socket"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting moat mux")?;
        let project = MuxProject {
            _dir: dir,
            root,
            socket,
            mux,
            runners,
        };
        project.wait_for_socket()?;
        Ok(project)
    }

    fn wait_for_socket(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "moat mux did not open {}",
                self.socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    async fn client(&self) -> Endpoint {
        Endpoint::connect_unix(&self.socket).await.unwrap()
    }

    /// `mux.ls` entry of `node`.
    async fn ls(&self, client: &Endpoint, node: &str) -> Value {
        let ls = client.call(["mux", "ls"], Value::Nil).await.unwrap();
        ls.get(node).cloned().expect("node listed by mux.ls")
    }

    /// Waits until every node's link is up.
    async fn wait_up(&self, client: &Endpoint, nodes: &[&str]) {
        timeout(PATIENCE, async {
            loop {
                let ls = client.call(["mux", "ls"], Value::Nil).await.unwrap();
                if nodes
                    .iter()
                    .all(|n| ls.get(n).and_then(|i| i.get("state")) == Some(&"up".into()))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("every node's link comes up");
    }

    /// SIGTERM to the mux; waits for it to exit.
    fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.mux.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.mux.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "moat mux ignores SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MuxProject {
    fn drop(&mut self) {
        if self.mux.try_wait().ok().flatten().is_none() {
            self.stop();
        }
        for runner in &mut self.runners {
            // SAFETY: kill(2) of our own child; `moat run` passes it on.
            unsafe { libc::kill(runner.id() as i32, libc::SIGTERM) };
            let _ = runner.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_clients_mixing_requests_and_streams_see_only_their_own_answers() {
    let Some(p) = MuxProject::needs_tools(|| MuxProject::start(&["pump"])) else {
        return;
    };
    let first = p.client().await;
    p.wait_up(&first, &["pump"]).await;
    let mut jobs = Vec::new();
    for id in 0..50i64 {
        let c = p.client().await;
        jobs.push(tokio::spawn(async move {
            let mine = kw(&[("m", id.into())]);
            for _ in 0..3 {
                let got = c.call(["pump", "ping"], mine.clone()).await.unwrap();
                assert_eq!(got, mine, "client {id} got another's reply");
            }
            let items: Vec<_> = c
                .stream(["pump", "ping"], mine.clone(), 20)
                .take(3)
                .collect()
                .await;
            assert_eq!(items, vec![Ok(mine.clone()); 3], "client {id}'s stream");
            let got = c.call(["pump", "ping"], mine.clone()).await.unwrap();
            assert_eq!(got, mine);
        }));
    }
    for job in jobs {
        timeout(PATIENCE, job).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_client_disconnecting_mid_stream_has_it_cancelled_on_the_node() {
    let Some(p) = MuxProject::needs_tools(|| MuxProject::start(&["pump"])) else {
        return;
    };
    let watcher = p.client().await;
    p.wait_up(&watcher, &["pump"]).await;
    let c = p.client().await;
    let mut st = c.stream(["pump", "c", "get"], Value::Nil, 10);
    for _ in 0..3 {
        assert!(timeout(PATIENCE, st.next()).await.unwrap().unwrap().is_ok());
    }
    drop(st);
    drop(c);
    // Once the cancellation arrived the node sends nothing more: its
    // message count stands still (the counter alone would change every 20 ms).
    let count = |info: Value| info.get("messages_in").and_then(Value::as_int).unwrap();
    let mut last = count(p.ls(&watcher, "pump").await);
    let settled = timeout(PATIENCE, async {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = count(p.ls(&watcher, "pump").await);
            if now == last {
                return;
            }
            last = now;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "the node kept streaming after the client left"
    );
}

#[tokio::test]
async fn killing_a_node_fails_its_requests_with_lnkerr_and_the_link_comes_back() {
    let Some(p) = MuxProject::needs_tools(|| MuxProject::start(&["pump"])) else {
        return;
    };
    let c = p.client().await;
    p.wait_up(&c, &["pump"]).await;
    let mut notices = c.notices();
    let pid = p
        .ls(&c, "pump")
        .await
        .get("pid")
        .and_then(Value::as_int)
        .unwrap();
    let mut st = c.stream(["pump", "c", "get"], Value::Nil, 10);
    assert!(timeout(PATIENCE, st.next()).await.unwrap().unwrap().is_ok());
    let napping = tokio::spawn(c.call(["pump", "t", "nap"], Value::Nil));
    // SAFETY: kill(2) of the node process the mux started for this test.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let failed = timeout(PATIENCE, async {
        while let Some(item) = st.next().await {
            if let Err(e) = item {
                return e;
            }
        }
        panic!("the stream ended without an error");
    })
    .await
    .unwrap();
    assert_eq!(failed.kind(), Some(WellKnown::LinkDown));
    let failed = timeout(PATIENCE, napping)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(
        failed.kind(),
        Some(WellKnown::LinkDown),
        "the pending call fails too"
    );
    let down = Notice {
        path: path(["pump", "link"]),
        data: Value::Bool(false),
    };
    timeout(PATIENCE, async {
        while notices.recv().await.unwrap() != down {}
    })
    .await
    .expect("clients are told the link is down");
    p.wait_up(&c, &["pump"]).await;
    let info = p.ls(&c, "pump").await;
    assert!(info.get("reconnects").and_then(Value::as_int).unwrap() >= 1);
    assert_ne!(
        info.get("pid").and_then(Value::as_int),
        Some(pid),
        "a new process"
    );
    let pong = c
        .call(["pump", "ping"], kw(&[("m", "back".into())]))
        .await
        .unwrap();
    assert_eq!(pong, kw(&[("m", "back".into())]));
}

#[tokio::test]
async fn two_nodes_under_one_mux_answer_by_name() {
    let Some(p) = MuxProject::needs_tools(|| MuxProject::start(&["pump", "valve"])) else {
        return;
    };
    let c = p.client().await;
    p.wait_up(&c, &["pump", "valve"]).await;
    for node in ["pump", "valve"] {
        let who = c.call([node, "t", "who"], Value::Nil).await.unwrap();
        assert_eq!(who, Value::from(node));
    }
    let err = c.call(["nope", "ping"], Value::Nil).await.unwrap_err();
    assert_eq!(err.kind(), Some(WellKnown::NoPath));
    // pump's app asks valve through the mux root, over pump's own link.
    let p = Value::Array(vec!["valve".into(), "t".into(), "who".into()]);
    let got = c.call(["pump", "t", "ask"], kw(&[("p", p)])).await.unwrap();
    assert_eq!(got, Value::from("valve"));
}

#[tokio::test]
async fn moat_mux_refuses_a_project_whose_process_node_is_not_flashed() {
    let project = moat_e2e::temp_project("unix").unwrap();
    let manifest = project.path().join("moat.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let start = text.find("link = {").unwrap();
    let end = start + text[start..].find("}\n").unwrap();
    let text = format!(
        "{}link = {{ kind = \"process\" }}{}",
        &text[..start],
        &text[end + 1..]
    );
    std::fs::write(&manifest, text).unwrap();
    let mut mux = project
        .moat()
        .args(["mux", "--socket"])
        .arg(project.path().join("x.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = mux.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = mux.kill();
            panic!("moat mux started without the node's firmware installed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut mux.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("moat flash"), "stderr: {err}");
}

#[tokio::test]
async fn console_output_and_requests_share_the_stdio_link() {
    let Some(p) = MuxProject::needs_tools(|| MuxProject::start(&["pump"])) else {
        return;
    };
    let c = p.client().await;
    p.wait_up(&c, &["pump"]).await;
    let said = c
        .call(
            ["pump", "t", "say"],
            kw(&[("m", "hello from the node".into())]),
        )
        .await
        .unwrap();
    assert_eq!(said, "hello from the node".into());
    let text = timeout(PATIENCE, async {
        loop {
            let got = c
                .call(["mux", "console"], kw(&[("n", "pump".into())]))
                .await
                .unwrap();
            let Value::Bin(bytes) = got else {
                panic!("console is bytes, got {got:?}")
            };
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if text.contains("hello from the node") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the print reaches the console capture");
    assert!(!text.contains("moat: stdio ready"));
    // And the link still answers requests afterwards.
    assert!(c.call(["pump", "sys", "info"], Value::Nil).await.is_ok());
}

#[tokio::test]
async fn moat_cmd_gives_the_same_output_directly_and_through_the_mux() {
    let Some(p) = MuxProject::needs_tools(|| MuxProject::start_with(&[], &["tnode"], "", ""))
    else {
        return;
    };
    let c = p.client().await;
    p.wait_up(&c, &["tnode"]).await;
    let cmd = |via_mux: bool| {
        let mut cmd = moat(&p.root);
        cmd.arg("cmd");
        if via_mux {
            cmd.arg("--socket").arg(&p.socket);
        } else {
            cmd.arg("--direct");
        }
        cmd.args(["tnode", "t.say", "m=hi there"]);
        cmd
    };
    let via_mux = run_ok(&mut cmd(true)).unwrap();
    let direct = run_ok(&mut cmd(false)).unwrap();
    assert!(
        String::from_utf8_lossy(&via_mux.stdout).contains("hi there"),
        "{via_mux:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&via_mux.stdout),
        String::from_utf8_lossy(&direct.stdout)
    );
    let json = |mut c: std::process::Command| {
        let out = run_ok(c.arg("--json")).unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(json(cmd(true)), json(cmd(false)));
}

#[tokio::test]
async fn the_watchdog_feeder_keeps_a_node_with_a_wdt_section_alive() {
    // t = 2 s, started by the first sys.wdt (s = 0), no grace period: a
    // node nobody feeds exits two seconds after that first keepalive.
    let Some(p) = MuxProject::needs_tools(|| {
        MuxProject::start_with(
            &["pump"],
            &[],
            ", wdt = \"wdt.Watchdog\"",
            "wdt = { t = 2, s = 0, n = -1 }",
        )
    }) else {
        return;
    };
    let c = p.client().await;
    p.wait_up(&c, &["pump"]).await;
    let on = |state: Value| state.get("on") == Some(&Value::Bool(true));
    timeout(PATIENCE, async {
        while !on(c.call(["pump", "wdt", "state"], Value::Nil).await.unwrap()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the feeder's sys.wdt started the watchdog");
    // Two timeouts later the node still runs on its first process.
    let pid = p.ls(&c, "pump").await.get("pid").cloned();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let info = p.ls(&c, "pump").await;
    assert_eq!(info.get("state"), Some(&"up".into()));
    assert_eq!(info.get("reconnects"), Some(&Value::from(0u64)));
    assert_eq!(info.get("pid").cloned(), pid);
    assert!(on(c
        .call(["pump", "wdt", "state"], Value::Nil)
        .await
        .unwrap()));
}

#[tokio::test]
async fn the_socket_is_private_and_removed_when_the_mux_stops() {
    let Some(mut p) = MuxProject::needs_tools(|| MuxProject::start(&["pump"])) else {
        return;
    };
    let mode = std::fs::metadata(&p.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second mux on the same socket is refused, naming the socket.
    let second = moat(&p.root)
        .args(["mux", "--socket"])
        .arg(&p.socket)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already serving"), "stderr: {err}");
    let status = p.stop();
    assert!(
        status.success(),
        "moat mux exits cleanly on SIGTERM: {status}"
    );
    assert!(!p.socket.exists(), "the socket is removed");
}
