//! Two unix nodes `a` and `b` on TCP links (`moat run`), each held by its
//! own `moat mux --node … --mqtt URL` on its own socket, one mosquitto:
//! "several hosts" on one machine (tests/mqtt.rs, the mqtt bench).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::Context;
use moat_e2e::broker::{mosquitto_present, openssl_present, Broker};
use moat_e2e::{copy_tree, moat, run_ok};
use mux_runtime::endpoint::Endpoint;
use mux_runtime::Value;
use tokio::time::timeout;

/// Bounds a failure; a working setup never comes near it.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A test app in each node: echo, a long call, and a call up the node's
/// link (resolved from its mux's root: node to node across hosts).
const TAPP: &str = r#"
import asyncio
from app import App


class T(App):
    def cmd_who(self):
        return self.root.cfg.get("who")

    async def cmd_nap(self, ms=60000):
        await asyncio.sleep_ms(ms)
        return ms

    async def cmd_ask(self, p):
        return await self.root.call(p)

    def cmd_flag(self, v=None):
        if v is not None:
            self.f = v
        return getattr(self, "f", False)
"#;

pub fn kw(pairs: &[(&str, Value)]) -> Value {
    Value::map(pairs.iter().map(|(k, v)| (*k, v.clone())))
}

/// Two nodes, two muxes, one broker.
pub struct Hosts {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub broker: Broker,
    /// `moat mux` holding `a` (index 0) and `b` (index 1).
    pub muxes: Vec<Option<Child>>,
    pub sockets: Vec<PathBuf>,
    runners: Vec<Child>,
}

pub const NODES: [&str; 2] = ["a", "b"];

impl Hosts {
    /// `None` (the test returns, said on stderr) when mosquitto or the
    /// build tools are missing outside CI.
    pub fn start(broker_config: &str) -> Option<Hosts> {
        Hosts::start_with(broker_config, "")
    }

    /// `mqtt_toml`: extra lines of the project's `[mqtt]`.
    pub fn start_with(broker_config: &str, mqtt_toml: &str) -> Option<Hosts> {
        if !mosquitto_present() || !moat_e2e::build_tools_present() {
            return None;
        }
        let broker = Broker::start(broker_config).unwrap();
        Some(Hosts::try_start(broker, mqtt_toml).unwrap())
    }

    /// The same with a TLS broker (`mqtts://localhost:PORT`), its CA in
    /// the project's `[mqtt] ca`.
    pub fn start_tls() -> Option<Hosts> {
        if !mosquitto_present() || !openssl_present() || !moat_e2e::build_tools_present() {
            return None;
        }
        let broker = Broker::start_tls("").unwrap();
        let ca = broker
            .pki
            .as_ref()
            .expect("a TLS broker")
            .ca
            .display()
            .to_string();
        Some(Hosts::try_start(broker, &format!("ca = \"{ca}\"\n")).unwrap())
    }

    fn try_start(broker: Broker, mqtt_toml: &str) -> anyhow::Result<Hosts> {
        moat_e2e::unix_satellite()?;
        let sat = moat_e2e::satellite_project()?;
        let dir = tempfile::Builder::new().prefix("moat-mqtt-").tempdir()?;
        let root = dir.path().join("proj");
        copy_tree(&sat.join("apps"), &root.join("apps"))?;
        // keep_alive 5 (rumqttc's least): a killed mux's last will comes within 7.5 s.
        let mut toml = String::from(
            "[project]\nname = \"mqtte2e\"\n[micropython]\nversion = \"1.25.0\"\n\
             [apps]\npaths = [\"apps\"]\n[mqtt]\nkeep_alive = 5\n",
        );
        toml.push_str(mqtt_toml);
        for name in NODES {
            let port = moat_e2e::node::free_port();
            toml.push_str(&format!(
                "[nodes.{name}]\nboard = \"unix\"\n\
                 link = {{ kind = \"tcp\", host = \"127.0.0.1\", port = {port} }}\n\
                 [nodes.{name}.config]\napps = {{ fs = \"fs.Files\", c = \"counter.Counter\", t = \"tapp.T\" }}\n\
                 c = {{ step = 1, ms = 20 }}\nwho = \"{name}\"\n"
            ));
        }
        std::fs::write(root.join("moat.toml"), toml)?;
        let built = sat.join(".moat/build/demo");
        for name in NODES {
            let to = root.join(".moat/build").join(name);
            copy_tree(&built.join("firmware"), &to.join("firmware"))?;
            std::fs::copy(built.join("record.json"), to.join("record.json"))?;
        }
        for name in NODES {
            // before flashing: the build checks the apps it names
            let dir = root.join(".moat/nodes").join(name);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("tapp.py"), TAPP)?;
        }
        run_ok(moat(&root).arg("flash"))?;
        let mut hosts = Hosts {
            _dir: dir,
            root,
            broker,
            muxes: Vec::new(),
            sockets: Vec::new(),
            runners: Vec::new(),
        };
        for name in NODES {
            let runner = moat(&hosts.root)
                .args(["run", "--node", name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting moat run")?;
            hosts.runners.push(runner);
        }
        for (i, name) in NODES.iter().enumerate() {
            let socket = hosts._dir.path().join(format!("mux-{name}.sock"));
            hosts.sockets.push(socket);
            hosts.muxes.push(None);
            hosts.start_mux(i)?;
        }
        Ok(hosts)
    }

    /// Starts the mux holding `NODES[i]` (named `m<node>` on the broker).
    pub fn start_mux(&mut self, i: usize) -> anyhow::Result<()> {
        let node = NODES[i];
        let mux = moat(&self.root)
            .args(["mux", "--node", node, "--name", &format!("m{node}")])
            .args(["--mqtt", &self.broker.url(), "--socket"])
            .arg(&self.sockets[i])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting moat mux")?;
        self.muxes[i] = Some(mux);
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::os::unix::net::UnixStream::connect(&self.sockets[i]).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "moat mux did not open {}",
                self.sockets[i].display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub async fn client(&self, i: usize) -> Endpoint {
        Endpoint::connect_unix(&self.sockets[i]).await.unwrap()
    }

    /// Waits until `mux.ls` of `client` shows `node` in `state`; returns
    /// its entry.
    pub async fn wait_state(&self, client: &Endpoint, node: &str, state: &str) -> Value {
        timeout(PATIENCE, async {
            loop {
                let ls = client.call(["mux", "ls"], Value::Nil).await.unwrap();
                if let Some(entry) = ls.get(node) {
                    if entry.get("state") == Some(&state.into()) {
                        return entry.clone();
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("node `{node}` never became {state}"))
    }

    /// Both muxes see both nodes up.
    pub async fn wait_all_up(&self) -> (Endpoint, Endpoint) {
        let (ca, cb) = (self.client(0).await, self.client(1).await);
        for c in [&ca, &cb] {
            for n in NODES {
                self.wait_state(c, n, "up").await;
            }
        }
        (ca, cb)
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) mux `i`: a host that hangs.
    pub fn freeze_mux(&self, i: usize, frozen: bool) {
        if let Some(mux) = &self.muxes[i] {
            let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(mux.id() as i32, sig) };
        }
    }

    pub fn signal_mux(&mut self, i: usize, sig: i32) {
        if let Some(mut mux) = self.muxes[i].take() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(mux.id() as i32, sig) };
            let _ = mux.wait();
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..self.muxes.len() {
            // A frozen mux would not act on SIGTERM.
            self.freeze_mux(i, false);
            self.signal_mux(i, libc::SIGTERM);
        }
        for runner in &mut self.runners {
            // SAFETY: kill(2) of our own child; `moat run` passes it on.
            unsafe { libc::kill(runner.id() as i32, libc::SIGTERM) };
            let _ = runner.wait();
        }
        self.broker.kill();
    }
}
