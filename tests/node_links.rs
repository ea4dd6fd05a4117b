//! Node-to-node links (issue 15 §3): two unix-port satellites under one
//! `moat mux` (process links), node `a` with a `client` link to node `b`'s
//! TCP server. `root.call` picks the link by destination: a path whose
//! first element names the peer goes over the direct link (the rest of the
//! path), anything else up to the mux. Both ways, across a restart of
//! either node, while the mux talks to both.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::Context;
use moat_e2e::{copy_dir, moat, run_ok};
use mux_runtime::endpoint::Endpoint;
use mux_runtime::Value;
use tokio::time::timeout;

/// Bounds a failure; a working setup never comes near it (a client link
/// backs off up to seconds while its peer restarts).
const PATIENCE: Duration = Duration::from_secs(60);

/// The shared key of both nodes: a `client` link authenticates with the
/// connecting node's own key, which its peer must hold (docs/auth.md).
const KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// The test app of both nodes (a filesystem module).
const LAPP: &str = r#"
import asyncio
from app import App


class L(App):
    def cmd_who(self):
        return self.root.cfg.get("who")

    def cmd_via(self):
        # the peer node this request came from over a direct link, or
        # None when it came from the host (the mux)
        t = asyncio.current_task()
        for l in self.root.links:
            for v in l.peer.values():
                if v is t:
                    return getattr(l, "pn", None)
        return "?"

    async def cmd_ask(self, p):
        return await self.root.call(p)
"#;

/// Nodes `a` and `b` on process links under a `moat mux`; `a`'s client
/// link connects to `b`'s TCP server.
struct Pair {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    mux: Child,
}

impl Pair {
    fn start() -> anyhow::Result<Pair> {
        let sat = moat_e2e::satellite_project()?;
        let dir = tempfile::Builder::new().prefix("moat-links-").tempdir()?;
        let root = dir.path().join("proj");
        copy_dir(&sat.join("apps"), &root.join("apps"))?;
        let port = moat_e2e::node::free_port();
        let toml = format!(
            "[project]\nname = \"links\"\n[micropython]\nversion = \"1.25.0\"\n[apps]\npaths = [\"apps\"]\n\
             [nodes.a]\nboard = \"unix\"\nlink = {{ kind = \"process\" }}\n\
             [nodes.a.config]\napps = {{ l = \"lapp.L\" }}\nwho = \"a\"\n\
             [nodes.a.config.link]\nclient = {{ h = \"127.0.0.1\", p = {port}, n = \"b\" }}\n\
             [nodes.b]\nboard = \"unix\"\nlink = {{ kind = \"process\" }}\n\
             [nodes.b.config]\napps = {{ l = \"lapp.L\" }}\nwho = \"b\"\n\
             [nodes.b.config.link]\ntcp = {{ h = \"127.0.0.1\", p = {port} }}\n"
        );
        std::fs::write(root.join("moat.toml"), toml)?;
        let built = sat.join(".moat/build/demo");
        for name in ["a", "b"] {
            let to = root.join(".moat/build").join(name);
            copy_dir(&built.join("firmware"), &to.join("firmware"))?;
            std::fs::copy(built.join("record.json"), to.join("record.json"))?;
        }
        for name in ["a", "b"] {
            // before flashing: the build checks the apps it names
            let dir = root.join(".moat/nodes").join(name);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("lapp.py"), LAPP)?;
        }
        run_ok(keyed(&mut moat(&root)).arg("flash"))?;
        let socket = dir.path().join("mux.sock");
        let mux = keyed(&mut moat(&root))
            .args(["mux", "--socket"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting moat mux")?;
        let pair = Pair {
            _dir: dir,
            socket,
            mux,
        };
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::os::unix::net::UnixStream::connect(&pair.socket).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "moat mux never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(pair)
    }

    async fn client(&self) -> Endpoint {
        Endpoint::connect_unix(&self.socket).await.unwrap()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child; the mux stops its nodes.
        unsafe { libc::kill(self.mux.id() as i32, libc::SIGTERM) };
        let _ = self.mux.wait();
    }
}

/// Both nodes get the same key (see [`KEY`]).
fn keyed(cmd: &mut std::process::Command) -> &mut std::process::Command {
    cmd.env("MOAT_KEY_A", KEY).env("MOAT_KEY_B", KEY)
}

fn s(v: &str) -> Value {
    Value::from(v)
}

fn ask(path: &[&str]) -> Value {
    Value::map([(
        "p",
        Value::Array(path.iter().map(|p| Value::from(*p)).collect()),
    )])
}

/// Calls `[node, l, ask]` with `path` until it answers `want`: the first
/// answers may come before the direct link is up (or back), or before its
/// peer said who it is.
async fn until(c: &Endpoint, node: &str, path: &[&str], want: Value) {
    let last = std::sync::Mutex::new(None);
    let got = timeout(PATIENCE, async {
        loop {
            let r = c.call([node, "l", "ask"], ask(path)).await;
            if r.as_ref().ok() == Some(&want) {
                return;
            }
            *last.lock().unwrap() = Some(r);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if got.is_err() {
        let consoles = consoles(c).await;
        panic!(
            "{node} asking {path:?} never answered {want:?} within {PATIENCE:?}; last: {:?}{consoles}",
            last.lock().unwrap()
        );
    }
}

/// The nodes' console output the mux captured (for failure messages).
async fn consoles(c: &Endpoint) -> String {
    let mut out = String::new();
    for n in ["a", "b"] {
        let con = c
            .call(["mux", "console"], Value::map([("n", Value::from(n))]))
            .await;
        let text = match &con {
            Ok(Value::Bin(b)) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        };
        out.push_str(&format!("\n--- console of {n}:\n{text}"));
    }
    out
}

/// `c.call(path, args)`, which must answer `want`.
async fn expect(c: &Endpoint, path: [&str; 3], args: Value, want: Value) {
    match c.call(path, args).await {
        Ok(v) if v == want => {}
        other => panic!(
            "{path:?} answered {other:?}, not {want:?}{}",
            consoles(c).await
        ),
    }
}

/// Both directions over the direct link, and the mux reaching both.
async fn both_ways(c: &Endpoint) {
    // b sees the request come from a over the direct link (via: "a"),
    // not from the mux (via: None)
    until(c, "a", &["b", "l", "via"], s("a")).await;
    until(c, "b", &["a", "l", "via"], s("b")).await;
    expect(c, ["a", "l", "ask"], ask(&["b", "l", "who"]), s("b")).await;
    expect(c, ["b", "l", "ask"], ask(&["a", "l", "who"]), s("a")).await;
    // a path that names no peer goes up to the mux, which resolves it
    let ls = c
        .call(["a", "l", "ask"], ask(&["mux", "ls"]))
        .await
        .unwrap();
    assert!(ls.get("b").is_some(), "mux.ls through a: {ls:?}");
    // and the mux talks to both directly
    assert_eq!(c.call(["a", "l", "who"], Value::Nil).await.unwrap(), s("a"));
    assert_eq!(c.call(["b", "l", "who"], Value::Nil).await.unwrap(), s("b"));
    assert_eq!(
        c.call(["b", "l", "via"], Value::Nil).await.unwrap(),
        Value::Nil
    );
}

async fn pid(c: &Endpoint, node: &str) -> i32 {
    let ls = c.call(["mux", "ls"], Value::Nil).await.unwrap();
    ls.get(node)
        .and_then(|i| i.get("pid"))
        .and_then(Value::as_int)
        .expect("mux.ls gives the node's pid") as i32
}

/// Waits until the mux runs `node` in a process other than `old` (the old
/// one answers for a while after it was told to go: checking the link
/// before the new one runs would test the old process).
async fn restarted(c: &Endpoint, node: &str, old: i32) {
    let new = timeout(PATIENCE, async {
        loop {
            let ls = c.call(["mux", "ls"], Value::Nil).await.unwrap();
            let up = ls.get(node).and_then(|i| i.get("state")) == Some(&Value::from("up"));
            let pid = ls
                .get(node)
                .and_then(|i| i.get("pid"))
                .and_then(Value::as_int);
            if let (true, Some(p)) = (up, pid) {
                if p as i32 != old {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if new.is_err() {
        panic!(
            "{node} was not restarted within {PATIENCE:?}{}",
            consoles(c).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_call_each_other_over_a_client_link_across_restarts() {
    if !moat_e2e::build_tools_present() {
        return;
    }
    let pair = Pair::start().unwrap();
    let c = pair.client().await;
    both_ways(&c).await;

    // b (the server) restarts (a hard reset: the process ends, the mux
    // starts it again; a SIGKILL would look like a crash, and the node
    // would boot its fallback config, without the test app): a's client
    // link connects again, and b learns again that the link is a's
    let b = pid(&c, "b").await;
    c.call(["b", "sys", "boot"], Value::map([("m", Value::from(2))]))
        .await
        .unwrap();
    restarted(&c, "b", b).await;
    both_ways(&c).await;

    // a (the client) restarts (hard reset, as b above): its client link
    // connects again from the new process
    let a = pid(&c, "a").await;
    c.call(["a", "sys", "boot"], Value::map([("m", Value::from(2))]))
        .await
        .unwrap();
    restarted(&c, "a", a).await;
    both_ways(&c).await;

    // a soft reset of b (its runtime restarts in the same process)
    c.call(["b", "sys", "boot"], Value::map([("m", Value::from(1))]))
        .await
        .unwrap();
    both_ways(&c).await;
}
