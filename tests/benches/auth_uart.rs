//! Benchmark (not a test): what authenticated and encrypted links cost on
//! a serial link, in one run. Three qemu-mps2 satellites (one firmware
//! built here by `moat build`), each linked on its UART0 (SerialPacker
//! framing + the reliable layer, QEMU's serial as a TCP socket): one as
//! built (`a` off, the serial default), one with `a: true`, one with `a:
//! true, e: true` (docs/auth.md). The host side is mux-runtime's link
//! code, as `moat` uses it.
//!
//! - round trips/s: `ping` one at a time for 2 s, alternating the three
//!   nodes, 3 rounds each; the median round.
//! - connect time: link up (reset handshake, then the auth handshake) to
//!   the first answer, median of 5.
//!
//! Prints `key=value` lines for bench/run.
//!
//!     cargo bench -p moat-e2e --bench auth_uart

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use moat_e2e::bench::{first_answer_ms, median, node_auth, ping_rate, Mode};
use moat_e2e::{e2e_dir, moat, run_ok};
use mux_runtime::framing::SerialPackerConfig;
use mux_runtime::link::{self, ConnectCtx, LinkSpec, SerialSpec};
use mux_runtime::msgpack::{self, Limits};
use mux_runtime::{reliable, Value};

const ROUND: Duration = Duration::from_secs(2);

/// The qemu-mps2 firmware and its built `moat.cfg`, made once.
fn build() -> anyhow::Result<PathBuf> {
    let root = e2e_dir().join("qemu-auth-bench");
    std::fs::create_dir_all(&root)?;
    std::fs::write(
        root.join("moat.toml"),
        "[project]\nname = \"bench\"\n\n[nodes.q]\nboard = \"qemu-mps2\"\nport = \"tcp:127.0.0.1:1\"\n",
    )?;
    let out = run_ok(moat(&root).args(["build", "--node", "q", "--json"]))?;
    if !String::from_utf8_lossy(&out.stdout).contains("firmware.elf") {
        bail!("moat build printed no firmware.elf");
    }
    Ok(root.join(".moat/build/q"))
}

/// `cfg` with the bench's key and identity, and `a`/`e` on its uart link.
fn configure(cfg: &Value, mode: Mode) -> Value {
    let Value::Map(pairs) = cfg else {
        panic!("moat.cfg is not a map: {cfg}")
    };
    let mut out: Vec<(Value, Value)> = Vec::new();
    for (k, v) in pairs {
        match (k.as_str(), v) {
            (Some("auth"), _) => {}
            (Some("link"), Value::Map(kinds)) => {
                let mut kinds = kinds.clone();
                for (kind, settings) in kinds.iter_mut() {
                    if let (Some("uart"), Value::Map(s)) = (kind.as_str(), settings) {
                        s.retain(|(k, _)| !matches!(k.as_str(), Some("a" | "e")));
                        s.extend(mode.link_keys().map(|(k, v)| (k.into(), v)));
                    }
                }
                out.push((k.clone(), Value::Map(kinds)));
            }
            _ => out.push((k.clone(), v.clone())),
        }
    }
    out.push(("auth".into(), node_auth()));
    Value::Map(out)
}

/// One QEMU in a folder of its own; killed on drop.
struct Emulator {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Emulator {
    fn start(built: &Path, mode: Mode) -> anyhow::Result<Emulator> {
        let dir = tempfile::Builder::new()
            .prefix("moat-auth-uart-")
            .tempdir()?;
        let fw = dir.path().join("firmware.elf");
        std::fs::copy(built.join("firmware/firmware.elf"), &fw)?;
        let cfg =
            msgpack::decode_exact(&std::fs::read(built.join("moat.cfg"))?, &Limits::default())
                .context("the built moat.cfg")?;
        std::fs::write(
            dir.path().join("moat.cfg"),
            msgpack::to_vec(&configure(&cfg, mode)),
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let console = moat::emulator::qemu::Console::File(dir.path().join("console.log"));
        let child = moat::emulator::qemu::command(&fw, port, &console, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start qemu-system-arm")?;
        let emu = Emulator {
            child,
            port,
            _dir: dir,
        };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("QEMU never listened on port {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(emu)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(e: &Emulator, mode: Mode) -> mux_runtime::endpoint::Endpoint {
    let ctx = ConnectCtx::new("bench", mode.host(), Duration::from_secs(30));
    let spec = LinkSpec::Serial(SerialSpec {
        path: format!("tcp:127.0.0.1:{}", e.port),
        baud: 115200,
        packer: SerialPackerConfig {
            max_packet: 255,
            ..SerialPackerConfig::default()
        },
        reliable: reliable::Config {
            window: 8,
            timeout_ms: 1000,
            retries: 5,
        },
    });
    link::connect_once(&spec, &ctx)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
        .endpoint
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let built = build()?;
    let nodes = [
        ("plain", Emulator::start(&built, Mode::Plain)?, Mode::Plain),
        ("auth", Emulator::start(&built, Mode::Auth)?, Mode::Auth),
        (
            "enc",
            Emulator::start(&built, Mode::Encrypted)?,
            Mode::Encrypted,
        ),
    ];
    let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); nodes.len()];
    for _ in 0..3 {
        for (k, (_, e, mode)) in nodes.iter().enumerate() {
            rounds[k].push(ping_rate(connect(e, *mode), ROUND, "hi").await);
        }
    }
    let rates: Vec<f64> = rounds.into_iter().map(median).collect();
    for (k, (name, _, _)) in nodes.iter().enumerate() {
        println!("uart_{name}_rt_per_s={:.0}", rates[k]);
    }
    println!(
        "uart_auth_cost_percent={:.1}",
        100.0 * (1.0 - rates[1] / rates[0])
    );
    println!(
        "uart_enc_cost_percent={:.1}",
        100.0 * (1.0 - rates[2] / rates[0])
    );
    for (name, e, mode) in &nodes {
        println!(
            "uart_{name}_connect_ms={:.2}",
            first_answer_ms(5, Duration::from_millis(100), || connect(e, *mode)).await
        );
    }
    Ok(())
}
