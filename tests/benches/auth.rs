//! Benchmark (not a test): what authenticated and encrypted links cost, in
//! one run. Three unix-port satellites (256 KiB heap) on TCP: one with `a:
//! false` (loopback), one authenticating with a node key, one also
//! encrypting (`e: true`; docs/auth.md); the host side is mux-runtime's
//! link code, as `moat` uses it.
//!
//! - round trips/s: `ping` one at a time for 2 s, alternating the three
//!   nodes, 3 rounds each; the median round. Once with a 2-byte `m`, once
//!   with 512 bytes (encryption costs per 32 bytes).
//! - connect time: TCP connect to the endpoint being ready (with the
//!   handshake when authenticating), median of 15.
//!
//! Prints `key=value` lines for bench/run.
//!
//!     cargo bench -p moat-e2e --bench auth

use std::time::Duration;

use moat_e2e::bench::{first_answer_ms, median, node_auth, ping_rate, Mode};
use moat_e2e::node::{kw, Node};
use mux_runtime::link::{self, ConnectCtx, LinkSpec};
use mux_runtime::Value;

const ROUND: Duration = Duration::from_secs(2);

fn node(mode: Mode) -> Node {
    let mut n = Node::new(256);
    let mut link = vec![("h", "127.0.0.1".into()), ("p", n.port.into())];
    link.extend(mode.link_keys());
    let mut cfg = vec![("link", kw([("tcp", Value::map(link))]))];
    if mode != Mode::Plain {
        cfg.push(("auth", node_auth()));
    }
    n.write_cfg("moat.cfg", &Value::map(cfg));
    n.start();
    n.connect_port(n.port); // listening
    n
}

async fn connect(n: &Node, mode: Mode) -> mux_runtime::endpoint::Endpoint {
    let ctx = ConnectCtx::new("bench", mode.host(), Duration::from_secs(10));
    let spec = LinkSpec::Tcp {
        addr: format!("127.0.0.1:{}", n.port),
    };
    link::connect_once(&spec, &ctx)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
        .endpoint
}

#[tokio::main]
async fn main() {
    let nodes = [
        ("plain", node(Mode::Plain), Mode::Plain),
        ("auth", node(Mode::Auth), Mode::Auth),
        ("enc", node(Mode::Encrypted), Mode::Encrypted),
    ];
    let big = "x".repeat(512);
    for (size, m) in [("", "hi"), ("_512", big.as_str())] {
        let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); nodes.len()];
        for _ in 0..3 {
            for (k, (_, n, mode)) in nodes.iter().enumerate() {
                rounds[k].push(ping_rate(connect(n, *mode), ROUND, m).await);
            }
        }
        let rates: Vec<f64> = rounds.into_iter().map(median).collect();
        for (k, (name, _, _)) in nodes.iter().enumerate() {
            println!("{name}{size}_rt_per_s={:.0}", rates[k]);
        }
        println!(
            "auth{size}_cost_percent={:.1}",
            100.0 * (1.0 - rates[1] / rates[0])
        );
        println!(
            "enc{size}_cost_percent={:.1}",
            100.0 * (1.0 - rates[2] / rates[0])
        );
    }
    for (name, n, mode) in &nodes {
        println!(
            "{name}_connect_ms={:.2}",
            first_answer_ms(15, Duration::from_millis(20), || connect(n, *mode)).await
        );
    }
}
