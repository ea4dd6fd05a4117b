//! What the benchmarks in `tests/benches/` measure the same way: a ping
//! rate over an open endpoint, the time from connecting to the first
//! answer, and the median of rounds.

use std::future::Future;
use std::time::{Duration, Instant};

use mux_runtime::auth::AuthConfig;
use mux_runtime::endpoint::Endpoint;
use mux_runtime::Value;

use crate::node::kw;

/// The node key of every bench node.
pub const KEY: [u8; 32] = [7; 32];
/// The project id of every bench node.
pub const PROJECT: &str = "00112233aabbccdd";

/// How a bench node's link is secured.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Auth,
    Encrypted,
}

impl Mode {
    /// The node's link settings `a` and `e`.
    pub fn link_keys(self) -> [(&'static str, Value); 2] {
        [
            ("a", (self != Mode::Plain).into()),
            ("e", (self == Mode::Encrypted).into()),
        ]
    }

    /// The host side's auth config (`None` for a plain link).
    pub fn host(self) -> Option<AuthConfig> {
        (self != Mode::Plain).then(|| {
            AuthConfig::new(vec![KEY], "bench", PROJECT, "bench").encrypted(self == Mode::Encrypted)
        })
    }
}

/// The node config's `auth` section for [`KEY`] and [`PROJECT`].
pub fn node_auth() -> Value {
    kw([
        ("k", Value::Bin(KEY.to_vec())),
        ("n", "bench".into()),
        ("p", PROJECT.into()),
        ("q", "bench".into()),
    ])
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `ping` with `m`, one at a time for `round`, over a fresh endpoint from
/// `connect` (closed after): round trips per second.
pub async fn ping_rate<F: Future<Output = Endpoint>>(connect: F, round: Duration, m: &str) -> f64 {
    let ep = connect.await;
    let t = Instant::now();
    let mut k = 0u64;
    while t.elapsed() < round {
        ep.call(["ping"], kw([("m", m.into())]))
            .await
            .expect("ping");
        k += 1;
    }
    ep.close();
    k as f64 / t.elapsed().as_secs_f64()
}

/// Connect and first `ping` answered, `n` times with `pause` between:
/// the median in milliseconds.
pub async fn first_answer_ms<F, Fut>(n: usize, pause: Duration, connect: F) -> f64
where
    F: Fn() -> Fut,
    Fut: Future<Output = Endpoint>,
{
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let ep = connect().await;
        ep.call(["ping"], Value::Nil).await.expect("first ping");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        ep.close();
        tokio::time::sleep(pause).await;
    }
    median(times)
}
