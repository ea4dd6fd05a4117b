//! A client of the ESP8266 ROM loader (espflash dropped the ESP8266 in
//! 3.0). The protocol is small: SLIP-framed commands
//! `[0x00, op, len u16, checksum u32, data]`, answers
//! `[0x01, op, len u16, value u32, data…, status, error]`.
//! We use SYNC, READ_REG (chip detect), WRITE_REG (the SPI flash-ID
//! command), FLASH_BEGIN/DATA/END with 1 KiB blocks.
//!
//! The ROM has no MD5 command, so nothing is read back here: after boot the
//! node's build id is checked through the link's `sys.info` (see
//! [`VERIFY_NOTE`]).
//!
//! The protocol itself is sans-I/O ([`SlipDecoder`], [`encode_command`],
//! [`Response::parse`]); [`Rom`] drives it over a serial port.

use super::{check_fits, open_serial, After, Before, FlashError, Image, Outcome, Progress};
use serialport::SerialPort;
use std::time::{Duration, Instant};

/// The ROM talks at 115200; it can be switched faster, but many ESP8266
/// boards' adapters are not reliable above it, so that is the default.
pub const DEFAULT_BAUD: u32 = 115_200;

/// What the plan and the output say about verification.
pub const VERIFY_NOTE: &str = "the ESP8266 ROM has no MD5: nothing is read back while flashing; \
     after boot the node's build id is checked through the link's sys.info";

/// Flash write block size of the ROM loader.
pub const BLOCK: usize = 0x400;
const SECTOR: u32 = 0x1000;

/// Command opcodes.
pub mod op {
    pub const FLASH_BEGIN: u8 = 0x02;
    pub const FLASH_DATA: u8 = 0x03;
    pub const FLASH_END: u8 = 0x04;
    pub const SYNC: u8 = 0x08;
    pub const WRITE_REG: u8 = 0x09;
    pub const READ_REG: u8 = 0x0a;
}

/// The register whose value tells the chip family.
pub const CHIP_MAGIC_REG: u32 = 0x4000_1000;
pub const ESP8266_MAGIC: u32 = 0xfff0_c101;

/// SPI controller registers of the ESP8266 (for the flash-ID command).
const SPI_BASE: u32 = 0x6000_0200;
const SPI_USR: u32 = SPI_BASE + 0x1c;
const SPI_USR1: u32 = SPI_BASE + 0x20;
const SPI_USR2: u32 = SPI_BASE + 0x24;
const SPI_W0: u32 = SPI_BASE + 0x40;
const SPI_CMD_USR: u32 = 1 << 18;
const SPIFLASH_RDID: u32 = 0x9f;

/// Names a chip magic (for the wrong-chip error).
pub fn chip_name(magic: u32) -> String {
    match magic {
        ESP8266_MAGIC => "esp8266".into(),
        0x00f0_1d83 => "an esp32 (use board `esp32`)".into(),
        0x0000_07c6 => "an esp32-s2".into(),
        0x6921_506f | 0x1b31_506f | 0x4881_606f | 0x4361_606f => "an esp32-c3".into(),
        m => format!("an unknown chip (magic {m:#010x})"),
    }
}

const END: u8 = 0xc0;
const ESC: u8 = 0xdb;
const ESC_END: u8 = 0xdc;
const ESC_ESC: u8 = 0xdd;

/// SLIP-encodes one frame.
pub fn slip_encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload.len() / 64 + 2);
    out.push(END);
    for &b in payload {
        match b {
            END => out.extend([ESC, ESC_END]),
            ESC => out.extend([ESC, ESC_ESC]),
            b => out.push(b),
        }
    }
    out.push(END);
    out
}

/// Splits a byte stream into SLIP frames. Bytes outside frames (boot
/// messages) are dropped; a frame longer than `max` is discarded.
#[derive(Debug)]
pub struct SlipDecoder {
    buf: Vec<u8>,
    in_frame: bool,
    escaped: bool,
    overflow: bool,
    max: usize,
}

impl SlipDecoder {
    pub fn new(max: usize) -> SlipDecoder {
        SlipDecoder {
            buf: Vec::new(),
            in_frame: false,
            escaped: false,
            overflow: false,
            max,
        }
    }

    /// Feeds one byte; returns a complete frame's payload.
    pub fn push(&mut self, b: u8) -> Option<Vec<u8>> {
        if b == END {
            if self.in_frame && !self.buf.is_empty() && !self.overflow {
                self.in_frame = false;
                return Some(std::mem::take(&mut self.buf));
            }
            // An END starts a frame (or ends an empty/oversized one).
            self.in_frame = true;
            self.buf.clear();
            self.escaped = false;
            self.overflow = false;
            return None;
        }
        if !self.in_frame {
            return None;
        }
        let b = if self.escaped {
            self.escaped = false;
            match b {
                ESC_END => END,
                ESC_ESC => ESC,
                other => other,
            }
        } else if b == ESC {
            self.escaped = true;
            return None;
        } else {
            b
        };
        if self.buf.len() >= self.max {
            self.overflow = true;
        } else {
            self.buf.push(b);
        }
        None
    }
}

/// The checksum the ROM expects for data commands.
pub fn checksum(data: &[u8]) -> u32 {
    u32::from(data.iter().fold(0xefu8, |a, b| a ^ b))
}

/// One command as a SLIP frame.
pub fn encode_command(op: u8, data: &[u8], checksum: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + data.len());
    p.push(0x00);
    p.push(op);
    p.extend((data.len() as u16).to_le_bytes());
    p.extend(checksum.to_le_bytes());
    p.extend(data);
    slip_encode(&p)
}

/// An answer of the ROM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub op: u8,
    pub value: u32,
    /// 0: success.
    pub status: u8,
    pub error: u8,
}

impl Response {
    /// Parses a frame's payload; `None` for anything that is not an answer.
    pub fn parse(frame: &[u8]) -> Option<Response> {
        if frame.len() < 10 || frame[0] != 0x01 {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([frame[2], frame[3]]));
        let data = frame.get(8..8 + len)?;
        // The ESP8266 ROM sends 2 status bytes, the ESP32's 4; status
        // comes first either way.
        let (status, error) = match data {
            [s, e, ..] => (*s, *e),
            _ => return None,
        };
        Some(Response {
            op: frame[1],
            value: u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]),
            status,
            error,
        })
    }
}

/// The ROM's error codes, in words.
fn rom_error(code: u8) -> String {
    match code {
        0x05 => "invalid message (0x05)".into(),
        0x06 => "failed to act on the command (0x06)".into(),
        0x07 => "invalid CRC/checksum (0x07)".into(),
        0x08 => "flash write error (0x08)".into(),
        0x09 => "flash read error (0x09)".into(),
        0x0a => "flash read length error (0x0a)".into(),
        0x0b => "deflate error (0x0b)".into(),
        c => format!("error code {c:#04x}"),
    }
}

/// The erase size to send so that the ESP8266 ROM, which erases too much
/// when a region crosses a 64 KiB block, erases what was meant (esptool's
/// `get_erase_size`).
pub fn erase_size(offset: u32, size: u32) -> u32 {
    let sectors_per_block = 16;
    let num_sectors = size.div_ceil(SECTOR);
    let start_sector = offset / SECTOR;
    let head = (sectors_per_block - start_sector % sectors_per_block).min(num_sectors);
    if num_sectors < 2 * head {
        num_sectors.div_ceil(2) * SECTOR
    } else {
        (num_sectors - head) * SECTOR
    }
}

/// A connection to the ROM loader.
pub struct Rom<'p> {
    port: &'p mut dyn SerialPort,
    name: String,
    decoder: SlipDecoder,
    /// Bytes sent and received (for the throughput benchmark).
    pub wire_out: u64,
    pub wire_in: u64,
}

impl<'p> Rom<'p> {
    pub fn new(port: &'p mut dyn SerialPort, name: &str) -> Rom<'p> {
        Rom {
            port,
            name: name.to_owned(),
            decoder: SlipDecoder::new(512),
            wire_out: 0,
            wire_in: 0,
        }
    }

    fn device_error(&self, during: &str, message: String) -> FlashError {
        FlashError::Device {
            port: self.name.clone(),
            during: during.into(),
            message,
        }
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), FlashError> {
        self.port
            .write_all(frame)
            .and_then(|_| self.port.flush())
            .map_err(|e| FlashError::io(format!("cannot write to {}", self.name), e))?;
        self.wire_out += frame.len() as u64;
        Ok(())
    }

    /// The next answer within `timeout` (None: none came).
    fn receive(&mut self, timeout: Duration) -> Result<Option<Response>, FlashError> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 256];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.port
                .set_timeout(left)
                .map_err(|e| FlashError::io(format!("cannot use {}", self.name), e.into()))?;
            let n = match self.port.read(&mut buf) {
                Ok(0) => continue,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FlashError::io(format!("cannot read from {}", self.name), e)),
            };
            self.wire_in += n as u64;
            for &b in &buf[..n] {
                if let Some(frame) = self.decoder.push(b) {
                    if let Some(r) = Response::parse(&frame) {
                        return Ok(Some(r));
                    }
                }
            }
        }
    }

    /// Sends a command and waits for its answer; a failure status is an
    /// error.
    pub fn command(
        &mut self,
        op: u8,
        data: &[u8],
        chk: u32,
        timeout: Duration,
        during: &str,
    ) -> Result<u32, FlashError> {
        self.send(&encode_command(op, data, chk))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receive(left)? {
                Some(r) if r.op == op => {
                    if r.status != 0 {
                        return Err(self.device_error(during, rom_error(r.error)));
                    }
                    return Ok(r.value);
                }
                Some(_) => continue,
                None => {
                    return Err(self.device_error(
                        during,
                        format!("no answer within {} ms", timeout.as_millis()),
                    ))
                }
            }
        }
    }

    /// Syncs with the ROM (its baud detection); the ROM answers each SYNC
    /// several times, the extra answers are drained.
    pub fn sync(&mut self) -> Result<(), FlashError> {
        let mut data = vec![0x07, 0x07, 0x12, 0x20];
        data.extend([0x55; 32]);
        let frame = encode_command(op::SYNC, &data, 0);
        for _ in 0..10 {
            let _ = self.port.clear(serialport::ClearBuffer::Input);
            self.send(&frame)?;
            if let Some(r) = self.receive(Duration::from_millis(200))? {
                if r.op == op::SYNC && r.status == 0 {
                    while self.receive(Duration::from_millis(50))?.is_some() {}
                    return Ok(());
                }
            }
        }
        Err(FlashError::NoAnswer {
            port: self.name.clone(),
        })
    }

    pub fn read_reg(&mut self, addr: u32) -> Result<u32, FlashError> {
        self.command(
            op::READ_REG,
            &addr.to_le_bytes(),
            0,
            Duration::from_secs(3),
            "READ_REG",
        )
    }

    pub fn write_reg(&mut self, addr: u32, value: u32) -> Result<(), FlashError> {
        let mut d = Vec::with_capacity(16);
        for w in [addr, value, 0xffff_ffff, 0] {
            d.extend(w.to_le_bytes());
        }
        self.command(op::WRITE_REG, &d, 0, Duration::from_secs(3), "WRITE_REG")?;
        Ok(())
    }

    /// The SPI flash's JEDEC id (manufacturer, type, capacity in its low
    /// three bytes), read through the SPI controller's registers.
    pub fn flash_id(&mut self) -> Result<u32, FlashError> {
        // A zero-length FLASH_BEGIN makes the ROM attach the SPI flash.
        self.flash_begin(0, 0, 0)?;
        let old_usr = self.read_reg(SPI_USR)?;
        let old_usr2 = self.read_reg(SPI_USR2)?;
        self.write_reg(SPI_USR, 1 << 31 | 1 << 28)?;
        self.write_reg(SPI_USR2, 7 << 28 | SPIFLASH_RDID)?;
        self.write_reg(SPI_USR1, (24 - 1) << 8)?;
        self.write_reg(SPI_W0, 0)?;
        self.write_reg(SPI_BASE, SPI_CMD_USR)?;
        let mut done = false;
        for _ in 0..10 {
            if self.read_reg(SPI_BASE)? & SPI_CMD_USR == 0 {
                done = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if !done {
            return Err(self.device_error("reading the flash id", "SPI command timed out".into()));
        }
        let id = self.read_reg(SPI_W0)? & 0xff_ffff;
        self.write_reg(SPI_USR, old_usr)?;
        self.write_reg(SPI_USR2, old_usr2)?;
        Ok(id)
    }

    fn flash_begin(&mut self, size: u32, blocks: u32, offset: u32) -> Result<(), FlashError> {
        let mut d = Vec::with_capacity(16);
        for w in [erase_size(offset, size), blocks, BLOCK as u32, offset] {
            d.extend(w.to_le_bytes());
        }
        // Erasing takes up to ~30 s per MiB.
        let timeout = Duration::from_secs(3) + Duration::from_millis(u64::from(size) * 30 / 1024);
        self.command(op::FLASH_BEGIN, &d, 0, timeout, "FLASH_BEGIN (erase)")?;
        Ok(())
    }

    fn flash_block(&mut self, block: &[u8], seq: u32) -> Result<(), FlashError> {
        let mut d = Vec::with_capacity(16 + BLOCK);
        for w in [BLOCK as u32, seq, 0, 0] {
            d.extend(w.to_le_bytes());
        }
        d.extend(block);
        d.resize(16 + BLOCK, 0xff);
        let chk = checksum(&d[16..]);
        self.command(
            op::FLASH_DATA,
            &d,
            chk,
            Duration::from_secs(3),
            &format!("FLASH_DATA block {seq}"),
        )?;
        Ok(())
    }

    /// Writes `data` at `offset` in 1 KiB blocks.
    pub fn write(&mut self, image: &Image, progress: &mut dyn Progress) -> Result<(), FlashError> {
        let blocks = image.data.len().div_ceil(BLOCK) as u32;
        progress.start(
            &format!("write {} at {:#x}", image.name, image.offset),
            image.data.len() as u64,
        );
        self.flash_begin(image.data.len() as u32, blocks, image.offset)?;
        for (seq, chunk) in image.data.chunks(BLOCK).enumerate() {
            self.flash_block(chunk, seq as u32)?;
            progress.set(((seq + 1) * BLOCK).min(image.data.len()) as u64);
        }
        progress.finish("written (not verifiable through the ROM)");
        Ok(())
    }

    /// Ends flashing; `run` makes the ROM jump to the new firmware.
    pub fn finish(&mut self, run: bool) -> Result<(), FlashError> {
        let stay = u32::from(!run);
        self.command(
            op::FLASH_END,
            &stay.to_le_bytes(),
            0,
            Duration::from_secs(3),
            "FLASH_END",
        )?;
        Ok(())
    }
}

/// Resets into the ROM loader through DTR (GPIO0) and RTS (EN), the way
/// the NodeMCU-style auto-reset circuit expects.
fn reset_into_loader(port: &mut dyn SerialPort, name: &str) -> Result<(), FlashError> {
    let lines = |p: &mut dyn SerialPort, dtr: bool, rts: bool| {
        p.write_data_terminal_ready(dtr)?;
        p.write_request_to_send(rts)
    };
    let no_lines = |e: serialport::Error| {
        FlashError::Invalid(format!(
            "cannot drive DTR/RTS on {name} ({e}): the adapter has no reset lines; \
             put the chip into download mode by hand (hold GPIO0 low while resetting) \
             and flash with `--before no-reset`"
        ))
    };
    lines(port, false, true).map_err(no_lines)?;
    std::thread::sleep(Duration::from_millis(100));
    lines(port, true, false).map_err(no_lines)?;
    std::thread::sleep(Duration::from_millis(50));
    lines(port, false, false).map_err(no_lines)?;
    Ok(())
}

/// Writes `images` to the ESP8266 on `opts.port`.
pub fn flash(
    images: &[Image],
    opts: &super::SerialOptions,
    progress: &mut dyn Progress,
) -> Result<Outcome, FlashError> {
    for i in images.iter().filter(|i| i.offset == 0) {
        if i.data.first() != Some(&0xe9) {
            return Err(FlashError::Invalid(format!(
                "{} is not an ESP8266 firmware image (it must start with the byte 0xe9): \
                 flash the `firmware.bin` that `moat build` produced",
                i.name
            )));
        }
    }
    let mut port = open_serial(&opts.port)?;
    let mut rom = Rom::new(&mut port, &opts.port);
    let out = flash_on(&mut rom, images, opts, progress)?;
    Ok(out)
}

/// [`flash`] over an open connection.
pub fn flash_on(
    rom: &mut Rom<'_>,
    images: &[Image],
    opts: &super::SerialOptions,
    progress: &mut dyn Progress,
) -> Result<Outcome, FlashError> {
    if matches!(opts.before, Before::DefaultReset | Before::UsbReset) {
        reset_into_loader(rom.port, &rom.name.clone())?;
    }
    if opts.before != Before::NoResetNoSync {
        progress.note(&format!("syncing with the ROM loader on {}", rom.name));
        rom.sync()?;
    }
    let magic = rom.read_reg(CHIP_MAGIC_REG)?;
    if magic != ESP8266_MAGIC {
        return Err(FlashError::WrongChip {
            port: rom.name.clone(),
            expected: "esp8266".into(),
            found: chip_name(magic),
        });
    }
    let id = rom.flash_id()?;
    let size_code = (id >> 16) & 0xff;
    let mut patched = Vec::new();
    if (0x12..=0x1a).contains(&size_code) {
        let size = 1u64 << size_code;
        check_fits(images, size)?;
        progress.note(&format!(
            "detected esp8266, flash id {id:06x} ({} KiB)",
            size / 1024
        ));
        patched = images
            .iter()
            .map(|i| with_flash_size(i, size))
            .collect::<Vec<_>>();
    } else {
        progress.note(&format!(
            "detected esp8266, flash id {id:06x} (size unknown)"
        ));
    }
    if opts.baud != 115_200 {
        progress.note(&format!(
            "the ESP8266 ROM loader is driven at 115200 baud (asked: {})",
            opts.baud
        ));
    }
    let mut results = Vec::new();
    let images = if patched.is_empty() { images } else { &patched };
    for image in images {
        rom.write(image, progress)?;
        results.push((image.name.clone(), "written".to_owned()));
    }
    let run = matches!(opts.after, After::NoResetNoStub | After::WatchdogReset);
    rom.finish(run)?;
    if opts.after == After::HardReset {
        let reset = rom.port.write_request_to_send(true).and_then(|_| {
            std::thread::sleep(Duration::from_millis(100));
            rom.port.write_request_to_send(false)
        });
        if let Err(e) = reset {
            return Err(FlashError::Invalid(format!(
                "the firmware was written, but resetting through RTS failed on {} ({e}): \
                 press the board's reset button, and next time flash with `--after no-reset-no-stub`",
                rom.name
            )));
        }
    }
    progress.note(VERIFY_NOTE);
    Ok(Outcome {
        results,
        target: rom.name.clone(),
        check_after_boot: Some(VERIFY_NOTE.to_owned()),
    })
}

/// The image with the flash size in its header set to `size` (what
/// `esptool --flash_size detect` does): the boot ROM and the SDK read it to
/// map the flash, and MicroPython finds its filesystem by it. Mode and
/// frequency stay; images not at offset 0 and unknown sizes stay as built.
pub fn with_flash_size(image: &Image, size: u64) -> Image {
    let code: u8 = match size {
        0x4_0000 => 0x10,
        0x8_0000 => 0x00,
        0x10_0000 => 0x20,
        0x20_0000 => 0x30,
        0x40_0000 => 0x40,
        0x80_0000 => 0x80,
        0x100_0000 => 0x90,
        _ => return image.clone(),
    };
    let mut out = image.clone();
    if out.offset == 0 && out.data.len() > 3 && out.data[0] == 0xe9 {
        out.data[3] = (out.data[3] & 0x0f) | code;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_gets_the_detected_flash_size_and_keeps_mode_and_frequency() {
        let image = Image {
            name: "firmware.bin".into(),
            offset: 0,
            data: vec![0xe9, 3, 2, 0x2f, 7, 7],
        };
        let p = with_flash_size(&image, 4 << 20);
        assert_eq!(p.data, [0xe9, 3, 2, 0x4f, 7, 7]);
        assert_eq!(with_flash_size(&image, 512 << 10).data[3], 0x0f);
        // elsewhere than 0, or a size the header cannot say: as built
        let other = Image {
            offset: 0x1000,
            ..image.clone()
        };
        assert_eq!(with_flash_size(&other, 4 << 20), other);
        assert_eq!(with_flash_size(&image, 3 << 20), image);
    }

    #[test]
    fn slip_round_trips_frames_with_end_and_escape_bytes() {
        let payload = [1, END, 2, ESC, 3, END, END];
        let wire = slip_encode(&payload);
        assert!(!wire[1..wire.len() - 1].contains(&END));
        let mut d = SlipDecoder::new(64);
        let mut frames = vec![];
        for b in [b"boot noise".as_slice(), &wire, &wire].concat() {
            frames.extend(d.push(b));
        }
        assert_eq!(frames, [payload.to_vec(), payload.to_vec()]);
    }

    #[test]
    fn oversized_frames_are_dropped_and_the_next_one_decodes() {
        let mut d = SlipDecoder::new(4);
        let mut frames = vec![];
        for b in [slip_encode(&[9; 10]), slip_encode(&[1, 2])].concat() {
            frames.extend(d.push(b));
        }
        assert_eq!(frames, [vec![1, 2]]);
    }

    #[test]
    fn commands_carry_length_and_checksum() {
        let data = [1u8, 2, 3];
        let wire = encode_command(op::FLASH_DATA, &data, checksum(&data));
        let mut d = SlipDecoder::new(64);
        let frame = wire.iter().find_map(|&b| d.push(b)).unwrap();
        assert_eq!(frame[..4], [0x00, op::FLASH_DATA, 3, 0]);
        assert_eq!(
            u32::from_le_bytes(frame[4..8].try_into().unwrap()),
            0xef ^ 1 ^ 2 ^ 3
        );
        assert_eq!(&frame[8..], &data);
    }

    #[test]
    fn responses_parse_value_and_status_of_both_roms() {
        let esp8266 = [1, op::READ_REG, 2, 0, 0x01, 0xc1, 0xf0, 0xff, 0, 0];
        let r = Response::parse(&esp8266).unwrap();
        assert_eq!((r.op, r.value, r.status), (op::READ_REG, ESP8266_MAGIC, 0));
        let esp32_fail = [1, op::FLASH_DATA, 4, 0, 0, 0, 0, 0, 1, 0x07, 0, 0];
        let r = Response::parse(&esp32_fail).unwrap();
        assert_eq!((r.status, r.error), (1, 0x07));
        assert_eq!(Response::parse(&[0, 1, 2]), None);
        assert_eq!(Response::parse(&[1, 8, 200, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn erase_size_compensates_the_rom_bug_like_esptool() {
        // esptool's ESP8266ROM.get_erase_size gives the same numbers.
        assert_eq!(erase_size(0, 0x1000), 0x1000);
        assert_eq!(erase_size(0, 0x10000), 0x8000);
        assert_eq!(erase_size(0, 0x100000), 0xf0000);
        assert_eq!(erase_size(0x3000, 0x2000), 0x1000);
    }
}
