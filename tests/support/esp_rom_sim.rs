//! A simulated ESP ROM loader on a pseudo-terminal, for flashing tests
//! without hardware. The flasher under test opens [`Sim::path`] like a
//! serial port; a thread answers on the pty's master side and keeps a
//! simulated SPI flash.
//!
//! Modes: ESP32 (4 status bytes in ROM answers, RAM stub loadable: after
//! MEM_END it says "OHAI" and answers with 2 status bytes, takes
//! zlib-compressed FLASH_DEFL_* writes and answers SPI_FLASH_MD5 with 16 raw
//! bytes; the ROM answers it with 32 hex digits) and ESP8266 (2 status
//! bytes, no MD5, no stub). Fault injection: a flash cell that flips a bit
//! whenever written ([`SimConfig::corrupt_at`]), a device that never
//! answers ([`SimConfig::silent`]).
//!
//! Commands: SYNC (answered 8 times), READ_REG (chip magic at 0x40001000,
//! other registers as last written), WRITE_REG (a write with bit 18 to the
//! SPI controller's CMD register runs the flash-ID command: W0 gets the
//! JEDEC id), GET_SECURITY_INFO (unsupported: error), MEM_BEGIN/DATA/END,
//! SPI_ATTACH, SPI_SET_PARAMS, CHANGE_BAUDRATE, FLASH_BEGIN/DATA/END (1 KiB
//! blocks, checksum checked), FLASH_DEFL_BEGIN/DATA/END, SPI_FLASH_MD5.
//! FLASH_END asking to run the firmware "reboots": the loader goes quiet.

use md5::{Digest, Md5};
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Which ROM to imitate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimChip {
    Esp32,
    Esp8266,
}

impl SimChip {
    pub fn magic(self) -> u32 {
        match self {
            SimChip::Esp32 => 0x00f0_1d83,
            SimChip::Esp8266 => 0xfff0_c101,
        }
    }

    /// The SPI controller's CMD register and W0's offset from it.
    fn spi(self) -> (u32, u32) {
        match self {
            SimChip::Esp32 => (0x3ff4_2000, 0x80),
            SimChip::Esp8266 => (0x6000_0200, 0x40),
        }
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub chip: SimChip,
    /// Bytes of SPI flash (a power of two: the JEDEC id encodes it).
    pub flash_size: usize,
    /// This flash address flips bit 0 whenever it is written.
    pub corrupt_at: Option<u32>,
    /// Answer nothing at all (a port with no ROM loader behind it).
    pub silent: bool,
    /// What the chip runs once the loader is told to run the firmware: a
    /// tty (say, a real MicroPython's console on a pty) whose bytes flow
    /// to and from the host from then on. None: silence.
    pub boots_into: Option<PathBuf>,
}

impl SimConfig {
    /// A chip with 4 MiB of erased flash and no faults.
    pub fn new(chip: SimChip) -> SimConfig {
        SimConfig {
            chip,
            flash_size: 4 << 20,
            corrupt_at: None,
            silent: false,
            boots_into: None,
        }
    }
}

/// What the simulated device went through.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub flash: Vec<u8>,
    /// Bytes received from and sent to the host.
    pub from_host: u64,
    pub to_host: u64,
    /// Every command's opcode, in order.
    pub ops: Vec<u8>,
    pub stub_loaded: bool,
    /// Baud rates asked for with CHANGE_BAUDRATE.
    pub bauds: Vec<u32>,
    /// FLASH_END / FLASH_DEFL_END count.
    pub ends: u32,
    /// The loader was told to run the firmware.
    pub rebooted: bool,
    /// Payload bytes the host sent in FLASH_DATA / FLASH_DEFL_DATA.
    pub data_bytes: u64,
}

/// A running simulator.
pub struct Sim {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<SimReport>>,
    // Held open so that the host closing its side never hangs up the pty.
    _slave: OwnedFd,
}

impl Sim {
    /// Opens a pty and starts answering on it.
    pub fn start(config: SimConfig) -> std::io::Result<Sim> {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two fds and the name buffer we pass.
        let mut name = [0 as libc::c_char; 128];
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                name.as_mut_ptr(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: openpty returned two fresh fds that we now own.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        // SAFETY: `name` is NUL-terminated by openpty.
        let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        set_raw(slave.as_raw_fd())?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || run(master, config, &stop))
        };
        Ok(Sim {
            path: PathBuf::from(path),
            stop,
            thread: Some(thread),
            _slave: slave,
        })
    }

    /// The pty's device path (what the flasher opens).
    pub fn path(&self) -> &str {
        self.path.to_str().expect("pty paths are ASCII")
    }

    /// Stops the simulator and returns what happened.
    pub fn finish(mut self) -> SimReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("finish is called once")
            .join()
            .expect("the simulator thread does not panic")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn set_raw(fd: i32) -> std::io::Result<()> {
    // SAFETY: plain termios calls on a valid fd.
    unsafe {
        let mut t = std::mem::zeroed::<libc::termios>();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::cfmakeraw(&mut t);
        if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

const END: u8 = 0xc0;
const ESC: u8 = 0xdb;

/// Opcodes.
pub mod op {
    pub const FLASH_BEGIN: u8 = 0x02;
    pub const FLASH_DATA: u8 = 0x03;
    pub const FLASH_END: u8 = 0x04;
    pub const MEM_BEGIN: u8 = 0x05;
    pub const MEM_END: u8 = 0x06;
    pub const MEM_DATA: u8 = 0x07;
    pub const SYNC: u8 = 0x08;
    pub const WRITE_REG: u8 = 0x09;
    pub const READ_REG: u8 = 0x0a;
    pub const SPI_SET_PARAMS: u8 = 0x0b;
    pub const SPI_ATTACH: u8 = 0x0d;
    pub const CHANGE_BAUDRATE: u8 = 0x0f;
    pub const FLASH_DEFL_BEGIN: u8 = 0x10;
    pub const FLASH_DEFL_DATA: u8 = 0x11;
    pub const FLASH_DEFL_END: u8 = 0x12;
    pub const SPI_FLASH_MD5: u8 = 0x13;
    pub const GET_SECURITY_INFO: u8 = 0x14;
}

struct Device {
    cfg: SimConfig,
    report: SimReport,
    regs: std::collections::HashMap<u32, u32>,
    stub: bool,
    quiet: bool,
    /// The current write: start address, block size, next sequence number.
    write: Option<(u32, u32, u32)>,
    /// Decompressor and bytes written so far of a FLASH_DEFL_* write.
    inflate: Option<(flate2::write::ZlibDecoder<Vec<u8>>, usize)>,
    out: Vec<u8>,
}

fn run(master: OwnedFd, cfg: SimConfig, stop: &AtomicBool) -> SimReport {
    let mut file = std::fs::File::from(master);
    let fd = file.as_raw_fd();
    let mut dev = Device {
        report: SimReport {
            flash: vec![0xff; cfg.flash_size],
            ..SimReport::default()
        },
        cfg,
        regs: Default::default(),
        stub: false,
        quiet: false,
        write: None,
        inflate: None,
        out: Vec::new(),
    };
    let mut frame = Vec::new();
    let (mut in_frame, mut esc) = (false, false);
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        if dev.report.rebooted {
            if let Some(tty) = dev.cfg.boots_into.clone() {
                bridge(&mut file, &tty, stop, &mut dev.report);
                break;
            }
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 20) };
        if n <= 0 || pfd.revents & libc::POLLIN == 0 {
            if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            continue;
        }
        // SAFETY: reading into our buffer from a valid fd.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
            continue;
        }
        dev.report.from_host += n as u64;
        for &b in &buf[..n as usize] {
            if b == END {
                if in_frame && !frame.is_empty() {
                    let f = std::mem::take(&mut frame);
                    dev.handle(&f);
                    in_frame = false;
                } else {
                    in_frame = true;
                    frame.clear();
                }
                continue;
            }
            if !in_frame {
                continue;
            }
            if esc {
                esc = false;
                frame.push(match b {
                    0xdc => END,
                    0xdd => ESC,
                    o => o,
                });
            } else if b == ESC {
                esc = true;
            } else {
                frame.push(b);
            }
        }
        if !dev.out.is_empty() {
            let out = std::mem::take(&mut dev.out);
            dev.report.to_host += out.len() as u64;
            let _ = file.write_all(&out);
        }
    }
    dev.report
}

/// After the reboot: bytes both ways between the host's pty and `tty`.
fn bridge(host: &mut std::fs::File, tty: &Path, stop: &AtomicBool, report: &mut SimReport) {
    let Ok(mut fw) = std::fs::File::options().read(true).write(true).open(tty) else {
        return;
    };
    let _ = set_raw(fw.as_raw_fd());
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let mut pfds = [host.as_raw_fd(), fw.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: two valid pollfds.
        if unsafe { libc::poll(pfds.as_mut_ptr(), 2, 20) } <= 0 {
            continue;
        }
        for (i, p) in pfds.iter().enumerate() {
            if p.revents & libc::POLLIN == 0 {
                if p.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                continue;
            }
            let (from, to): (&mut std::fs::File, &mut std::fs::File) = if i == 0 {
                (&mut *host, &mut fw)
            } else {
                (&mut fw, &mut *host)
            };
            let Ok(n) = from.read(&mut buf) else { continue };
            if i == 0 {
                report.from_host += n as u64;
            } else {
                report.to_host += n as u64;
            }
            let _ = to.write_all(&buf[..n]);
        }
    }
}

fn word(d: &[u8], i: usize) -> u32 {
    d.get(4 * i..4 * i + 4)
        .map_or(0, |w| u32::from_le_bytes(w.try_into().unwrap()))
}

impl Device {
    fn status_len(&self) -> usize {
        if self.stub || self.cfg.chip == SimChip::Esp8266 {
            2
        } else {
            4
        }
    }

    fn send_frame(&mut self, payload: &[u8]) {
        self.out.push(END);
        for &b in payload {
            match b {
                END => self.out.extend([ESC, 0xdc]),
                ESC => self.out.extend([ESC, 0xdd]),
                b => self.out.push(b),
            }
        }
        self.out.push(END);
    }

    fn reply(&mut self, op: u8, value: u32, data: &[u8], error: Option<u8>) {
        let mut status = vec![0u8; self.status_len()];
        if let Some(code) = error {
            status[0] = 1;
            status[1] = code;
        }
        let mut p = vec![0x01, op];
        p.extend(((data.len() + status.len()) as u16).to_le_bytes());
        p.extend(value.to_le_bytes());
        p.extend(data);
        p.extend(status);
        self.send_frame(&p);
    }

    fn ok(&mut self, op: u8) {
        self.reply(op, 0, &[], None);
    }

    fn fail(&mut self, op: u8, code: u8) {
        self.reply(op, 0, &[], Some(code));
    }

    fn handle(&mut self, f: &[u8]) {
        if self.cfg.silent || self.quiet || f.len() < 8 || f[0] != 0x00 {
            return;
        }
        let op = f[1];
        let len = u16::from_le_bytes([f[2], f[3]]) as usize;
        let chk = word(&f[4..8], 0);
        let Some(d) = f.get(8..8 + len) else {
            return self.fail(op, 0x05);
        };
        self.report.ops.push(op);
        match op {
            op::SYNC => {
                for _ in 0..8 {
                    self.reply(op, 0x2012_0707, &[], None);
                }
            }
            op::READ_REG => {
                let addr = word(d, 0);
                let v = if addr == 0x4000_1000 {
                    self.cfg.chip.magic()
                } else {
                    self.regs.get(&addr).copied().unwrap_or(0)
                };
                self.reply(op, v, &[], None);
            }
            op::WRITE_REG => {
                let (cmd, w0) = self.cfg.chip.spi();
                for r in d.chunks_exact(16) {
                    let (addr, value) = (word(r, 0), word(r, 1));
                    if addr == cmd && value & (1 << 18) != 0 {
                        // RDID: manufacturer, type, capacity (log2 bytes).
                        let cap = self.cfg.flash_size.trailing_zeros();
                        self.regs.insert(cmd + w0, (cap << 16) | 0x40_ef);
                        self.regs.insert(addr, value & !(1 << 18));
                    } else {
                        self.regs.insert(addr, value);
                    }
                }
                self.ok(op);
            }
            op::GET_SECURITY_INFO => self.fail(op, 0x05),
            op::MEM_BEGIN | op::MEM_DATA => self.ok(op),
            op::MEM_END => {
                self.ok(op);
                if self.cfg.chip == SimChip::Esp32 && word(d, 0) == 0 {
                    self.stub = true;
                    self.report.stub_loaded = true;
                    self.send_frame(b"OHAI");
                }
            }
            op::SPI_ATTACH | op::SPI_SET_PARAMS => self.ok(op),
            op::CHANGE_BAUDRATE => {
                self.report.bauds.push(word(d, 0));
                self.ok(op);
            }
            op::FLASH_BEGIN | op::FLASH_DEFL_BEGIN => {
                let (size, blocks, block, offset) =
                    (word(d, 0), word(d, 1), word(d, 2), word(d, 3));
                let span = if op == op::FLASH_BEGIN {
                    // What the ROM really erases (the client compensates
                    // the ESP8266's erase-size quirk): every written block.
                    (blocks * block).max(size)
                } else {
                    size
                };
                let end = offset as usize + span as usize;
                if end > self.cfg.flash_size {
                    return self.fail(op, 0x06);
                }
                let s0 = offset as usize / 4096 * 4096;
                let s1 = end.div_ceil(4096) * 4096;
                self.report.flash[s0..s1.min(self.cfg.flash_size)].fill(0xff);
                self.write = Some((offset, block, 0));
                self.inflate = (op == op::FLASH_DEFL_BEGIN)
                    .then(|| (flate2::write::ZlibDecoder::new(Vec::new()), 0));
                self.ok(op);
            }
            op::FLASH_DATA | op::FLASH_DEFL_DATA => {
                let (size, seq) = (word(d, 0) as usize, word(d, 1));
                let Some(data) = d.get(16..16 + size) else {
                    return self.fail(op, 0x05);
                };
                if !self.stub && chk != u32::from(data.iter().fold(0xefu8, |a, b| a ^ b)) {
                    return self.fail(op, 0x07);
                }
                let Some((offset, block, next)) = self.write else {
                    return self.fail(op, 0x06);
                };
                if seq != next {
                    return self.fail(op, 0x06);
                }
                self.report.data_bytes += data.len() as u64;
                self.write = Some((offset, block, next + 1));
                let (at, bytes) = if op == op::FLASH_DEFL_DATA {
                    let Some((dec, done)) = self.inflate.as_mut() else {
                        return self.fail(op, 0x06);
                    };
                    if dec.write_all(data).and_then(|_| dec.flush()).is_err() {
                        return self.fail(op, 0x0b);
                    }
                    let out = dec.get_ref()[*done..].to_vec();
                    let at = offset as usize + *done;
                    *done += out.len();
                    (at, out)
                } else {
                    (offset as usize + (seq * block) as usize, data.to_vec())
                };
                if at + bytes.len() > self.cfg.flash_size {
                    return self.fail(op, 0x08);
                }
                self.report.flash[at..at + bytes.len()].copy_from_slice(&bytes);
                if let Some(c) = self.cfg.corrupt_at.map(|c| c as usize) {
                    if (at..at + bytes.len()).contains(&c) {
                        self.report.flash[c] ^= 0x01;
                    }
                }
                self.ok(op);
            }
            op::FLASH_END | op::FLASH_DEFL_END => {
                self.report.ends += 1;
                self.write = None;
                self.inflate = None;
                self.ok(op);
                if word(d, 0) == 0 && op == op::FLASH_END {
                    self.report.rebooted = true;
                    self.quiet = true;
                }
            }
            op::SPI_FLASH_MD5 if self.cfg.chip == SimChip::Esp32 => {
                let (addr, size) = (word(d, 0) as usize, word(d, 1) as usize);
                let Some(region) = self.report.flash.get(addr..addr + size) else {
                    return self.fail(op, 0x06);
                };
                let digest = Md5::digest(region);
                if self.stub {
                    self.reply(op, 0, &digest, None);
                } else {
                    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                    self.reply(op, 0, hex.as_bytes(), None);
                }
            }
            _ => self.fail(op, 0x05),
        }
    }
}
