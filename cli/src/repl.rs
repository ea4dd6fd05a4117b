//! MicroPython's raw REPL (Ctrl-A), the protocol mpremote speaks: moat uses
//! it to give a device its config when the device cannot be reached over
//! its configured link yet (freshly flashed, or configured for a link the
//! host does not have).
//!
//! The node runtime leaves to the REPL on a Ctrl-C on its console (between
//! messages when the console carries the stdio link), so this works on a
//! running node too. Exchange, per MicroPython's `shared/runtime/pyexec.c`:
//! `\r\x03\x03` stops what runs, `\r\x01` enters the raw REPL (banner
//! `raw REPL; CTRL-B to exit\r\n>`); code followed by `\x04` is compiled
//! and run, answered by `OK`, its output, `\x04`, its exception text,
//! `\x04`, `>`. `\x02` returns to the friendly REPL, where `\x04` soft-resets
//! (and runs `main.py` again).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

const BANNER: &[u8] = b"raw REPL; CTRL-B to exit\r\n>";

/// Code is sent in pieces this large with a pause between them: a UART's
/// receive buffer on a small device holds little more (mpremote does the
/// same when raw-paste mode is not used).
const CHUNK: usize = 256;
const CHUNK_PAUSE: Duration = Duration::from_millis(10);

/// File data per `write` statement (as a bytes literal, up to 4x larger).
const FILE_PIECE: usize = 192;

#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error(
        "no MicroPython REPL answered on {port} (last output: {seen:?}); check the port, that the device runs MicroPython and nothing else holds the port"
    )]
    NoRepl { port: String, seen: String },
    #[error("the REPL on {port} did not answer within {secs} s while {doing}")]
    Timeout {
        port: String,
        secs: u64,
        doing: String,
    },
    #[error("the device raised an exception while {doing}: {traceback}")]
    Exception { doing: String, traceback: String },
    #[error("the REPL on {port} sent an unexpected reply while {doing}: {got:?}")]
    Protocol {
        port: String,
        doing: String,
        got: String,
    },
    #[error("I/O on {port}: {source}")]
    Io {
        port: String,
        #[source]
        source: io::Error,
    },
}

/// The answer to one piece of code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub stdout: Vec<u8>,
    /// The exception's traceback; empty when the code ran through.
    pub stderr: Vec<u8>,
}

/// Sans-I/O reader of one raw-REPL reply (`OK` out `\x04` err `\x04` `>`),
/// fed bytes as they arrive in any split.
#[derive(Debug, Default)]
pub struct ReplyParser {
    state: ReplyState,
    reply: Reply,
    ok: Vec<u8>,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum ReplyState {
    #[default]
    Ok,
    Stdout,
    Stderr,
    Prompt,
}

impl ReplyParser {
    /// Takes bytes; returns the reply and how many bytes it used once the
    /// final `>` arrived, or Err with what came instead of `OK`.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<(Reply, usize)>, Vec<u8>> {
        for (i, &b) in bytes.iter().enumerate() {
            match self.state {
                ReplyState::Ok => {
                    self.ok.push(b);
                    if !b"OK".starts_with(&self.ok) {
                        return Err(std::mem::take(&mut self.ok));
                    }
                    if self.ok.len() == 2 {
                        self.state = ReplyState::Stdout;
                    }
                }
                ReplyState::Stdout if b == 4 => self.state = ReplyState::Stderr,
                ReplyState::Stdout => self.reply.stdout.push(b),
                ReplyState::Stderr if b == 4 => self.state = ReplyState::Prompt,
                ReplyState::Stderr => self.reply.stderr.push(b),
                ReplyState::Prompt if b == b'>' => {
                    return Ok(Some((std::mem::take(&mut self.reply), i + 1)));
                }
                ReplyState::Prompt => {}
            }
        }
        Ok(None)
    }
}

/// A Python bytes literal holding `data` (printable ASCII as is).
pub fn bytes_literal(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() + 3);
    s.push_str("b'");
    for &b in data {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'\'' => s.push_str("\\'"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('\'');
    s
}

/// A Python string literal for a file name.
fn str_literal(s: &str) -> String {
    format!("{s:?}")
}

/// A raw REPL session on `port` (a serial port or anything byte-shaped
/// whose reads time out with `TimedOut`/`WouldBlock`).
pub struct RawRepl<P: Read + Write> {
    port: P,
    name: String,
    /// Bytes read past the end of the last reply.
    rest: Vec<u8>,
    timeout: Duration,
}

impl<P: Read + Write> RawRepl<P> {
    /// Stops what runs on the device and enters its raw REPL, trying for
    /// `patience` (a device that was just reset is still booting).
    pub fn enter(port: P, name: &str, patience: Duration) -> Result<RawRepl<P>, ReplError> {
        let mut r = RawRepl {
            port,
            name: name.to_owned(),
            rest: Vec::new(),
            timeout: Duration::from_secs(10),
        };
        let until = Instant::now() + patience;
        let mut seen = Vec::new();
        loop {
            r.send(b"\r\x03\x03")?;
            std::thread::sleep(Duration::from_millis(100));
            seen.extend(r.drain()?);
            r.send(b"\r\x01")?;
            match r.read_until(BANNER, Duration::from_millis(1000))? {
                Some(_) => return Ok(r),
                None => {
                    seen.append(&mut r.rest);
                    if Instant::now() >= until {
                        let tail = &seen[seen.len().saturating_sub(80)..];
                        return Err(ReplError::NoRepl {
                            port: name.to_owned(),
                            seen: String::from_utf8_lossy(tail).into_owned(),
                        });
                    }
                }
            }
        }
    }

    /// Runs `code`; an exception on the device is an error.
    pub fn exec(&mut self, code: &str, doing: &str) -> Result<Vec<u8>, ReplError> {
        for piece in code.as_bytes().chunks(CHUNK) {
            self.send(piece)?;
            std::thread::sleep(CHUNK_PAUSE);
        }
        self.send(b"\x04")?;
        let mut parser = ReplyParser::default();
        let until = Instant::now() + self.timeout;
        let mut pending = std::mem::take(&mut self.rest);
        loop {
            match parser.feed(&pending) {
                Ok(Some((reply, used))) => {
                    self.rest = pending.split_off(used);
                    if !reply.stderr.is_empty() {
                        return Err(ReplError::Exception {
                            doing: doing.to_owned(),
                            traceback: String::from_utf8_lossy(&reply.stderr).trim().to_owned(),
                        });
                    }
                    return Ok(reply.stdout);
                }
                Ok(None) => {}
                Err(got) => {
                    return Err(ReplError::Protocol {
                        port: self.name.clone(),
                        doing: doing.to_owned(),
                        got: String::from_utf8_lossy(&got).into_owned(),
                    })
                }
            }
            if Instant::now() >= until {
                return Err(ReplError::Timeout {
                    port: self.name.clone(),
                    secs: self.timeout.as_secs(),
                    doing: doing.to_owned(),
                });
            }
            pending = self.read_some()?;
        }
    }

    /// Writes `data` to `path` on the device: into `path.tmp`, then renamed
    /// over `path`, so a cut session leaves the old file.
    pub fn write_file(&mut self, path: &str, data: &[u8]) -> Result<(), ReplError> {
        let tmp = format!("{path}.tmp");
        let doing = format!("writing {path}");
        self.exec(&format!("f=open({},'wb')", str_literal(&tmp)), &doing)?;
        for piece in data.chunks(FILE_PIECE) {
            self.exec(&format!("f.write({})", bytes_literal(piece)), &doing)?;
        }
        self.exec(
            &format!(
                "f.close()\nimport os\ntry:\n os.remove({p})\nexcept OSError:\n pass\nos.rename({t},{p})",
                p = str_literal(path),
                t = str_literal(&tmp)
            ),
            &doing,
        )?;
        Ok(())
    }

    /// Removes `path` on the device; a missing file is fine.
    pub fn remove_file(&mut self, path: &str) -> Result<(), ReplError> {
        self.exec(
            &format!(
                "import os\ntry:\n os.remove({})\nexcept OSError:\n pass",
                str_literal(path)
            ),
            &format!("removing {path}"),
        )?;
        Ok(())
    }

    /// The frozen modules' hashes the firmware carries (its `_hash` table),
    /// as (module, hash bytes).
    pub fn frozen_hashes(&mut self) -> Result<Vec<(String, Vec<u8>)>, ReplError> {
        let out = self.exec(
            "import _hash\nfor k,v in _hash.hashes.items():\n print(k,' '.join(str(b) for b in v))",
            "reading the firmware's module hashes (_hash)",
        )?;
        let text = String::from_utf8_lossy(&out);
        let mut hashes = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let Some(module) = words.next() else { continue };
            let bytes = words.filter_map(|w| w.parse::<u8>().ok()).collect();
            hashes.push((module.to_owned(), bytes));
        }
        Ok(hashes)
    }

    /// Leaves the raw REPL and soft-resets the device: its boot script and
    /// `main.py` run again (the node runtime starts with the new config).
    pub fn soft_reset(mut self) -> Result<P, ReplError> {
        self.send(b"\x02")?;
        std::thread::sleep(Duration::from_millis(100));
        self.send(b"\x04")?;
        self.port.flush().map_err(|e| self.io(e))?;
        Ok(self.port)
    }

    fn io(&self, source: io::Error) -> ReplError {
        ReplError::Io {
            port: self.name.clone(),
            source,
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ReplError> {
        self.port.write_all(bytes).map_err(|e| self.io(e))
    }

    /// What arrives within one read timeout (possibly nothing).
    fn read_some(&mut self) -> Result<Vec<u8>, ReplError> {
        let mut buf = [0u8; 512];
        match self.port.read(&mut buf) {
            Ok(n) => Ok(buf[..n].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(self.io(e)),
        }
    }

    fn drain(&mut self) -> Result<Vec<u8>, ReplError> {
        let mut all = std::mem::take(&mut self.rest);
        loop {
            let got = self.read_some()?;
            if got.is_empty() {
                return Ok(all);
            }
            all.extend(got);
        }
    }

    /// Reads until `needle`; keeps what follows it. None on timeout (what
    /// was read stays in `rest`).
    fn read_until(&mut self, needle: &[u8], wait: Duration) -> Result<Option<()>, ReplError> {
        let until = Instant::now() + wait;
        let mut seen = std::mem::take(&mut self.rest);
        loop {
            if let Some(at) = seen.windows(needle.len()).position(|w| w == needle) {
                self.rest = seen.split_off(at + needle.len());
                return Ok(Some(()));
            }
            if Instant::now() >= until {
                self.rest = seen;
                return Ok(None);
            }
            seen.extend(self.read_some()?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn a_reply_is_read_in_any_split() {
        let wire = b"OKhello\r\n\x04\x04>rest";
        for split in 0..wire.len() {
            let mut p = ReplyParser::default();
            let first = p.feed(&wire[..split]).unwrap();
            let (reply, used) = match first {
                Some(r) => r,
                None => {
                    let (r, used) = p.feed(&wire[split..]).unwrap().unwrap();
                    (r, split + used)
                }
            };
            assert_eq!(reply.stdout, b"hello\r\n");
            assert!(reply.stderr.is_empty());
            assert_eq!(&wire[used..], b"rest");
        }
    }

    #[test]
    fn an_exception_is_the_second_part() {
        let mut p = ReplyParser::default();
        let (r, _) = p
            .feed(b"OK\x04Traceback...\r\nOSError: 2\r\n\x04>")
            .unwrap()
            .unwrap();
        assert!(r.stdout.is_empty());
        assert_eq!(r.stderr, b"Traceback...\r\nOSError: 2\r\n");
    }

    #[test]
    fn something_other_than_ok_is_refused() {
        let mut p = ReplyParser::default();
        assert_eq!(p.feed(b"O").unwrap(), None);
        assert_eq!(p.feed(b"x").unwrap_err(), b"Ox");
    }

    #[test]
    fn bytes_literals_escape_quotes_backslashes_and_binary() {
        assert_eq!(
            bytes_literal(b"a'b\\c\x00\xff\n"),
            r"b'a\'b\\c\x00\xff\x0a'"
        );
    }

    /// A device that answers the raw REPL: banner after Ctrl-A, `OK..>` per
    /// Ctrl-D; records every statement it was given.
    struct FakeDevice {
        out: VecDeque<u8>,
        line: Vec<u8>,
        raw: bool,
        ran: Vec<String>,
        answer: fn(&str) -> (&'static [u8], &'static [u8]),
    }

    impl Read for FakeDevice {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.out.is_empty() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let n = buf.len().min(self.out.len());
            for b in buf.iter_mut().take(n) {
                *b = self.out.pop_front().unwrap();
            }
            Ok(n)
        }
    }

    impl Write for FakeDevice {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            for &b in buf {
                match (self.raw, b) {
                    (_, 1) => {
                        self.raw = true;
                        self.out.extend(BANNER);
                    }
                    (true, 4) => {
                        let code = String::from_utf8(std::mem::take(&mut self.line)).unwrap();
                        let (out, err) = (self.answer)(&code);
                        self.ran.push(code);
                        self.out.extend(b"OK");
                        self.out.extend(out);
                        self.out.push_back(4);
                        self.out.extend(err);
                        self.out.extend(b"\x04>");
                    }
                    (true, 2) => self.raw = false,
                    (true, _) => self.line.push(b),
                    (false, _) => {}
                }
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn device(answer: fn(&str) -> (&'static [u8], &'static [u8])) -> FakeDevice {
        FakeDevice {
            out: VecDeque::new(),
            line: Vec::new(),
            raw: false,
            ran: Vec::new(),
            answer,
        }
    }

    #[test]
    fn a_file_is_written_in_pieces_to_a_temporary_name_then_renamed() {
        let data: Vec<u8> = (0..=255u8).cycle().take(500).collect();
        let mut r = RawRepl::enter(device(|_| (b"", b"")), "fake", Duration::ZERO).unwrap();
        r.write_file("moat.cfg", &data).unwrap();
        let dev = r.soft_reset().unwrap();
        assert_eq!(dev.ran[0], "f=open(\"moat.cfg.tmp\",'wb')");
        let writes: Vec<&String> = dev
            .ran
            .iter()
            .filter(|c| c.starts_with("f.write"))
            .collect();
        assert_eq!(writes.len(), 3, "500 bytes in pieces of {FILE_PIECE}");
        assert!(dev
            .ran
            .last()
            .unwrap()
            .contains("os.rename(\"moat.cfg.tmp\",\"moat.cfg\")"));
        assert!(!dev.raw, "left the raw REPL before the soft reset");
    }

    #[test]
    fn an_exception_on_the_device_names_what_was_being_done() {
        let mut r = RawRepl::enter(
            device(|_| (b"", b"OSError: [Errno 28] ENOSPC")),
            "fake",
            Duration::ZERO,
        )
        .unwrap();
        let e = r.write_file("moat.cfg", b"x").unwrap_err().to_string();
        assert!(
            e.contains("writing moat.cfg") && e.contains("ENOSPC"),
            "{e}"
        );
    }

    #[test]
    fn frozen_hashes_are_parsed_from_the_printed_table() {
        let mut r = RawRepl::enter(
            device(|_| (b"main 1 2 255\r\nproto 0 16\r\n", b"")),
            "fake",
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(
            r.frozen_hashes().unwrap(),
            vec![
                ("main".to_owned(), vec![1, 2, 255]),
                ("proto".to_owned(), vec![0, 16])
            ]
        );
    }

    #[test]
    fn a_port_where_nothing_answers_is_no_repl() {
        struct Silent;
        impl Read for Silent {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                std::thread::sleep(Duration::from_millis(5));
                Err(io::ErrorKind::TimedOut.into())
            }
        }
        impl Write for Silent {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = RawRepl::enter(Silent, "/dev/ttyX", Duration::ZERO)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("no MicroPython REPL answered on /dev/ttyX"),
            "{e}"
        );
    }
}
