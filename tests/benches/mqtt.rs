//! Benchmark (not a test): what the MQTT bridge costs, in one run. The
//! e2e setup of tests/mqtt.rs (two unix nodes on TCP, each held by its own
//! `moat mux --mqtt`, one mosquitto); every request goes to mux A, for
//! node `a` (held by A: the local baseline) or node `b` (held by B:
//! through the broker).
//!
//! - round trip: `ping` one at a time, alternating local and bridged
//!   rounds of 1 s, 3 each; the median round.
//! - requests/s with 16 in flight: 3 000 pings each way.
//! - CPU per 1 000 requests (user + system, from /proc) of the broker and
//!   of both muxes during the bridged 16-in-flight run, and of mux A
//!   during the local one.
//!
//! Prints `key=value` lines for bench/run.
//!
//!     cargo bench -p moat-e2e --bench mqtt

use std::time::{Duration, Instant};

use futures::StreamExt;
use mux_runtime::endpoint::Endpoint;

#[path = "../mqtt_hosts.rs"]
mod hosts;
use hosts::{kw, Hosts};

const ROUND: Duration = Duration::from_secs(1);
const IN_FLIGHT: usize = 16;
const REQUESTS: usize = 3000;

/// CPU time used by `pid` so far (utime + stime).
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split(' ')
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(fields.iter().sum::<u64>() as f64 / tick)
}

async fn round(c: &Endpoint, node: &str) -> f64 {
    let hi = kw(&[("m", 1.into())]);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < ROUND {
        c.call([node, "ping"], hi.clone()).await.unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn in_flight(c: &Endpoint, node: &str) -> f64 {
    let start = Instant::now();
    let done = futures::stream::iter(0..REQUESTS as i64)
        .map(|i| {
            let c = c.clone();
            let node = node.to_owned();
            async move {
                c.call([node.as_str(), "ping"], kw(&[("m", i.into())]))
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .count()
        .await;
    assert_eq!(done, REQUESTS);
    REQUESTS as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(h) = Hosts::start("") else {
        eprintln!("mosquitto or the build tools are missing");
        std::process::exit(1);
    };
    let (ca, _cb) = h.wait_all_up().await;
    // Warm up both paths.
    round(&ca, "a").await;
    round(&ca, "b").await;
    let (mut local, mut bridged) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        local.push(round(&ca, "a").await);
        bridged.push(round(&ca, "b").await);
    }
    let (l, b) = (median(local), median(bridged));
    println!("local_rt_per_s={l:.0}");
    println!("bridge_rt_per_s={b:.0}");
    println!("local_rt_us={:.0}", 1e6 / l);
    println!("bridge_rt_us={:.0}", 1e6 / b);

    let pids = [
        h.broker.pid().expect("broker runs"),
        h.muxes[0].as_ref().expect("mux A runs").id(),
        h.muxes[1].as_ref().expect("mux B runs").id(),
    ];
    let before_local: Vec<Duration> = pids.iter().map(|p| cpu(*p)).collect();
    let local_rps = in_flight(&ca, "a").await;
    let between: Vec<Duration> = pids.iter().map(|p| cpu(*p)).collect();
    let bridge_rps = in_flight(&ca, "b").await;
    let after: Vec<Duration> = pids.iter().map(|p| cpu(*p)).collect();
    let per_1000 = |from: Duration, to: Duration| {
        (to - from).as_secs_f64() * 1000.0 * 1000.0 / REQUESTS as f64
    };
    println!("local_req_per_s={local_rps:.0}");
    println!("bridge_req_per_s={bridge_rps:.0}");
    println!(
        "local_mux_cpu_ms_per_1000={:.0}",
        per_1000(before_local[1], between[1])
    );
    println!(
        "broker_cpu_ms_per_1000={:.0}",
        per_1000(between[0], after[0])
    );
    println!(
        "mux_a_cpu_ms_per_1000={:.0}",
        per_1000(between[1], after[1])
    );
    println!(
        "mux_b_cpu_ms_per_1000={:.0}",
        per_1000(between[2], after[2])
    );
}
