//! Flashing firmware onto real devices, one module per board flash method:
//!
//! - [`espflash`]: the ESP32 family through the espflash library;
//! - [`esp8266_rom`]: our own client of the ESP8266 ROM loader (espflash
//!   dropped the ESP8266);
//! - [`uf2`]: UF2 images copied onto a bootloader drive (RP2040);
//! - `probe` (cargo feature `probe-rs`): SWD/JTAG debug probes.
//!
//! [`plan`] turns a node's build into a [`FlashPlan`] (what gets written
//! where; `moat flash --plan --json` prints it) and [`execute`] carries it
//! out, reporting through [`Progress`]. Nothing is reported as success
//! unless every byte was written (and, where the method can, verified).

pub mod esp8266_rom;
pub mod espflash;
#[cfg(feature = "probe-rs")]
pub mod probe;
pub mod uf2;

use crate::board::{Board, Flash};
use crate::project::Project;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Progress of a flash operation, rendered by the CLI (indicatif) or
/// ignored ([`Silent`]).
pub trait Progress {
    /// A new phase (`write 0x1000`, `copy firmware.uf2`) of `total` bytes
    /// (0: unknown).
    fn start(&mut self, label: &str, total: u64);
    /// `done` of the phase's `total` bytes are through.
    fn set(&mut self, done: u64);
    /// The phase ended; `outcome` says how (`written`, `verified`,
    /// `unchanged, skipped`).
    fn finish(&mut self, outcome: &str);
    /// A line for the user that is not a phase (`detected esp32`).
    fn note(&mut self, message: &str);
}

/// Progress that goes nowhere (tests, `--json`).
pub struct Silent;

impl Progress for Silent {
    fn start(&mut self, _: &str, _: u64) {}
    fn set(&mut self, _: u64) {}
    fn finish(&mut self, _: &str) {}
    fn note(&mut self, _: &str) {}
}

/// Why flashing failed. Every message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("serial port {port} does not exist: plug the board in, or name its port with `--port` (or `port = …` in the node's table in moat.toml)")]
    PortMissing { port: String },
    #[error("serial port {port} is busy: another program holds it (`moat mux`, a serial monitor, another flash); stop it and retry")]
    PortBusy { port: String },
    #[error("cannot open serial port {port}: {reason}: check its permissions (group `dialout`) or name another port with `--port`")]
    PortOpen { port: String, reason: String },
    #[error("node `{node}` names no serial port: set `port = \"/dev/ttyUSB0\"` in [nodes.{node}] of moat.toml or pass `--port`")]
    NoPort { node: String },
    #[error("no answer from the ROM loader on {port}: put the chip into download mode (hold BOOT/GPIO0 low while resetting; with an adapter that has DTR/RTS use `--before default-reset`), and check the port")]
    NoAnswer { port: String },
    #[error("wrong chip on {port}: the board expects {expected} but the device is {found}: give the node the right `board` in moat.toml, or plug in the right device")]
    WrongChip {
        port: String,
        expected: String,
        found: String,
    },
    #[error("{what} does not fit: it ends at {end:#x} but the flash holds {size:#x} bytes ({} KiB): build a smaller firmware (fewer frozen apps) or use a board with more flash", size / 1024)]
    TooLarge { what: String, end: u64, size: u64 },
    #[error("verify failed for {what} at {offset:#x}: the flash does not hold what was written (nothing was reported as flashed); flash again, at a lower `--baud`; if it persists the flash chip may be worn")]
    VerifyFailed { what: String, offset: u32 },
    #[error("the device on {port} reported an error during {during}: {message}; reset the board into download mode and flash again")]
    Device {
        port: String,
        during: String,
        message: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl FlashError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> FlashError {
        FlashError::Io {
            what: what.into(),
            source,
        }
    }
}

/// One file written at one place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Write {
    /// The artefact's name as the board file lists it.
    pub name: String,
    pub file: PathBuf,
    /// Flash address (ESP: from the board file; UF2: where its blocks go).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    pub size: u64,
    pub sha256: String,
}

/// Where the firmware goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Destination {
    /// The node's folder (unix board).
    Local { dir: PathBuf },
    /// A serial port with an ESP ROM loader behind it.
    Serial {
        port: String,
        chip: String,
        /// The rate data is sent at after connecting at 115200.
        baud: u32,
        before: Before,
        after: After,
    },
    /// A UF2 bootloader drive (found at flash time when `drive` is None).
    Drive {
        volume: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        drive: Option<PathBuf>,
    },
    /// A UF2 file instead of a device (`--out`).
    File { path: PathBuf },
    /// A debug probe.
    Probe { chip: String },
}

/// One contiguous block a debug probe would program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Block {
    pub address: u64,
    pub size: u64,
    /// The flash region it lies in.
    pub region: String,
}

/// What `moat flash` would do for one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlashPlan {
    pub node: String,
    pub board: String,
    pub method: &'static str,
    pub destination: Destination,
    pub writes: Vec<Write>,
    /// How the result is checked.
    pub verify: String,
    /// probe-rs: the blocks its flash loader would program.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<Block>,
    /// The file the node's config (from moat.toml) is uploaded to over
    /// the link after flashing (`moat.cfg`); None for local boards, whose
    /// folder gets it directly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// How the chip is put into its ROM loader before flashing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Before {
    /// Toggle DTR/RTS (USB-serial adapters wired like the dev boards').
    #[default]
    DefaultReset,
    /// The USB-JTAG-serial reset of newer ESP32 chips.
    UsbReset,
    /// No reset: the chip is already in its ROM loader (adapters without
    /// DTR/RTS: hold BOOT while resetting by hand).
    NoReset,
    /// No reset and no sync (a loader that is already talking).
    NoResetNoSync,
}

/// What happens after flashing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum After {
    /// Reset through RTS: the new firmware starts.
    #[default]
    HardReset,
    /// Stay in the ROM loader.
    NoReset,
    /// Touch no reset line (adapters without DTR/RTS): the ESP32 stays in
    /// the flasher stub; the ESP8266 ROM is told to run the firmware.
    NoResetNoStub,
    /// Reset through the chip's watchdog (USB-JTAG-serial chips).
    WatchdogReset,
}

/// Choices from the command line.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Overrides the node's `port`.
    pub port: Option<String>,
    /// Data rate after connecting (default 460800 for espflash, 115200 for
    /// the ESP8266 ROM).
    pub baud: Option<u32>,
    pub before: Before,
    pub after: After,
    /// Flash through the ROM loader instead of the RAM stub (ESP32).
    pub no_stub: bool,
    /// Do not check what was written (ESP32 MD5).
    pub no_verify: bool,
    /// Write images even when the flash already holds them.
    pub no_skip: bool,
    /// UF2: write the image to this file instead of a drive.
    pub out: Option<PathBuf>,
    /// UF2: the bootloader drive's mount point (default: searched).
    pub drive: Option<PathBuf>,
}

/// What [`execute`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Per write: `written`, `verified`, `unchanged` (skipped).
    pub results: Vec<(String, String)>,
    /// Where the bytes went (the drive's file, the port).
    pub target: String,
    /// What remains to be checked by the caller (ESP8266: the build id
    /// through the link's `sys.info` after boot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_after_boot: Option<String>,
}

/// The plan for `node` with `board` and its built artefacts in
/// `build_dir` (`.moat/build/<node>/`, artefacts under `firmware/`).
pub fn plan_for(
    node: &str,
    node_port: Option<&str>,
    board: &Board,
    build_dir: &Path,
    opts: &Options,
) -> Result<FlashPlan, FlashError> {
    let mut writes = Vec::new();
    for a in &board.firmware {
        let file = build_dir.join("firmware").join(&a.path);
        let data = std::fs::read(&file).map_err(|e| {
            FlashError::Invalid(format!(
                "node `{node}`: cannot read the built firmware {}: {e}: run `moat build --node {node}` first",
                file.display()
            ))
        })?;
        writes.push(Write {
            name: a.path.clone(),
            file,
            offset: a.offset,
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(&data)),
        });
    }
    let budget = u64::from(board.flash_kb) * 1024;
    let total: u64 = writes.iter().map(|w| w.size).sum();
    if budget > 0 && total > budget && !matches!(board.flash, Flash::Local) {
        return Err(FlashError::TooLarge {
            what: format!("the firmware of node `{node}` ({total} bytes)"),
            end: total,
            size: budget,
        });
    }
    let port = || {
        opts.port
            .clone()
            .or_else(|| node_port.map(str::to_owned))
            .ok_or_else(|| FlashError::NoPort { node: node.into() })
    };
    let (destination, verify) = match &board.flash {
        Flash::Local => (
            Destination::Local {
                dir: build_dir.to_path_buf(),
            },
            "SHA-256 of the installed copy".to_owned(),
        ),
        Flash::Espflash { chip } => (
            Destination::Serial {
                port: port()?,
                chip: chip.clone(),
                baud: opts.baud.unwrap_or(espflash::DEFAULT_BAUD),
                before: opts.before,
                after: opts.after,
            },
            if opts.no_verify {
                "none (--no-verify)".to_owned()
            } else {
                "MD5 of each region, read back by the chip".to_owned()
            },
        ),
        Flash::Esp8266Rom => (
            Destination::Serial {
                port: port()?,
                chip: "esp8266".into(),
                baud: opts.baud.unwrap_or(esp8266_rom::DEFAULT_BAUD),
                before: opts.before,
                after: opts.after,
            },
            esp8266_rom::VERIFY_NOTE.to_owned(),
        ),
        Flash::Uf2 { volume, .. } => (
            match &opts.out {
                Some(path) => Destination::File { path: path.clone() },
                None => Destination::Drive {
                    volume: volume.clone(),
                    drive: opts.drive.clone(),
                },
            },
            "UF2 rules checked before copying; the bootloader checks each block".to_owned(),
        ),
        Flash::ProbeRs { chip } => (
            Destination::Probe { chip: chip.clone() },
            "probe-rs verifies after programming".to_owned(),
        ),
    };
    // probe-rs: the chip must be in its database and the data in its
    // flash, checked before anything else happens.
    #[cfg(feature = "probe-rs")]
    let blocks = match &board.flash {
        Flash::ProbeRs { chip } => probe::plan(chip, &writes)?.blocks,
        _ => Vec::new(),
    };
    #[cfg(not(feature = "probe-rs"))]
    let blocks = Vec::new();
    Ok(FlashPlan {
        node: node.to_owned(),
        board: board.name.clone(),
        method: board.flash.method(),
        destination,
        writes,
        verify,
        blocks,
        config: (!matches!(board.flash, Flash::Local))
            .then(|| crate::local_node::CONFIG_FILE.to_owned()),
    })
}

/// The plan for a node of `project`.
pub fn plan(
    project: &Project,
    node: &crate::manifest::Node,
    opts: &Options,
) -> Result<FlashPlan, FlashError> {
    let board = project.board_of(node);
    let mut plan = plan_for(
        &node.name,
        node.port.as_deref(),
        board,
        &crate::local_node::build_dir(project, &node.name),
        opts,
    )?;
    if let Destination::Local { dir } = &mut plan.destination {
        *dir = crate::local_node::node_dir(project, &node.name);
    }
    Ok(plan)
}

/// Carries out a plan for a non-local board.
pub fn execute(
    plan: &FlashPlan,
    board: &Board,
    opts: &Options,
    progress: &mut dyn Progress,
) -> Result<Outcome, FlashError> {
    let images = plan
        .writes
        .iter()
        .map(|w| {
            let data = std::fs::read(&w.file)
                .map_err(|e| FlashError::io(format!("cannot read {}", w.file.display()), e))?;
            Ok(Image {
                name: w.name.clone(),
                offset: w.offset.unwrap_or(0),
                data,
            })
        })
        .collect::<Result<Vec<_>, FlashError>>()?;
    match (&board.flash, &plan.destination) {
        (Flash::Espflash { chip }, Destination::Serial { port, baud, .. }) => {
            let serial = SerialOptions::from_options(port, *baud, opts);
            espflash::flash(chip, &images, &serial, progress)
        }
        (Flash::Esp8266Rom, Destination::Serial { port, baud, .. }) => {
            let serial = SerialOptions::from_options(port, *baud, opts);
            esp8266_rom::flash(&images, &serial, progress)
        }
        (Flash::Uf2 { volume, family }, dest) => {
            uf2::flash(&images, *family, volume, dest, board.flash_kb, progress)
        }
        #[cfg(feature = "probe-rs")]
        (Flash::ProbeRs { chip }, _) => probe::flash(chip, &plan.writes, progress),
        #[cfg(not(feature = "probe-rs"))]
        (Flash::ProbeRs { .. }, _) => Err(FlashError::Invalid(
            "this moat was built without probe-rs support (`--no-default-features`): reinstall it with the default features".into(),
        )),
        (flash, _) => Err(FlashError::Invalid(format!(
            "flash method `{}` is not flashed through this library",
            flash.method()
        ))),
    }
}

/// One artefact's bytes and where they go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub offset: u32,
    pub data: Vec<u8>,
}

/// Serial settings shared by the ESP methods.
#[derive(Clone, Debug)]
pub struct SerialOptions {
    pub port: String,
    /// Data rate after connecting at 115200.
    pub baud: u32,
    pub before: Before,
    pub after: After,
    /// ESP32: load the RAM stub (compressed writes, faster MD5).
    pub stub: bool,
    /// ESP32: check each region's MD5 after writing.
    pub verify: bool,
    /// ESP32: leave regions alone whose MD5 already matches.
    pub skip: bool,
}

impl SerialOptions {
    /// Settings for `port` with everything on (stub, verify, skip) and the
    /// default resets.
    pub fn new(port: impl Into<String>, baud: u32) -> SerialOptions {
        SerialOptions {
            port: port.into(),
            baud,
            before: Before::default(),
            after: After::default(),
            stub: true,
            verify: true,
            skip: true,
        }
    }

    fn from_options(port: &str, baud: u32, o: &Options) -> SerialOptions {
        SerialOptions {
            port: port.to_owned(),
            baud,
            before: o.before,
            after: o.after,
            stub: !o.no_stub,
            verify: !o.no_verify,
            skip: !o.no_skip,
        }
    }
}

/// Opens a serial port at 115200 baud, telling a missing port, a busy one
/// and other failures apart.
pub(crate) fn open_serial(port: &str) -> Result<serialport::TTYPort, FlashError> {
    if !Path::new(port).exists() {
        return Err(FlashError::PortMissing { port: port.into() });
    }
    serialport::new(port, 115_200)
        .timeout(std::time::Duration::from_secs(3))
        .open_native()
        .map_err(|e| match e.kind {
            serialport::ErrorKind::NoDevice => FlashError::PortBusy { port: port.into() },
            serialport::ErrorKind::Io(std::io::ErrorKind::NotFound) => {
                FlashError::PortMissing { port: port.into() }
            }
            _ => FlashError::PortOpen {
                port: port.into(),
                reason: e.description,
            },
        })
}

/// Checks that no image runs past the end of a flash of `size` bytes.
pub(crate) fn check_fits(images: &[Image], size: u64) -> Result<(), FlashError> {
    for i in images {
        let end = u64::from(i.offset) + i.data.len() as u64;
        if end > size {
            return Err(FlashError::TooLarge {
                what: format!("{} ({} bytes at {:#x})", i.name, i.data.len(), i.offset),
                end,
                size,
            });
        }
    }
    Ok(())
}
