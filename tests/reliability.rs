//! Reliability: the promises of docs/protocol.md: Framing and the mux under faults.
//!
//! - A real unix-port satellite on a UART link (a pty pair with the fault
//!   proxy between node and host) answers every request exactly once while
//!   the proxy corrupts and drops frames.
//! - A node process killed mid-stream: clients of the mux see `_LnkErr`
//!   at once and the link comes back; a restarted mux serves fresh clients.
//! - Malformed input to the mux socket and to a node never crashes either.
//!
//! Every loop is bounded in count and time (see [`PATIENCE`]).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use moat_e2e::fault_proxy::{Direction, Faults, Framing, Rng, SerialProxy};
use moat_e2e::node::{kw, Node};
use moat_e2e::{back_to_back, copy_dir, moat, run_ok};
use mux_runtime::auth::AuthConfig;
use mux_runtime::endpoint::{Endpoint, NoHandler, Notice};
use mux_runtime::error::WellKnown;
use mux_runtime::framing::SerialPackerConfig;
use mux_runtime::link::{LinkOptions, LinkSpec, NodeLink, SerialSpec};
use mux_runtime::message::path;
use mux_runtime::{reliable, Value};
use tokio::time::timeout;

/// Bounds a failure; a working setup never comes near it.
const PATIENCE: Duration = Duration::from_secs(30);

/// A test app: `inc` counts the requests it ran, so a request run twice
/// (or lost) shows in the count.
const TAPP: &str = r#"
from app import App


class T(App):
    def __init__(self, cfg, name, root):
        super().__init__(cfg, name, root)
        self.n = 0

    def cmd_inc(self, m=""):
        self.n += 1
        return [self.n, m]

    def cmd_n(self):
        return self.n

    def cmd_say(self, m=""):
        print(m)
        return m
"#;

fn s(v: &str) -> Value {
    Value::from(v)
}

// ---------------------------------------------------------------------------
// Lossy serial link

/// Requests over the lossy UART. 10 000 is the aim; on 2 shared cores a
/// unix-port node over a pty does a few hundred round trips a second when
/// clean and far fewer under these faults, so the CI run uses this many
/// (override with `MOAT_RELIABILITY_REQUESTS`).
const SERIAL_REQUESTS: usize = 10_000;

fn serial_requests() -> usize {
    std::env::var("MOAT_RELIABILITY_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SERIAL_REQUESTS)
}

/// Host ↔ proxy ↔ node faults: 5 % of the frames get a corrupted byte and
/// 2 % are dropped, both ways; a few are duplicated or delayed too.
fn lossy() -> Faults {
    Faults {
        corrupt_frame: 0.05,
        drop_frame: 0.02,
        dup_frame: 0.01,
        delay_frame: 0.01,
        delay: Duration::from_millis(15),
        ..Faults::none()
    }
}

/// Retransmit after 100 ms (loopback: the round trip is a few ms), and
/// enough retries (6 s) that a busy CI machine starving the node for a
/// moment does not take the link down.
const RELIABLE_T_MS: u64 = 100;
const RELIABLE_RETRIES: u32 = 60;

/// [`RELIABLE_RETRIES`] unless `MOAT_RELIABILITY_RETRIES` says otherwise
/// (the bench's literal 5 % byte noise needs more; see bench/README.md).
fn reliable_retries() -> u32 {
    env_or("MOAT_RELIABILITY_RETRIES", RELIABLE_RETRIES)
}

/// One lossy-serial run at a time: two MicroPython nodes and four pumps on
/// two shared cores would measure the machine, not the link.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The key of the authenticated UART runs (node and host).
const KEY: [u8; 32] = [0x5a; 32];

fn serial_link(host_path: &str, auth: bool) -> NodeLink {
    let spec = SerialSpec {
        path: host_path.to_owned(),
        baud: 115_200,
        packer: SerialPackerConfig::default(),
        reliable: reliable::Config {
            window: 8,
            timeout_ms: RELIABLE_T_MS,
            retries: reliable_retries(),
        },
    };
    let options = LinkOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(5),
        ..LinkOptions::default()
    };
    let auth = auth.then(|| AuthConfig::new(vec![KEY], "sat", "5a7e", "lossy"));
    NodeLink::spawn_auth(
        "sat",
        LinkSpec::Serial(spec),
        auth,
        Arc::new(NoHandler),
        options,
    )
}

fn uart_node(port: &str, auth: bool) -> Node {
    let mut n = Node::new(256);
    n.write_file("tapp.py", TAPP);
    let uart = kw([
        ("port", s(port)),
        ("t", (RELIABLE_T_MS as i64).into()),
        ("r", i64::from(reliable_retries()).into()),
        ("a", auth.into()),
    ]);
    let identity = kw([
        ("k", Value::Bin(KEY.to_vec())),
        ("n", s("sat")),
        ("p", s("5a7e")),
        ("q", s("lossy")),
    ]);
    n.write_cfg(
        "moat.cfg",
        &kw([
            ("link", kw([("uart", uart)])),
            ("apps", kw([("t", s("tapp.T"))])),
            ("auth", identity),
        ]),
    );
    n.start();
    n
}

/// A payload of `len` bytes that names request `k`.
fn payload(k: usize, len: usize) -> String {
    let mut m = format!("{k}:");
    while m.len() < len {
        m.push((b'a' + (m.len() % 26) as u8) as char);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_uart_link_delivers_every_request_exactly_once() {
    lossy_run(lossy(), serial_requests(), 60, false).await;
}

/// The same with authentication on the link: sealed messages in the
/// serial form (docs/auth.md) above the reliable layer, whose
/// retransmissions and duplicates never reach the opener; none is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_lossy_uart_link_delivers_every_request_exactly_once() {
    lossy_run(lossy(), serial_requests() / 2, 40, true).await;
}

/// Byte-level line noise on top of lost frames. (5 % of *bytes* would
/// damage 87 % of the 40-byte frames a request needs and leave ~2 % of
/// round trips intact: no CRC-framed link carries that; see bench/README.md.)
///
/// `bench/run noisy-uart` runs the issue's literal condition through this
/// test with overrides (CI sets none): `MOAT_RELIABILITY_BYTE_RATE` (0.01),
/// `MOAT_RELIABILITY_NOISY_REQUESTS` (300), `MOAT_RELIABILITY_MAX_PAYLOAD`
/// (30 bytes), `MOAT_RELIABILITY_RETRIES` (60), and
/// `MOAT_RELIABILITY_BASELINE=1` for a fault-free run of the same requests
/// first. Each run prints a `reliability figure:` line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uart_link_with_noisy_bytes_and_lost_frames_delivers_exactly_once() {
    let faults = Faults {
        corrupt_byte: env_or("MOAT_RELIABILITY_BYTE_RATE", 0.01),
        drop_frame: 0.02,
        ..Faults::none()
    };
    let total = env_or("MOAT_RELIABILITY_NOISY_REQUESTS", 300);
    let max_len = env_or("MOAT_RELIABILITY_MAX_PAYLOAD", 30);
    if env_or("MOAT_RELIABILITY_BASELINE", 0) == 1 {
        lossy_run(Faults::none(), total, max_len, false).await;
    }
    lossy_run(faults, total, max_len, false).await;
}

/// `name`'s value from the environment, or `default` when it is unset.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value; unset it or fix it")),
        Err(_) => default,
    }
}

/// `total` requests (payloads up to `max_len` bytes) and a few streams
/// through a [`SerialProxy`] applying `faults` both ways; `auth`: the link
/// authenticates.
async fn lossy_run(faults: Faults, total: usize, max_len: usize, auth: bool) {
    let _one_at_a_time = SERIAL.lock().await;
    let proxy = SerialProxy::start(
        Direction::new(Framing::serial_packer(), faults),
        Direction::new(Framing::serial_packer(), faults),
        0x5EED,
    )
    .unwrap();
    let mut node = uart_node(proxy.node_path(), auth);
    let link = serial_link(proxy.host_path(), auth);
    let ep = timeout(PATIENCE, link.wait_up())
        .await
        .unwrap_or_else(|_| panic!("the UART link never came up:\n{}", node.console()))
        .unwrap();
    let workers = 6;
    let started = Instant::now();
    // A few streams run alongside the requests.
    let streams = {
        let ep = ep.clone();
        tokio::spawn(async move {
            let mut items = 0;
            for k in 0..5 {
                let d = kw([("m", s(&format!("stream {k}")))]);
                let mut st = ep.stream(["ping"], d.clone(), 30).take(4);
                while let Some(item) = st.next().await {
                    assert_eq!(item.expect("stream item"), d, "stream {k}");
                    items += 1;
                }
            }
            items
        })
    };
    let mut jobs = Vec::new();
    for w in 0..workers {
        let ep = ep.clone();
        jobs.push(tokio::spawn(async move {
            let mut counts = Vec::new();
            let mut k = w;
            while k < total {
                // Sizes 1..=60 bytes: the frame limit (127) leaves room for
                // the path, sequence numbers and the reliable layer's map.
                let m = payload(k, 1 + (k * 7) % max_len);
                let got = ep
                    .call(["t", "inc"], kw([("m", s(&m))]))
                    .await
                    .unwrap_or_else(|e| panic!("request {k} failed: {e}"));
                let Value::Array(v) = got else {
                    panic!("request {k}: not [n, m]: {got:?}")
                };
                assert_eq!(v[1], s(&m), "request {k} got another's answer");
                counts.push(v[0].as_int().expect("count"));
                k += workers;
            }
            counts
        }));
    }
    let mut seen = BTreeSet::new();
    let mut answers = 0;
    for job in jobs {
        let counts = match timeout(Duration::from_secs(150), job).await {
            Ok(Ok(counts)) => counts,
            Ok(Err(e)) => panic!(
                "{e}\nproxy to node {:?}\nto host {:?}\nnode console:\n{}",
                proxy.to_node(),
                proxy.to_host(),
                node.console()
            ),
            Err(_) => panic!("requests stalled:\n{}", node.console()),
        };
        answers += counts.len();
        seen.extend(counts);
    }
    let stream_items = timeout(PATIENCE, streams).await.unwrap().unwrap();
    let elapsed = started.elapsed();
    let (up, down) = (proxy.to_node(), proxy.to_host());
    // One line for bench/run (the noisy-uart row): frames counts every
    // frame either side sent (retransmissions and acks included).
    eprintln!(
        "reliability figure: corrupt_byte={} corrupt_frame={} drop_frame={} retries={} requests={total} \
         completed={answers} lost={} duplicated={} elapsed_s={:.2} round_trips_per_s={:.1} \
         frames_to_node={} frames_to_host={} bytes_to_node={} bytes_to_host={} \
         corrupted_bytes={} corrupted_frames={} dropped_frames={} reconnects={}",
        faults.corrupt_byte,
        faults.corrupt_frame,
        faults.drop_frame,
        reliable_retries(),
        total.saturating_sub(seen.len()),
        answers - seen.len(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        up.frames,
        down.frames,
        up.bytes_in,
        down.bytes_in,
        up.corrupted_bytes + down.corrupted_bytes,
        up.corrupted_frames + down.corrupted_frames,
        up.dropped_frames + down.dropped_frames,
        link.stats().reconnects,
    );
    assert_eq!(
        answers,
        seen.len(),
        "a count seen twice: a request ran twice"
    );
    // Every count 1..=total exactly once: nothing lost, nothing run twice.
    assert_eq!(seen.len(), total);
    assert_eq!(seen.first(), Some(&1));
    assert_eq!(seen.last(), Some(&(total as i128)));
    let n = ep.call(["t", "n"], Value::Nil).await.unwrap();
    assert_eq!(n.as_int(), Some(total as i128), "the node ran each once");
    assert_eq!(stream_items, 20);
    eprintln!(
        "{total} requests in {elapsed:?}; to node {up:?}; to host {down:?}; link {:?}",
        link.stats()
    );
    for (dir, st) in [("to node", up), ("to host", down)]
        .into_iter()
        .filter(|_| faults != Faults::none())
    {
        assert!(
            st.corrupted_frames + st.corrupted_bytes > 0 && st.dropped_frames > 0,
            "the proxy injected no faults {dir}: {st:?}"
        );
    }
    assert_eq!(link.stats().reconnects, 0, "the link stayed up");
    let stats = link.stats();
    if auth {
        // Every answer opened; nothing the reliable layer let through was
        // dropped (its duplicates never reach the opener).
        assert!(stats.auth_ok as usize >= total, "{stats:?}");
        assert_eq!(stats.auth_dropped, 0, "{stats:?}");
        let info = ep.call(["sys", "info"], Value::Nil).await.unwrap();
        let au = info.get("au").cloned().unwrap_or(Value::Nil);
        assert_eq!(au.get("bad").and_then(Value::as_int), Some(0), "{info}");
    } else {
        assert_eq!(stats.auth_ok, 0);
    }
    link.stop().await;
    node.kill();
}

/// Ten one-shot `moat cmd ping` back to back over a UART (a unix node's
/// `uart` link on a pty, default timeout 1 s both sides) cost no more than
/// one after a pause, also when the host's closing frame at the end of each
/// is lost on the line (as it is over QEMU's link socket, see
/// tests/emulated.rs): each new connection's handshake is told from an
/// echo of the last one by its connection id, not by waiting. The
/// reference is taken in the same test, after a 3 s pause.
#[test]
fn ten_back_to_back_one_shot_calls_over_a_uart_cost_no_more_than_one_after_a_pause() {
    const RATIO: f64 = 3.0;
    let _one_at_a_time = SERIAL.blocking_lock();
    let no_closing = Faults {
        drop_closing: true,
        ..Faults::none()
    };
    let proxy = SerialProxy::start(
        Direction::new(Framing::serial_packer(), no_closing),
        Direction::new(Framing::serial_packer(), Faults::none()),
        1,
    )
    .unwrap();
    let mut node = Node::new(256);
    node.write_cfg(
        "moat.cfg",
        &kw([("link", kw([("uart", kw([("port", s(proxy.node_path()))]))]))]),
    );
    node.start();
    let dir = tempfile::Builder::new()
        .prefix("moat-b2b-")
        .tempdir()
        .unwrap();
    std::fs::write(
        dir.path().join("moat.toml"),
        format!(
            "[project]\nname = \"b2b\"\n[apps]\npaths = [\"apps\"]\n\
             [nodes.sat]\nboard = \"unix\"\nport = \"{}\"\nlink = {{ kind = \"serial\" }}\n",
            proxy.host_path()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("apps")).unwrap();
    let measured = back_to_back(
        dir.path(),
        &["cmd", "sat", "ping", "m=hi"],
        "hi",
        Duration::from_secs(3),
        10,
    )
    .unwrap_or_else(|e| panic!("{e:#}\nnode console:\n{}", node.console()));
    assert!(
        proxy.to_node().dropped_frames >= 10,
        "the closing frames were not dropped: {:?}",
        proxy.to_node()
    );
    measured.assert_within(RATIO);
    node.kill();
}

// ---------------------------------------------------------------------------
// Through the mux: process nodes under a `moat mux` child process

/// A project with one unix node `pump` on a process link, flashed with the
/// shared satellite firmware, and a `moat mux` serving it.
struct MuxProject {
    _dir: tempfile::TempDir,
    root: PathBuf,
    socket: PathBuf,
    mux: Option<Child>,
}

impl MuxProject {
    fn start() -> anyhow::Result<MuxProject> {
        let sat = moat_e2e::satellite_project()?;
        let dir = tempfile::Builder::new().prefix("moat-rel-").tempdir()?;
        let root = dir.path().join("proj");
        copy_dir(&sat.join("apps"), &root.join("apps"))?;
        std::fs::write(
            root.join("moat.toml"),
            "[project]\nname = \"rel\"\n[micropython]\nversion = \"1.25.0\"\n\
             [apps]\npaths = [\"apps\"]\n\
             [nodes.pump]\nboard = \"unix\"\nlink = { kind = \"process\" }\n\
             [nodes.pump.config]\napps = { c = \"counter.Counter\", t = \"tapp.T\" }\n\
             c = { step = 1, ms = 20 }\n",
        )?;
        let built = sat.join(".moat/build/demo");
        let to = root.join(".moat/build/pump");
        copy_dir(&built.join("firmware"), &to.join("firmware"))?;
        std::fs::copy(built.join("record.json"), to.join("record.json"))?;
        // before flashing: the build checks the apps it names
        std::fs::create_dir_all(root.join(".moat/nodes/pump"))?;
        std::fs::write(root.join(".moat/nodes/pump/tapp.py"), TAPP)?;
        run_ok(moat(&root).arg("flash"))?;
        let socket = dir.path().join("mux.sock");
        let mut p = MuxProject {
            _dir: dir,
            root,
            socket,
            mux: None,
        };
        p.start_mux()?;
        Ok(p)
    }

    fn start_mux(&mut self) -> anyhow::Result<()> {
        let mux = moat(&self.root)
            .args(["mux", "--socket"])
            .arg(&self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting moat mux")?;
        self.mux = Some(mux);
        let deadline = Instant::now() + PATIENCE;
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "moat mux did not open its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    async fn client(&self) -> Endpoint {
        Endpoint::connect_unix(&self.socket).await.unwrap()
    }

    async fn ls(&self, client: &Endpoint) -> Value {
        let ls = client.call(["mux", "ls"], Value::Nil).await.unwrap();
        ls.get("pump").cloned().expect("pump listed by mux.ls")
    }

    /// Waits (up to `limit`) until the node's link is up.
    async fn wait_up(&self, client: &Endpoint, limit: Duration) -> bool {
        timeout(limit, async {
            while self.ls(client).await.get("state") != Some(&s("up")) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    }

    /// SIGTERM to the mux; waits for it to exit.
    fn stop_mux(&mut self) {
        let Some(mut mux) = self.mux.take() else {
            return;
        };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(mux.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        while mux.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = mux.kill();
                panic!("moat mux ignores SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn mux_running(&mut self) -> bool {
        self.mux
            .as_mut()
            .is_some_and(|m| m.try_wait().unwrap().is_none())
    }
}

impl Drop for MuxProject {
    fn drop(&mut self) {
        self.stop_mux();
    }
}

/// After a node dies its clients must hear of it within this…
const LNKERR_WITHIN: Duration = Duration::from_secs(1);
/// …and the supervisor must have it back within this.
const BACK_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_fails_its_clients_with_lnkerr_at_once_and_comes_back() {
    let p = MuxProject::start().unwrap();
    let c = p.client().await;
    assert!(p.wait_up(&c, PATIENCE).await, "the node comes up");
    for round in 0..3 {
        let mut notices = c.notices();
        let pid = p.ls(&c).await.get("pid").and_then(Value::as_int).unwrap();
        // `ping` is built in: it survives the fallback config a crashed
        // node boots with.
        let mut st = c.stream(["pump", "ping"], Value::Nil, 10);
        for _ in 0..3 {
            let item = timeout(PATIENCE, st.next()).await.unwrap();
            assert!(
                matches!(item, Some(Ok(_))),
                "round {round}: stream item {item:?}"
            );
        }
        let pending = tokio::spawn({
            let c = c.clone();
            async move { c.call(["pump", "sys", "mem"], Value::Nil).await }
        });
        // SAFETY: kill(2) of the node process the mux started for this test.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        let killed = Instant::now();
        let failed = timeout(LNKERR_WITHIN, async {
            while let Some(item) = st.next().await {
                if let Err(e) = item {
                    return e;
                }
            }
            panic!("the stream ended without an error");
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: no _LnkErr within {LNKERR_WITHIN:?}"));
        assert_eq!(failed.kind(), Some(WellKnown::LinkDown), "round {round}");
        // The request in flight either finished before the kill or failed
        // with _LnkErr; it never hangs.
        let pending = timeout(LNKERR_WITHIN, pending)
            .await
            .expect("the pending request is answered")
            .unwrap();
        if let Err(e) = pending {
            assert_eq!(e.kind(), Some(WellKnown::LinkDown), "round {round}");
        }
        let down = Notice {
            path: path(["pump", "link"]),
            data: Value::Bool(false),
        };
        timeout(LNKERR_WITHIN, async {
            while notices.recv().await.unwrap() != down {}
        })
        .await
        .expect("clients are told the link is down");
        assert!(
            p.wait_up(&c, BACK_WITHIN.saturating_sub(killed.elapsed()))
                .await,
            "round {round}: the link is not back within {BACK_WITHIN:?} of the kill"
        );
        let info = p.ls(&c).await;
        assert_ne!(info.get("pid").and_then(Value::as_int), Some(pid));
        let pong = c.call(["pump", "ping"], kw([("m", s("back"))])).await;
        assert_eq!(pong.unwrap(), kw([("m", s("back"))]));
        // Back means usable: its built-in apps answer too. (After a crash
        // the node boots its fallback config, so the test's own apps may be
        // gone: that is by design, main.py.)
        let info = c.call(["pump", "sys", "info"], Value::Nil).await;
        assert!(
            info.is_ok(),
            "round {round}: sys.info after the restart: {info:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_mux_serves_fresh_clients_and_old_ones_learn_it_went_away() {
    let mut p = MuxProject::start().unwrap();
    let old = p.client().await;
    assert!(p.wait_up(&old, PATIENCE).await);
    let mut st = old.stream(["pump", "c", "get"], Value::Nil, 10);
    assert!(timeout(PATIENCE, st.next()).await.unwrap().unwrap().is_ok());
    p.stop_mux();
    // The old client's stream ends with an error and its calls fail.
    let ended = timeout(LNKERR_WITHIN, async {
        while let Some(item) = st.next().await {
            if let Err(e) = item {
                return e;
            }
        }
        panic!("the stream ended without an error");
    })
    .await
    .expect("the old client notices the mux is gone");
    assert_eq!(ended.kind(), Some(WellKnown::LinkDown));
    assert!(!old.is_up());
    let err = old.call(["mux", "ping"], Value::Nil).await.unwrap_err();
    assert_eq!(err.kind(), Some(WellKnown::LinkDown));
    // A new mux on the same socket: a fresh client is served at once and
    // the node (a new process) is back within the link bound.
    p.start_mux().unwrap();
    let started = Instant::now();
    let fresh = p.client().await;
    let pong = fresh.call(["mux", "ping"], kw([("m", s("hi"))])).await;
    assert_eq!(pong.unwrap(), kw([("m", s("hi"))]));
    assert!(
        p.wait_up(&fresh, BACK_WITHIN.saturating_sub(started.elapsed()))
            .await,
        "the node is not up within {BACK_WITHIN:?} of the mux restart"
    );
    let n = fresh.call(["pump", "t", "inc"], Value::Nil).await.unwrap();
    assert_eq!(
        n,
        Value::Array(vec![1.into(), s("")]),
        "a fresh node process"
    );
    assert!(p.mux_running());
}

// ---------------------------------------------------------------------------
// Malformed input

/// Bursts of bad input, each sent on a fresh connection: random bytes,
/// truncated maps, huge length fields, deep nesting, well-formed MsgPack
/// of the wrong shape.
fn bad_bursts() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = Rng::new(0xBAD);
    let request = mux_runtime::msgpack::to_vec(&kw([
        ("a", Value::Array(vec![s("ping")])),
        ("d", kw([("m", s(&"x".repeat(40)))])),
        ("i", 2.into()),
    ]));
    let mut truncated = Vec::new();
    for cut in 1..request.len() {
        truncated.extend_from_slice(&request[..cut]);
    }
    let mut huge = Vec::new();
    for lead in [0xdbu8, 0xc6, 0xdd, 0xdf, 0xc9, 0xda, 0xc5, 0xdc, 0xde] {
        // A map whose value claims ~4 GiB (or 64 Ki entries) and stops.
        huge.extend_from_slice(&[0x81, 0xa1, b'd', lead, 0xff, 0xff, 0xff, 0xff, 0x01]);
    }
    let mut wrong_shape = Vec::new();
    for v in [
        kw([("a", s("ping")), ("i", s("two"))]),
        kw([("a", Value::Array(vec![Value::Nil])), ("i", 4.into())]),
        kw([("a", Value::Array(vec![s("ping")])), ("i", Value::Int(-7))]),
        kw([
            ("a", Value::Array(vec![s("ping")])),
            ("i", Value::Int(1 << 70)),
        ]),
        kw([
            ("a", Value::Array(vec![s("ping")])),
            ("d", 5.into()),
            ("i", 6.into()),
        ]),
        kw([
            ("a", Value::Array(vec![s("ping")])),
            ("r", s("fast")),
            ("i", 8.into()),
        ]),
        Value::Map(vec![(Value::Nil, Value::Nil)]),
        Value::Array(vec![1.into(), 2.into()]),
        Value::Ext(9, vec![1, 2, 3]),
        Value::Proxy("_nope".into()),
    ] {
        mux_runtime::msgpack::encode(&v, &mut wrong_shape);
    }
    vec![
        ("random bytes", rng.bytes(64 * 1024)),
        ("truncated maps", truncated),
        ("huge length fields", huge),
        ("deeply nested arrays", vec![0x91; 100_000]),
        ("deeply nested maps", [0x81, 0x00].repeat(50_000)),
        ("wrong shapes", wrong_shape),
    ]
}

/// Writes `bytes` (the peer may close on us: that is allowed) and closes.
fn send_and_close(mut conn: impl Write, bytes: &[u8]) {
    for chunk in bytes.chunks(4096) {
        if conn.write_all(chunk).is_err() {
            return;
        }
    }
    let _ = conn.flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_on_the_mux_socket_never_crashes_the_mux() {
    let mut p = MuxProject::start().unwrap();
    let c = p.client().await;
    assert!(p.wait_up(&c, PATIENCE).await);
    for (what, bytes) in bad_bursts() {
        let socket = p.socket.clone();
        tokio::task::spawn_blocking(move || {
            let conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            conn.set_write_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            send_and_close(conn, &bytes);
        })
        .await
        .unwrap();
        assert!(p.mux_running(), "the mux died of {what}");
        let fresh = p.client().await;
        let pong = timeout(PATIENCE, fresh.call(["mux", "ping"], kw([("m", s(what))])))
            .await
            .unwrap_or_else(|_| panic!("no mux ping answer after {what}"));
        assert_eq!(pong.unwrap(), kw([("m", s(what))]), "after {what}");
        // The long-lived client and the node are unaffected too.
        let pong = timeout(PATIENCE, c.call(["pump", "ping"], kw([("m", s(what))])))
            .await
            .unwrap_or_else(|_| panic!("no node ping answer after {what}"));
        assert_eq!(pong.unwrap(), kw([("m", s(what))]), "after {what}");
    }
}

#[test]
fn malformed_input_on_a_node_link_never_crashes_the_node() {
    let mut n = Node::new(64);
    n.write_cfg("moat.cfg", &n.tcp_cfg(vec![]));
    n.start();
    let mut c = n.connect();
    assert_eq!(
        c.ok("ping", kw([("m", s("before"))])),
        kw([("m", s("before"))])
    );
    for (what, bytes) in bad_bursts() {
        let conn = std::net::TcpStream::connect(("127.0.0.1", n.port)).unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        send_and_close(&conn, &bytes);
        drop(conn);
        assert!(n.running(), "the node died of {what}:\n{}", n.console());
        // A fresh connection and the first one both still get answers.
        let mut fresh = n.connect();
        assert_eq!(
            fresh.ok("ping", kw([("m", s(what))])),
            kw([("m", s(what))]),
            "after {what}"
        );
        assert_eq!(c.ok("ping", kw([("m", s(what))])), kw([("m", s(what))]));
    }
    let mem = c.ok("sys.mem", Value::Nil);
    eprintln!("node memory after the bursts: {mem}");
}
