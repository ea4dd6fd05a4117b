//! Multiplexer figures: request round trips per second to one node, direct
//! and through the mux, in the same run; and the mux's memory per
//! connected (idle) client.
//!
//! Run: `cargo bench -p mux-runtime --bench mux` (about 15 s).
//!
//! Nodes: an in-process fake node over TCP (measures the host side alone)
//! and, when a unix-port satellite is found (`MOAT_BENCH_FIRMWARE`, else
//! the one the e2e tests build under `target/debug/moat-e2e/`), a real
//! MicroPython node as a process link.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use mux_runtime::endpoint::{Endpoint, EndpointConfig, Handler, Request};
use mux_runtime::error::RemoteError;
use mux_runtime::framing::StreamCodec;
use mux_runtime::link::{LinkOptions, LinkSpec, NodeLink, ProcessSpec};
use mux_runtime::mux::{Mux, MuxConfig, NodeConfig};
use mux_runtime::Value;
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

const BUDGET: Duration = Duration::from_secs(2);
const IN_FLIGHT: usize = 16;
const IDLE_CLIENTS: usize = 500;

/// Echoes `ping` like a node does.
struct Echo;

impl Handler for Echo {
    fn call(&self, req: Request) -> BoxFuture<'static, Result<Value, RemoteError>> {
        Box::pin(async move {
            Ok(Value::map([(
                "m",
                req.data.get("m").cloned().unwrap_or(Value::Nil),
            )]))
        })
    }
}

async fn fake_node() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((io, _)) = listener.accept().await {
            let _ = io.set_nodelay(true);
            keep.push(Endpoint::spawn_with(
                Framed::new(io, StreamCodec::default()),
                Arc::new(Echo),
                EndpointConfig {
                    name: "fake".into(),
                },
            ));
        }
    });
    addr
}

/// Round trips per second: one at a time, and with `IN_FLIGHT` concurrent.
async fn round_trips(ep: &Endpoint, path: &[&str]) -> (f64, f64) {
    let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
    let arg = Value::map([("m", Value::from("x"))]);
    // Warm up.
    for _ in 0..100 {
        ep.call(path.clone(), arg.clone()).await.unwrap();
    }
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < BUDGET {
        ep.call(path.clone(), arg.clone()).await.unwrap();
        n += 1;
    }
    let serial = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < BUDGET {
        let batch: Vec<_> = (0..IN_FLIGHT)
            .map(|_| ep.call(path.clone(), arg.clone()))
            .collect();
        for r in futures::future::join_all(batch).await {
            r.unwrap();
        }
        n += IN_FLIGHT as u64;
    }
    (serial, n as f64 / t.elapsed().as_secs_f64())
}

fn fast() -> LinkOptions {
    LinkOptions {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..LinkOptions::default()
    }
}

struct Row {
    node: &'static str,
    route: &'static str,
    serial: f64,
    parallel: f64,
}

async fn measure(node: &'static str, spec: LinkSpec, dir: &std::path::Path) -> Vec<Row> {
    let mut rows = Vec::new();
    // Direct: the same link kind, no mux in between.
    let direct = NodeLink::spawn(node, spec.clone(), Arc::new(Echo), fast());
    let ep = direct.wait_up().await.unwrap();
    let (serial, parallel) = round_trips(&ep, &["ping"]).await;
    rows.push(Row {
        node,
        route: "direct",
        serial,
        parallel,
    });
    drop(ep);
    direct.stop().await;
    // Through the mux: client → Unix socket → mux → link → node.
    let socket = dir.join(format!("{node}.sock"));
    let mut config = MuxConfig::new(
        "bench",
        &socket,
        vec![NodeConfig {
            name: "n".into(),
            auth: None,
            link: spec,
            watchdog: None,
        }],
    );
    config.link_options = fast();
    let mux = Mux::start(config).await.unwrap();
    mux.link("n").unwrap().wait_up().await.unwrap();
    let client = Endpoint::connect_unix(&socket).await.unwrap();
    let (serial, parallel) = round_trips(&client, &["n", "ping"]).await;
    rows.push(Row {
        node,
        route: "via mux",
        serial,
        parallel,
    });
    drop(client);
    mux.shutdown().await;
    rows
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// RSS growth of the mux per idle client. The clients are bare sockets
/// (kernel memory, not in our RSS), so the delta is the mux's side alone.
async fn memory_per_client(addr: String, dir: &std::path::Path) -> (f64, u64) {
    let socket = dir.join("mem.sock");
    let mut config = MuxConfig::new(
        "bench",
        &socket,
        vec![NodeConfig {
            name: "n".into(),
            auth: None,
            link: LinkSpec::Tcp { addr },
            watchdog: None,
        }],
    );
    config.link_options = fast();
    let mux = Mux::start(config).await.unwrap();
    mux.link("n").unwrap().wait_up().await.unwrap();
    // Warm the allocator with a first batch, then measure a second one.
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(tokio::net::UnixStream::connect(&socket).await.unwrap());
    }
    while mux.client_count() < clients.len() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = rss_kib();
    for _ in 0..IDLE_CLIENTS {
        clients.push(tokio::net::UnixStream::connect(&socket).await.unwrap());
    }
    while mux.client_count() < clients.len() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = rss_kib();
    drop(clients);
    mux.shutdown().await;
    (
        after.saturating_sub(before) as f64 * 1024.0 / IDLE_CLIENTS as f64,
        after,
    )
}

fn satellite() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MOAT_BENCH_FIRMWARE") {
        return Some(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let fw = root.join("target/debug/moat-e2e/satellite/.moat/build/demo/firmware/micropython");
    fw.is_file().then_some(fw)
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let addr = fake_node().await;
    let mut rows = measure(
        "fake (tcp)",
        LinkSpec::Tcp { addr: addr.clone() },
        dir.path(),
    )
    .await;
    match satellite() {
        Some(fw) => {
            let node_dir = dir.path().join("node");
            std::fs::create_dir_all(&node_dir).unwrap();
            let spec = LinkSpec::Process(ProcessSpec::new(
                &fw,
                vec!["-X".into(), "heapsize=256k".into(), "-m".into(), "main".into()],
                &node_dir,
            ));
            rows.extend(measure("unix satellite (stdio)", spec, dir.path()).await);
        }
        None => println!(
            "(no unix satellite found: set MOAT_BENCH_FIRMWARE or run `cargo test -p moat-e2e --test mux` first)"
        ),
    }
    println!();
    println!(
        "{:<24} {:<8} {:>14} {:>22}",
        "node",
        "route",
        "round trips/s",
        format!("{IN_FLIGHT} in flight: req/s")
    );
    for r in &rows {
        println!(
            "{:<24} {:<8} {:>14.0} {:>22.0}",
            r.node, r.route, r.serial, r.parallel
        );
    }
    let (per_client, rss) = memory_per_client(addr, dir.path()).await;
    println!();
    println!(
        "mux memory per idle client: {:.1} KiB ({IDLE_CLIENTS} clients; process RSS {:.1} MiB)",
        per_client / 1024.0,
        rss as f64 / 1024.0
    );
}
