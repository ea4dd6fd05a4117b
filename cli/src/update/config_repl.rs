//! The node's config files over MicroPython's raw REPL ([`crate::repl`]):
//! for a device the host cannot reach over its link yet. A freshly flashed
//! node has no `moat.cfg`, so it talks on its console with the built-in
//! default link, not the link the manifest names; `moat flash` and
//! `moat cfg upload --repl` give it its config this way.
//!
//! Written: `moat.cfg` and the fallback config (each to a temporary name,
//! then renamed); removed: the crash marker `moat.run` (the Ctrl-C that
//! reached the REPL stopped the runtime; the next boot must read
//! `moat.cfg`, not the fallback). Then a soft reset starts the runtime
//! with the new config.

use crate::build::record::Record;
use crate::local_node::{self, CONFIG_FILE, FALLBACK_FILE};
use crate::manifest::Node;
use crate::repl::RawRepl;
use mux_runtime::msgpack;
use std::time::{Duration, Instant};

/// The crash marker the runtime writes at start (node-runtime `main.py`).
const RUN_MARKER: &str = "moat.run";

/// What [`install`] found out beyond writing the files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// With a build record to check against: the frozen modules whose
    /// hash on the device differs from the record (empty: the device runs
    /// that build).
    pub differing_modules: Option<Vec<String>>,
}

/// Installs `node`'s config over the raw REPL on the serial port `port`,
/// waiting up to `patience` for the port to appear and the REPL to answer
/// (a device that was just reset is still booting); with `record`, also
/// compares the firmware's `_hash` table with it.
pub fn install(
    port: &str,
    node: &Node,
    record: Option<&Record>,
    patience: Duration,
) -> anyhow::Result<Installed> {
    let config = node.config();
    let cfg = msgpack::to_vec(&config);
    let fallback = msgpack::to_vec(&local_node::fallback_config(&config));
    let until = Instant::now() + patience;
    let mut serial = loop {
        match crate::flash::open_serial(port) {
            Ok(s) => break s,
            // USB serial ports come back a moment after a reset
            Err(crate::flash::FlashError::PortMissing { .. }) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    };
    use serialport::SerialPort;
    serial.set_timeout(Duration::from_millis(100))?;
    let left = until.saturating_duration_since(Instant::now());
    let mut repl = RawRepl::enter(serial, port, left)?;
    let mut out = Installed::default();
    if let Some(rec) = record {
        let on_device = repl.frozen_hashes()?;
        let differing = rec
            .inputs
            .modules
            .iter()
            .filter(|(module, hex)| {
                let want = hex::decode(hex).unwrap_or_default();
                !on_device.iter().any(|(m, h)| m == *module && *h == want)
            })
            .map(|(module, _)| module.clone())
            .collect();
        out.differing_modules = Some(differing);
    }
    repl.write_file(CONFIG_FILE, &cfg)?;
    repl.write_file(FALLBACK_FILE, &fallback)?;
    repl.remove_file(RUN_MARKER)?;
    repl.soft_reset()?;
    Ok(out)
}
