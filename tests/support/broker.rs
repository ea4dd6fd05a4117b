//! A real MQTT broker for tests: Debian's mosquitto, started on a free
//! loopback port with a config file the test writes, killed on drop (also
//! when the test panics).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where mosquitto is: on PATH, else Debian's /usr/sbin (not on a user's
/// PATH).
pub fn mosquitto_bin() -> Option<PathBuf> {
    if crate::on_path("mosquitto") {
        return Some(PathBuf::from("mosquitto"));
    }
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    sbin.is_file().then_some(sbin)
}

/// Whether mosquitto is installed. Under `CI=true` a missing one fails the
/// test (`.ci/run` installs it); otherwise the test says why and returns.
pub fn mosquitto_present() -> bool {
    if mosquitto_bin().is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!("CI=true but mosquitto is missing (apt-get install mosquitto)");
    }
    eprintln!("SKIPPED: mosquitto missing; apt-get install mosquitto to run this test");
    false
}

/// A running mosquitto.
pub struct Broker {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    extra: String,
}

impl Broker {
    /// Starts mosquitto on a free port; `extra` lines go into its config
    /// (e.g. `max_packet_size 4096`).
    pub fn start(extra: &str) -> anyhow::Result<Broker> {
        let mut b = Broker {
            dir: tempfile::Builder::new().prefix("moat-mqtt-").tempdir()?,
            port: crate::node::free_port(),
            child: None,
            extra: extra.to_owned(),
        };
        b.launch()?;
        Ok(b)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 log_dest stderr\nlog_type error\nlog_type warning\nset_tcp_nodelay true\n{}\n",
                self.port, self.extra
            ),
        )?;
        let bin = mosquitto_bin().context("mosquitto is not installed")?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting mosquitto")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("mosquitto exited at start ({status})");
            }
            if Instant::now() > deadline {
                bail!("mosquitto does not listen on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker (as a crash would: no goodbyes).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
