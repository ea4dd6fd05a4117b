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
    /// Its TLS files, when its listener is TLS.
    pub pki: Option<Pki>,
}

/// A test CA and a certificate for `localhost` and 127.0.0.1 it signed,
/// made by `openssl` at test time (no key is ever committed).
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Whether openssl is installed. Under `CI=true` a missing one fails the
/// test (`.ci/run` installs it); otherwise the test says why and returns.
pub fn openssl_present() -> bool {
    if crate::on_path("openssl") {
        return true;
    }
    if std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!("CI=true but openssl is missing (apt-get install openssl)");
    }
    eprintln!("SKIPPED: openssl missing; apt-get install openssl to run this test");
    false
}

fn openssl(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Pki {
    /// A CA (`NAME-ca.pem`) and a server certificate signed by it, in `dir`.
    pub fn make(dir: &std::path::Path, name: &str) -> anyhow::Result<Pki> {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let (ca, ca_key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
        let (cert, key, csr) = (
            format!("{name}-server.pem"),
            format!("{name}-server.key"),
            format!("{name}-server.csr"),
        );
        let subj = format!("/CN=moat test CA {name}");
        let mut a = vec![
            "req", "-x509", "-days", "2", "-subj", &subj, "-keyout", &ca_key, "-out", &ca,
        ];
        a.extend(ec);
        a.extend([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &a)?;
        let mut a = vec![
            "req",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &key,
            "-out",
            &csr,
        ];
        a.extend(ec);
        openssl(dir, &a)?;
        let ext = format!("{name}-ext.cnf");
        std::fs::write(
            dir.join(&ext),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &cert,
                "-extfile",
                &ext,
            ],
        )?;
        // mosquitto started as root drops to its own user, who must read
        // them (test keys, thrown away with the folder).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        for f in [&ca, &cert, &key] {
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(Pki {
            ca: dir.join(ca),
            cert: dir.join(cert),
            key: dir.join(key),
        })
    }
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
            pki: None,
        };
        b.launch()?;
        Ok(b)
    }

    /// Starts mosquitto with a TLS listener, its certificate for
    /// `localhost` signed by a CA of its own ([`Broker::pki`]).
    pub fn start_tls(extra: &str) -> anyhow::Result<Broker> {
        let dir = tempfile::Builder::new().prefix("moat-mqtts-").tempdir()?;
        let pki = Pki::make(dir.path(), "broker")?;
        let mut b = Broker {
            extra: format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n{extra}",
                pki.ca.display(),
                pki.cert.display(),
                pki.key.display()
            ),
            dir,
            port: crate::node::free_port(),
            child: None,
            pki: Some(pki),
        };
        b.launch()?;
        Ok(b)
    }

    /// `mqtt://127.0.0.1:PORT`, or `mqtts://localhost:PORT` (the name its
    /// certificate has) when TLS.
    pub fn url(&self) -> String {
        match self.pki {
            Some(_) => format!("mqtts://localhost:{}", self.port),
            None => format!("mqtt://127.0.0.1:{}", self.port),
        }
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
