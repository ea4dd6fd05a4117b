//! The ESP32 family through the espflash library: each artefact at the
//! board file's offset, with the RAM stub (compressed writes), skip of
//! regions whose MD5 already matches, MD5 verification, a faster baud rate
//! after connecting, and the before/after reset choices (including none,
//! for adapters without DTR/RTS). Any port path is accepted (espflash's own
//! CLI refuses what does not look like a USB serial port; the library does
//! not).

use super::{check_fits, open_serial, After, Before, FlashError, Image, Outcome, Progress};
use ::espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use ::espflash::flasher::Flasher;
use ::espflash::image_format::Segment;
use ::espflash::target::{Chip, ProgressCallbacks};
use std::borrow::Cow;

/// The data rate after connecting, unless `--baud` says otherwise.
pub const DEFAULT_BAUD: u32 = 460_800;

/// The ROM's chip-detect magic of the ESP8266, which espflash no longer
/// knows: named in the wrong-chip error.
const ESP8266_MAGIC: u32 = 0xfff0_c101;

impl From<Before> for ResetBeforeOperation {
    fn from(b: Before) -> Self {
        match b {
            Before::DefaultReset => ResetBeforeOperation::DefaultReset,
            Before::UsbReset => ResetBeforeOperation::UsbReset,
            Before::NoReset => ResetBeforeOperation::NoReset,
            Before::NoResetNoSync => ResetBeforeOperation::NoResetNoSync,
        }
    }
}

impl From<After> for ResetAfterOperation {
    fn from(a: After) -> Self {
        match a {
            After::HardReset => ResetAfterOperation::HardReset,
            After::NoReset => ResetAfterOperation::NoReset,
            After::NoResetNoStub => ResetAfterOperation::NoResetNoStub,
            After::WatchdogReset => ResetAfterOperation::WatchdogReset,
        }
    }
}

/// Writes `images` to the `chip` (espflash's name: `esp32`, `esp32c3`, …)
/// on `opts.port`.
pub fn flash(
    chip: &str,
    images: &[Image],
    opts: &super::SerialOptions,
    progress: &mut dyn Progress,
) -> Result<Outcome, FlashError> {
    let expected: Chip = chip.parse().map_err(|_| {
        FlashError::Invalid(format!(
            "unknown espflash chip `{chip}` in the board file: use one of {}",
            known_chips()
        ))
    })?;
    let port = &opts.port;
    let serial = open_serial(port)?;
    let conn = Connection::new(
        serial,
        port_info(port),
        opts.after.into(),
        opts.before.into(),
        115_200,
    );
    progress.note(&format!("connecting to {port}"));
    let mut flasher = Flasher::connect(
        conn,
        opts.stub,
        opts.verify,
        opts.skip,
        Some(expected),
        Some(opts.baud),
    )
    .map_err(|e| map_error(e, port, chip, "connecting", None))?;
    progress.note(&format!(
        "connected: {} ({}), {} baud",
        flasher.chip(),
        if opts.stub { "stub" } else { "ROM loader" },
        opts.baud
    ));
    if let Ok(Some(size)) = flasher.flash_detect() {
        check_fits(images, u64::from(size.size()))?;
    }
    let segments: Vec<Segment> = images
        .iter()
        .map(|i| Segment {
            addr: i.offset,
            data: Cow::Owned(padded(&i.data)),
        })
        .collect();
    let mut cb = Callbacks {
        progress,
        images,
        current: None,
        chunks: 0,
        verifying: false,
        results: Vec::new(),
    };
    let result = flasher.write_bins_to_flash(&segments, &mut cb);
    let (current, results) = (cb.current, cb.results);
    if let Err(e) = result {
        if results.len() == images.len() {
            // Every image went through; only FLASH_END or the reset failed.
            return Err(FlashError::Invalid(format!(
                "every image was written{} to {port}, but finishing failed ({e}): \
                 press the board's reset button; with an adapter without DTR/RTS flash with \
                 `--after no-reset-no-stub`",
                if opts.verify { " and verified" } else { "" }
            )));
        }
        let during = match current {
            Some(i) => format!("writing {}", images[i].name),
            None => "finishing".to_owned(),
        };
        return Err(map_error(
            e,
            port,
            chip,
            &during,
            current.map(|i| &images[i]),
        ));
    }
    Ok(Outcome {
        results,
        target: port.clone(),
        check_after_boot: None,
    })
}

/// espflash writes whole words: pad with erased-flash bytes.
fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().next_multiple_of(4), 0xff);
    v
}

/// The USB ids of `port` when the OS knows them (they pick the reset
/// sequence for USB-JTAG-serial chips); zeros for anything else (a UART
/// adapter, a pty).
fn port_info(port: &str) -> serialport::UsbPortInfo {
    let found = serialport::available_ports()
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.port_name == port)
        .and_then(|p| match p.port_type {
            serialport::SerialPortType::UsbPort(info) => Some(info),
            _ => None,
        });
    found.unwrap_or(serialport::UsbPortInfo {
        vid: 0,
        pid: 0,
        serial_number: None,
        manufacturer: None,
        product: None,
        interface: None,
    })
}

fn map_error(
    e: ::espflash::Error,
    port: &str,
    chip: &str,
    during: &str,
    image: Option<&Image>,
) -> FlashError {
    use ::espflash::Error as E;
    match e {
        E::ChipMismatch(_, found) => FlashError::WrongChip {
            port: port.into(),
            expected: chip.into(),
            found,
        },
        E::ChipDetectError(msg) => {
            let esp8266 = format!("{ESP8266_MAGIC:#x}");
            FlashError::WrongChip {
                port: port.into(),
                expected: chip.into(),
                found: if msg.contains(&esp8266) {
                    "an esp8266 (use board `esp8266`)".into()
                } else {
                    format!("not an ESP chip espflash knows ({msg})")
                },
            }
        }
        E::VerifyFailed => FlashError::VerifyFailed {
            what: image.map_or_else(|| "an image".into(), |i| i.name.clone()),
            offset: image.map_or(0, |i| i.offset),
        },
        E::Connection(c) => {
            let text = c.to_string();
            if during == "connecting" {
                FlashError::NoAnswer { port: port.into() }
            } else {
                FlashError::Device {
                    port: port.into(),
                    during: during.into(),
                    message: text,
                }
            }
        }
        other => FlashError::Device {
            port: port.into(),
            during: during.into(),
            message: other.to_string(),
        },
    }
}

/// Adapts espflash's callbacks (per segment: init, chunk updates, verify,
/// finish) to [`Progress`], and records each segment's outcome.
struct Callbacks<'a> {
    progress: &'a mut dyn Progress,
    images: &'a [Image],
    current: Option<usize>,
    chunks: usize,
    verifying: bool,
    results: Vec<(String, String)>,
}

impl Callbacks<'_> {
    /// Segments are written in order and each ends with one `finish`
    /// (a skipped one gets no `init`): the current segment is the one
    /// after the last finished.
    fn next_index(&self) -> usize {
        self.results.len()
    }
}

impl ProgressCallbacks for Callbacks<'_> {
    fn init(&mut self, addr: u32, total: usize) {
        let idx = self.next_index();
        self.current = Some(idx);
        self.chunks = total.max(1);
        self.verifying = false;
        let name = self.images.get(idx).map_or("image", |i| i.name.as_str());
        let size = self.images.get(idx).map_or(0, |i| i.data.len() as u64);
        self.progress
            .start(&format!("write {name} at {addr:#x}"), size);
    }

    fn update(&mut self, current: usize) {
        if let Some(i) = self.current.and_then(|i| self.images.get(i)) {
            let done = (i.data.len() as u64 * current as u64) / self.chunks as u64;
            self.progress.set(done);
        }
    }

    fn verifying(&mut self) {
        self.verifying = true;
        self.progress.note("verifying (MD5)");
    }

    fn finish(&mut self, skipped: bool) {
        let idx = self.next_index();
        self.current = Some(idx);
        let name = self
            .images
            .get(idx)
            .map_or_else(|| "image".to_owned(), |i| i.name.clone());
        let outcome = if skipped {
            "unchanged"
        } else if self.verifying {
            "verified"
        } else {
            "written"
        };
        if skipped {
            self.progress.note(&format!("{name}: unchanged, skipped"));
        } else {
            self.progress.finish(outcome);
        }
        self.results.push((name, outcome.to_owned()));
    }
}

/// The lowercase names of the chips espflash supports, for error messages.
fn known_chips() -> String {
    [
        "esp32", "esp32c2", "esp32c3", "esp32c5", "esp32c6", "esp32h2", "esp32p4", "esp32s2",
        "esp32s3",
    ]
    .into_iter()
    .filter(|n| n.parse::<Chip>().is_ok())
    .collect::<Vec<_>>()
    .join(", ")
}
