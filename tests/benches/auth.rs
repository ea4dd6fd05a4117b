//! Benchmark (not a test): what authenticated links cost, in one run. Two
//! unix-port satellites (256 KiB heap) on TCP, one with `a: false`
//! (loopback), one authenticating with a node key (docs/auth.md); the host
//! side is mux-runtime's link code, as `moat` uses it.
//!
//! - round trips/s: `ping` one at a time for 2 s, alternating plain and
//!   authenticated, 3 rounds each; the median round.
//! - connect time: TCP connect to the endpoint being ready (with the
//!   handshake when authenticating), median of 15.
//!
//! Prints `key=value` lines for bench/run.
//!
//!     cargo bench -p moat-e2e --bench auth

use std::time::{Duration, Instant};

use moat_e2e::node::{kw, Node};
use mux_runtime::auth::AuthConfig;
use mux_runtime::link::{self, ConnectCtx, LinkSpec};
use mux_runtime::Value;

const KEY: [u8; 32] = [7; 32];
const PROJECT: &str = "00112233aabbccdd";
const ROUND: Duration = Duration::from_secs(2);

fn node(auth: bool) -> Node {
    let mut n = Node::new(256);
    let mut link = vec![("h", "127.0.0.1".into()), ("p", n.port.into())];
    link.push(("a", auth.into()));
    let mut cfg = vec![("link", kw([("tcp", Value::map(link))]))];
    if auth {
        cfg.push((
            "auth",
            kw([
                ("k", Value::Bin(KEY.to_vec())),
                ("n", "bench".into()),
                ("p", PROJECT.into()),
                ("q", "bench".into()),
            ]),
        ));
    }
    n.write_cfg("moat.cfg", &Value::map(cfg));
    n.start();
    n.connect_port(n.port); // listening
    n
}

async fn connect(n: &Node, auth: bool) -> mux_runtime::endpoint::Endpoint {
    let cfg = auth.then(|| AuthConfig::new(vec![KEY], "bench", PROJECT, "bench"));
    let ctx = ConnectCtx::new("bench", cfg, Duration::from_secs(10));
    let spec = LinkSpec::Tcp {
        addr: format!("127.0.0.1:{}", n.port),
    };
    link::connect_once(&spec, &ctx)
        .await
        .unwrap_or_else(|e| panic!("connect (auth {auth}): {e}"))
        .endpoint
}

async fn rate(n: &Node, auth: bool) -> f64 {
    let ep = connect(n, auth).await;
    let t = Instant::now();
    let mut k = 0u64;
    while t.elapsed() < ROUND {
        ep.call(["ping"], kw([("m", "hi".into())]))
            .await
            .expect("ping");
        k += 1;
    }
    ep.close();
    k as f64 / t.elapsed().as_secs_f64()
}

async fn connect_ms(n: &Node, auth: bool) -> f64 {
    let mut times = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let ep = connect(n, auth).await;
        ep.call(["ping"], Value::Nil).await.expect("first ping");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        ep.close();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    median(times)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let plain = node(false);
    let sealed = node(true);
    let (mut p, mut s) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        p.push(rate(&plain, false).await);
        s.push(rate(&sealed, true).await);
    }
    let (p, s) = (median(p), median(s));
    println!("plain_rt_per_s={p:.0}");
    println!("auth_rt_per_s={s:.0}");
    println!("auth_cost_percent={:.1}", 100.0 * (1.0 - s / p));
    println!("plain_connect_ms={:.2}", connect_ms(&plain, false).await);
    println!("auth_connect_ms={:.2}", connect_ms(&sealed, true).await);
}
