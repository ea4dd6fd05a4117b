//! The multiplexer with in-process fake nodes (TCP on localhost, and a
//! shell-script child process for the process link).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use mux_runtime::endpoint::{Endpoint, EndpointConfig, Handler, Notice, Request};
use mux_runtime::error::{RemoteError, WellKnown};
use mux_runtime::framing::StreamCodec;
use mux_runtime::link::{LinkOptions, LinkSpec, ProcessSpec};
use mux_runtime::message::path;
use mux_runtime::mux::{BindError, Mux, MuxConfig, MuxError, NodeConfig};
use mux_runtime::Value;
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_util::codec::Framed;

/// Bounds a failure; a working mux never comes near it.
const PATIENCE: Duration = Duration::from_secs(10);

fn kw(pairs: &[(&str, Value)]) -> Value {
    Value::map(pairs.iter().map(|(k, v)| (*k, v.clone())))
}

/// Polls `cond` until it holds (or fails the test after PATIENCE).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let waited = timeout(PATIENCE, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for: {what}");
}

/// A fake node: a TCP server whose connections each run an endpoint with
/// [`NodeApp`]. It says `link true` when a connection comes up.
struct FakeNode {
    name: String,
    addr: String,
    conns: Arc<Mutex<Vec<Endpoint>>>,
    wdt_fed: Arc<AtomicUsize>,
}

/// The fake node's commands: `echo` (kwargs back), `whoami`, `slow`
/// (never answers), `tick` (a counter), `ask(p)` (calls `p` up its link),
/// `sys.wdt` (counted).
struct NodeApp {
    name: String,
    up: Arc<OnceLock<Endpoint>>,
    ticks: AtomicUsize,
    wdt_fed: Arc<AtomicUsize>,
}

impl Handler for NodeApp {
    fn call(&self, req: Request) -> BoxFuture<'static, Result<Value, RemoteError>> {
        let names: Vec<String> = req.path.iter().map(|p| p.to_string()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let result = match names.as_slice() {
            ["echo"] => Ok(req.data.clone()),
            ["whoami"] => Ok(Value::from(self.name.as_str())),
            ["tick"] => Ok(Value::from(self.ticks.fetch_add(1, Ordering::SeqCst) as u64)),
            ["sys", "wdt"] => {
                self.wdt_fed.fetch_add(1, Ordering::SeqCst);
                Ok(Value::Nil)
            }
            ["slow"] => return Box::pin(futures::future::pending()),
            ["ask"] => {
                let up = self.up.get().cloned();
                let target: Vec<String> = req
                    .data
                    .get("p")
                    .and_then(Value::as_array)
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect();
                return Box::pin(async move {
                    let up = up.ok_or_else(|| RemoteError::generic("no link"))?;
                    up.call(target, Value::Nil).await
                });
            }
            _ => Err(RemoteError::no_path(
                req.path.iter().map(Value::from).collect(),
                "no such command",
            )),
        };
        Box::pin(async move { result })
    }
}

impl FakeNode {
    async fn start(name: &str) -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<Endpoint>>> = Arc::default();
        let wdt_fed: Arc<AtomicUsize> = Arc::default();
        let (conns2, wdt2, name2) = (conns.clone(), wdt_fed.clone(), name.to_owned());
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                let up = Arc::new(OnceLock::new());
                let app = NodeApp {
                    name: name2.clone(),
                    up: up.clone(),
                    ticks: AtomicUsize::new(0),
                    wdt_fed: wdt2.clone(),
                };
                let ep = Endpoint::spawn_with(
                    Framed::new(io, StreamCodec::default()),
                    Arc::new(app),
                    EndpointConfig {
                        name: name2.clone(),
                    },
                );
                let _ = up.set(ep.clone());
                let _ = ep.send(["link"], Value::Bool(true));
                conns2.lock().unwrap().push(ep);
            }
        });
        FakeNode {
            name: name.to_owned(),
            addr,
            conns,
            wdt_fed,
        }
    }

    fn config(&self) -> NodeConfig {
        NodeConfig {
            name: self.name.clone(),
            auth: None,
            link: LinkSpec::Tcp {
                addr: self.addr.clone(),
            },
            watchdog: None,
        }
    }

    /// The connection the mux holds, once there is one.
    async fn live(&self) -> Endpoint {
        let conns = self.conns.clone();
        eventually("the mux connects to the node", || {
            conns.lock().unwrap().iter().any(Endpoint::is_up)
        })
        .await;
        let found = self
            .conns
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.is_up())
            .cloned();
        found.unwrap()
    }

    /// Drops the node's end of every connection (the link dies).
    fn kill_links(&self) {
        for ep in self.conns.lock().unwrap().drain(..) {
            ep.close();
        }
    }
}

fn fast_links() -> LinkOptions {
    LinkOptions {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(5),
        ..LinkOptions::default()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    mux: Mux,
}

async fn start_mux(nodes: Vec<NodeConfig>) -> Setup {
    start_mux_with(nodes, |_| {}).await
}

async fn start_mux_with(nodes: Vec<NodeConfig>, tweak: impl FnOnce(&mut MuxConfig)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run").join("test.sock");
    let mut config = MuxConfig::new("test", &socket, nodes);
    config.link_options = fast_links();
    tweak(&mut config);
    let mux = Mux::start(config).await.unwrap();
    Setup {
        _dir: dir,
        socket,
        mux,
    }
}

impl Setup {
    async fn client(&self) -> Endpoint {
        Endpoint::connect_unix(&self.socket).await.unwrap()
    }

    async fn wait_up(&self, node: &str) {
        let link = self.mux.link(node).unwrap().clone();
        timeout(PATIENCE, link.wait_up()).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn requests_reach_the_node_named_first_and_come_back() {
    let pump = FakeNode::start("pump").await;
    let s = start_mux(vec![pump.config()]).await;
    s.wait_up("pump").await;
    let c = s.client().await;
    let got = c
        .call(["pump", "echo"], kw(&[("m", "hi".into())]))
        .await
        .unwrap();
    assert_eq!(got, kw(&[("m", "hi".into())]));
    let err = c.call(["pump", "nope"], Value::Nil).await.unwrap_err();
    assert_eq!(err.kind(), Some(WellKnown::NoPath));
    let err = c.call(["valve", "echo"], Value::Nil).await.unwrap_err();
    assert_eq!(err.kind(), Some(WellKnown::NoPath), "unknown node");
}

#[tokio::test]
async fn fifty_concurrent_clients_mixing_requests_and_streams_see_only_their_own_answers() {
    let pump = FakeNode::start("pump").await;
    let s = start_mux(vec![pump.config()]).await;
    s.wait_up("pump").await;
    let mut jobs = Vec::new();
    for id in 0..50i64 {
        let c = s.client().await;
        jobs.push(tokio::spawn(async move {
            let mine = kw(&[("id", id.into())]);
            for _ in 0..5 {
                let got = c.call(["pump", "echo"], mine.clone()).await.unwrap();
                assert_eq!(got, mine, "client {id} got another's reply");
            }
            let items: Vec<_> = c
                .stream(["pump", "echo"], mine.clone(), 5)
                .take(3)
                .collect()
                .await;
            assert_eq!(items, vec![Ok(mine.clone()); 3], "client {id} stream");
            let got = c.call(["pump", "echo"], mine.clone()).await.unwrap();
            assert_eq!(got, mine);
        }));
    }
    for job in jobs {
        timeout(PATIENCE, job).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_has_it_cancelled_on_the_node() {
    let pump = FakeNode::start("pump").await;
    let s = start_mux(vec![pump.config()]).await;
    s.wait_up("pump").await;
    let node = pump.live().await;
    let c = s.client().await;
    let mut st = c.stream(["pump", "tick"], Value::Nil, 10);
    assert!(st.next().await.unwrap().is_ok());
    let slow = tokio::spawn(c.call(["pump", "slow"], Value::Nil));
    eventually("the node serves the stream and the call", || {
        node.stats().serving == 2
    })
    .await;
    drop(st);
    slow.abort();
    drop(c);
    eventually("the node stops serving both", || node.stats().serving == 0).await;
    eventually("the mux forgets the client", || s.mux.client_count() == 0).await;
}

#[tokio::test]
async fn requests_beyond_the_nodes_slots_wait_for_one_instead_of_failing() {
    let pump = FakeNode::start("pump").await;
    let s = start_mux_with(vec![pump.config()], |c| c.node_requests = 2).await;
    s.wait_up("pump").await;
    let node = pump.live().await;
    let c = s.client().await;
    let slow = [
        tokio::spawn(c.call(["pump", "slow"], Value::Nil)),
        tokio::spawn(c.call(["pump", "slow"], Value::Nil)),
    ];
    eventually("both slots are taken", || node.stats().serving == 2).await;
    let waiting = tokio::spawn(c.call(["pump", "whoami"], Value::Nil));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        node.stats().serving,
        2,
        "the third request waits in the mux"
    );
    assert!(!waiting.is_finished());
    slow[0].abort();
    let got = timeout(PATIENCE, waiting).await.unwrap().unwrap();
    assert_eq!(got, Ok("pump".into()));
    slow[1].abort();
}

#[tokio::test]
async fn a_cancelled_stream_stops_on_the_node_while_the_client_stays() {
    let pump = FakeNode::start("pump").await;
    let s = start_mux(vec![pump.config()]).await;
    s.wait_up("pump").await;
    let node = pump.live().await;
    let c = s.client().await;
    let mut st = c.stream(["pump", "tick"], Value::Nil, 10);
    assert!(st.next().await.unwrap().is_ok());
    drop(st);
    eventually("the node stops the stream", || node.stats().serving == 0).await;
    assert_eq!(
        c.call(["pump", "whoami"], Value::Nil).await.unwrap(),
        "pump".into()
    );
}

#[tokio::test]
async fn a_lost_link_fails_pending_requests_with_lnkerr_and_tells_every_client() {
    let pump = FakeNode::start("pump").await;
    let s = start_mux(vec![pump.config()]).await;
    s.wait_up("pump").await;
    pump.live().await;
    let asker = s.client().await;
    let watcher = s.client().await;
    let mut notices = watcher.notices();
    let pending = tokio::spawn(asker.call(["pump", "slow"], Value::Nil));
    let mut stream = asker.stream(["pump", "tick"], Value::Nil, 10);
    assert!(stream.next().await.unwrap().is_ok());
    eventually("the request reached the node", || {
        s.mux.link("pump").unwrap().stats().messages_out >= 2
    })
    .await;
    pump.kill_links();
    let err = timeout(PATIENCE, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), Some(WellKnown::LinkDown));
    let mut last = None;
    while let Some(item) = timeout(PATIENCE, stream.next()).await.unwrap() {
        last = Some(item);
    }
    assert_eq!(last.unwrap().unwrap_err().kind(), Some(WellKnown::LinkDown));
    let want = Notice {
        path: path(["pump", "link"]),
        data: Value::Bool(false),
    };
    timeout(PATIENCE, async {
        loop {
            if notices.recv().await.unwrap() == want {
                break;
            }
        }
    })
    .await
    .expect("watcher told the link is down");
    // The link comes back by itself.
    s.wait_up("pump").await;
    pump.live().await;
    assert_eq!(
        asker.call(["pump", "whoami"], Value::Nil).await.unwrap(),
        "pump".into()
    );
    assert!(s.mux.link("pump").unwrap().stats().reconnects >= 1);
}

#[tokio::test]
async fn requests_to_a_node_whose_link_is_down_fail_at_once_with_lnkerr() {
    // Nothing listens there: the link never comes up.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let s = start_mux(vec![NodeConfig {
        name: "gone".into(),
        auth: None,
        link: LinkSpec::Tcp { addr },
        watchdog: None,
    }])
    .await;
    let c = s.client().await;
    let err = c.call(["gone", "ping"], Value::Nil).await.unwrap_err();
    assert_eq!(err.kind(), Some(WellKnown::LinkDown));
}

#[tokio::test]
async fn unsolicited_node_messages_reach_every_client_with_the_node_name_first() {
    let pump = FakeNode::start("pump").await;
    let s = start_mux(vec![pump.config()]).await;
    s.wait_up("pump").await;
    let a = s.client().await;
    let b = s.client().await;
    let (mut na, mut nb) = (a.notices(), b.notices());
    eventually("both clients registered", || s.mux.client_count() == 2).await;
    pump.live()
        .await
        .send(["t", "alarm"], kw(&[("hot", true.into())]))
        .unwrap();
    let want = Notice {
        path: path(["pump", "t", "alarm"]),
        data: kw(&[("hot", true.into())]),
    };
    assert_eq!(timeout(PATIENCE, na.recv()).await.unwrap().unwrap(), want);
    assert_eq!(timeout(PATIENCE, nb.recv()).await.unwrap().unwrap(), want);
}

#[tokio::test]
async fn two_nodes_under_one_mux_and_a_node_calling_another_through_the_root() {
    let pump = FakeNode::start("pump").await;
    let valve = FakeNode::start("valve").await;
    let s = start_mux(vec![pump.config(), valve.config()]).await;
    s.wait_up("pump").await;
    s.wait_up("valve").await;
    let c = s.client().await;
    assert_eq!(
        c.call(["pump", "whoami"], Value::Nil).await.unwrap(),
        "pump".into()
    );
    assert_eq!(
        c.call(["valve", "whoami"], Value::Nil).await.unwrap(),
        "valve".into()
    );
    // pump asks the mux root for valve.whoami over its own link.
    let p = Value::Array(vec!["valve".into(), "whoami".into()]);
    let got = c.call(["pump", "ask"], kw(&[("p", p)])).await.unwrap();
    assert_eq!(got, "valve".into());
}

#[tokio::test]
async fn mux_ls_lists_every_node_with_its_link_state_and_counters() {
    let pump = FakeNode::start("pump").await;
    let s = start_mux(vec![pump.config()]).await;
    s.wait_up("pump").await;
    let c = s.client().await;
    c.call(["pump", "whoami"], Value::Nil).await.unwrap();
    let ls = c.call(["mux", "ls"], Value::Nil).await.unwrap();
    let pump_info = ls.get("pump").expect("pump listed");
    assert_eq!(pump_info.get("state"), Some(&"up".into()));
    assert_eq!(pump_info.get("kind"), Some(&"tcp".into()));
    assert!(pump_info.get("messages_out").unwrap().as_int().unwrap() >= 1);
    assert!(pump_info.get("bytes_in").unwrap().as_int().unwrap() > 0);
    let dir = c.call(["dir"], Value::Nil).await.unwrap();
    let apps = dir.get("d").unwrap();
    assert!(apps.get("pump").is_some() && apps.get("mux").is_some());
}

#[tokio::test]
async fn the_watchdog_feeder_sends_sys_wdt_while_the_link_is_up() {
    let pump = FakeNode::start("pump").await;
    let mut config = pump.config();
    config.watchdog = Some(Duration::from_millis(200));
    let s = start_mux(vec![config]).await;
    s.wait_up("pump").await;
    let fed = pump.wdt_fed.clone();
    eventually("sys.wdt arrives repeatedly", || {
        fed.load(Ordering::SeqCst) >= 3
    })
    .await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_socket_is_private_to_its_user() {
    let pump = FakeNode::start("pump").await;
    let s = start_mux(vec![pump.config()]).await;
    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(s.socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o077, 0, "the socket folder it made is private");
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stale.sock");
    // A mux that died: its socket file stays, nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let mux = Mux::start(MuxConfig::new("test", &socket, vec![]))
        .await
        .unwrap();
    let c = Endpoint::connect_unix(&socket).await.unwrap();
    assert_eq!(
        c.call(["mux", "ping"], kw(&[("m", 1.into())]))
            .await
            .unwrap(),
        kw(&[("m", 1.into())])
    );
    mux.shutdown().await;
    assert!(!socket.exists(), "shutdown removes the socket");
}

#[tokio::test]
async fn a_second_mux_on_a_live_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("live.sock");
    let first = Mux::start(MuxConfig::new("test", &socket, vec![]))
        .await
        .unwrap();
    let second = Mux::start(MuxConfig::new("test", &socket, vec![])).await;
    match second {
        Err(MuxError::Bind(BindError::InUse { path })) => assert_eq!(path, socket),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a second mux started on a live socket"),
    }
    // The first is unharmed.
    let c = Endpoint::connect_unix(&socket).await.unwrap();
    assert!(c.call(["mux", "info"], Value::Nil).await.is_ok());
    first.shutdown().await;
}

#[tokio::test]
async fn a_node_called_mux_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig {
        name: "mux".into(),
        auth: None,
        link: LinkSpec::Tcp {
            addr: "127.0.0.1:1".into(),
        },
        watchdog: None,
    };
    let started = Mux::start(MuxConfig::new("t", dir.path().join("s.sock"), vec![node])).await;
    assert!(matches!(started, Err(MuxError::ReservedName)));
}

/// A "node" that prints boot text and the ready marker, then exits: the
/// process link passes its output to the console capture and restarts it.
#[tokio::test]
async fn a_process_node_is_started_its_console_captured_and_restarted_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("node.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"booting in $(basename \"$PWD\")\"\necho 'moat: stdio ready'\nsleep 0.2\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let node_dir = dir.path().join("n1");
    std::fs::create_dir(&node_dir).unwrap();
    let s = start_mux(vec![NodeConfig {
        name: "sh".into(),
        auth: None,
        link: LinkSpec::Process(ProcessSpec::new(&script, vec![], &node_dir)),
        watchdog: None,
    }])
    .await;
    let link = s.mux.link("sh").unwrap().clone();
    eventually("the process restarts", || link.stats().reconnects >= 1).await;
    let c = s.client().await;
    let text = c
        .call(["mux", "console"], kw(&[("n", "sh".into())]))
        .await
        .unwrap();
    let Value::Bin(bytes) = text else {
        panic!("console is bytes, got {text:?}")
    };
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("booting in n1"), "console: {text:?}");
    assert!(
        !text.contains("moat: stdio ready"),
        "the marker is not console"
    );
}

#[tokio::test]
async fn console_output_can_be_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("node.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'moat: stdio ready'\nwhile true; do echo tick >&2; sleep 0.05; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = start_mux(vec![NodeConfig {
        name: "sh".into(),
        auth: None,
        link: LinkSpec::Process(ProcessSpec::new(&script, vec![], dir.path())),
        watchdog: None,
    }])
    .await;
    s.wait_up("sh").await;
    let c = s.client().await;
    let mut st = c.stream(["mux", "console"], Value::Nil, 0);
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("tick\ntick\n") {
        match timeout(PATIENCE, st.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Value::Bin(b) => seen.extend(b),
            other => panic!("console items are bytes, got {other:?}"),
        }
    }
    drop(st);
    s.mux.shutdown().await;
    assert_eq!(
        c.call(["mux", "ping"], Value::Nil)
            .await
            .unwrap_err()
            .kind(),
        Some(WellKnown::LinkDown),
        "clients are disconnected at shutdown"
    );
}

// Links over a pty: the fake node holds the master end, the link opens the
// slave's path like a real device.

/// The fake node side of a pty: SerialPacker frames + the reliable layer,
/// serving [`NodeApp`].
fn serial_fake_node(master: tokio_serial::SerialStream) -> Endpoint {
    use futures::StreamExt;
    use mux_runtime::framing::{Incoming, SerialPackerCodec, SerialPackerConfig};
    use mux_runtime::reliable::{self, Event};
    let frames = Framed::new(
        master,
        SerialPackerCodec::new(SerialPackerConfig::default()).unwrap(),
    )
    .filter_map(|item| async move {
        match item {
            Ok(Incoming::Message(v)) => Some(Ok::<_, mux_runtime::framing::FramingError>(v)),
            Ok(Incoming::Console(_)) => None,
            Err(e) => Some(Err(e)),
        }
    });
    let (handle, events, _task) =
        reliable::spawn(Box::pin(frames), reliable::Config::default()).unwrap();
    let source = futures::stream::unfold(events, |mut events| async move {
        loop {
            match events.recv().await? {
                Event::Message(v) => return Some((Ok::<_, String>(Incoming::Message(v)), events)),
                Event::Down { reason, .. } => return Some((Err(reason), events)),
                _ => {}
            }
        }
    })
    .boxed();
    let sink = Box::pin(futures::sink::unfold(handle, |h, msg: Value| async move {
        h.send(msg).await.map(|()| h)
    }));
    Endpoint::spawn_parts(
        source,
        sink,
        Arc::new(NodeApp {
            name: "uart".into(),
            up: Arc::default(),
            ticks: AtomicUsize::new(0),
            wdt_fed: Arc::default(),
        }),
        EndpointConfig {
            name: "uart".into(),
        },
    )
}

#[tokio::test]
async fn a_serial_link_over_a_pty_carries_requests_through_the_reliable_layer() {
    use mux_runtime::link::{NodeLink, SerialSpec};
    use tokio_serial::SerialPort;
    let (master, slave) = tokio_serial::SerialStream::pair().unwrap();
    let path = slave.name().expect("the pty slave has a path");
    let node = serial_fake_node(master);
    let link = NodeLink::spawn(
        "uart",
        LinkSpec::Serial(SerialSpec {
            path,
            baud: 115_200,
            packer: Default::default(),
            reliable: Default::default(),
        }),
        Arc::new(mux_runtime::endpoint::NoHandler),
        fast_links(),
    );
    let ep = timeout(PATIENCE, link.wait_up()).await.unwrap().unwrap();
    for k in 0..20i64 {
        let got = ep.call(["echo"], kw(&[("k", k.into())])).await.unwrap();
        assert_eq!(got, kw(&[("k", k.into())]));
    }
    assert!(link.stats().bytes_out > 0 && link.stats().bytes_in > 0);
    link.stop().await;
    // Stopping tells the node (a closing frame): its session ends now,
    // not only when the next connection's handshake arrives.
    timeout(PATIENCE, node.closed())
        .await
        .expect("the node learnt that the host closed the link");
    let why = node
        .down_reason()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(why.contains("closed"), "{why}");
    drop(slave);
}

#[tokio::test]
async fn a_usb_link_over_a_pty_mixes_console_text_and_messages() {
    use mux_runtime::framing::{Incoming, LosslessCodec};
    use mux_runtime::link::NodeLink;
    use mux_runtime::message::Message;
    use tokio::io::AsyncWriteExt;
    use tokio_serial::SerialPort;
    use tokio_util::codec::FramedRead;
    let (master, slave) = tokio_serial::SerialStream::pair().unwrap();
    let path = slave.name().expect("the pty slave has a path");
    let (rd, mut wr) = tokio::io::split(master);
    // The fake node prints a line before each answer.
    tokio::spawn(async move {
        let mut requests = FramedRead::new(rd, LosslessCodec::default());
        while let Some(Ok(item)) = requests.next().await {
            let Incoming::Message(v) = item else { continue };
            let Ok(Message::Request { seq, data, .. }) = Message::from_value(v) else {
                continue;
            };
            wr.write_all(b"working on it\n").await.unwrap();
            wr.write_all(&Message::reply(seq + 1, data).to_bytes())
                .await
                .unwrap();
        }
    });
    let link = NodeLink::spawn(
        "usb",
        LinkSpec::Usb {
            path,
            baud: 115_200,
        },
        Arc::new(mux_runtime::endpoint::NoHandler),
        fast_links(),
    );
    let mut console = link.console();
    let ep = timeout(PATIENCE, link.wait_up()).await.unwrap().unwrap();
    let got = ep.call(["echo"], kw(&[("x", 1.into())])).await.unwrap();
    assert_eq!(got, kw(&[("x", 1.into())]));
    let mut text = Vec::new();
    while !text.ends_with(b"working on it\n") {
        let chunk = timeout(PATIENCE, console.recv()).await.unwrap().unwrap();
        text.extend_from_slice(&chunk);
    }
    link.stop().await;
    drop(slave);
}
