//! The `qemu-mps2` board under `qemu-system-arm`.
//!
//! Its firmware is MicroPython's qemu port with moat's patch
//! (`micropython-patches/qemu-mps2/`): UART0 is the node's link, UART1 its
//! console, and the filesystem is littlefs on `flash.bin` in the working
//! directory (semihosting). Files `moat.cfg`/`moat_fb.cfg` found there at
//! boot are moved into the node's filesystem (`moat flash` leaves them).

use std::path::Path;
use std::process::Command;

/// The emulator binary.
pub const PROGRAM: &str = "qemu-system-arm";

/// What to install when it is missing.
pub const HINT: &str = "apt-get install qemu-system-arm";

/// Where the console (UART1) goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Console {
    /// The emulator's stdout (and stdin).
    Stdio,
    /// Appended to a file.
    File(std::path::PathBuf),
    /// Dropped.
    Null,
    /// A pseudo-terminal QEMU opens; it names it on stdout or stderr,
    /// depending on its version (see [`pty_path`]). A serial console for REPL tools (mpremote, `moat cfg
    /// upload --repl`).
    Pty,
}

/// The pseudo-terminal QEMU opened for a `Pty` console, from a line it
/// printed: `char device redirected to /dev/pts/5 (label serial1)`.
pub fn pty_path(stderr_line: &str) -> Option<std::path::PathBuf> {
    let rest = stderr_line.split("redirected to ").nth(1)?;
    let path = rest.split_whitespace().next()?;
    path.starts_with('/').then(|| path.into())
}

/// The QEMU command for `firmware`, its UART0 listening on
/// `127.0.0.1:port`, run in `dir` (which holds the flash image).
pub fn command(firmware: &Path, port: u16, console: &Console, dir: &Path) -> Command {
    let console = match console {
        Console::Stdio => "stdio".to_owned(),
        Console::File(p) => format!("file:{}", p.display()),
        Console::Null => "null".to_owned(),
        Console::Pty => "pty".to_owned(),
    };
    let mut c = Command::new(PROGRAM);
    c.args(["-machine", "mps2-an385", "-nographic", "-monitor", "null"])
        .args(["-semihosting", "-serial"])
        // nodelay: the link's small frames would otherwise wait for the host's
        // delayed ACK (~40 ms each; ~20 requests/s instead of ~200)
        .arg(format!(
            "tcp:127.0.0.1:{port},server=on,wait=off,nodelay=on"
        ))
        .args(["-serial", &console, "-kernel"])
        .arg(firmware)
        .current_dir(dir);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uart0_is_the_socket_and_uart1_the_console() {
        let c = command(
            Path::new("/n/firmware.elf"),
            27600,
            &Console::File("/n/console.log".into()),
            Path::new("/n"),
        );
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let serials: Vec<&str> = args
            .iter()
            .enumerate()
            .filter(|(_, a)| *a == "-serial")
            .map(|(i, _)| args[i + 1].as_str())
            .collect();
        assert_eq!(
            serials,
            [
                "tcp:127.0.0.1:27600,server=on,wait=off,nodelay=on",
                "file:/n/console.log"
            ]
        );
        assert!(args.contains(&"-semihosting".to_owned()));
        assert_eq!(c.get_current_dir(), Some(Path::new("/n")));
    }

    #[test]
    fn the_console_pty_is_read_off_qemus_stderr() {
        assert_eq!(
            pty_path("char device redirected to /dev/pts/5 (label serial1)"),
            Some("/dev/pts/5".into())
        );
        assert_eq!(pty_path("qemu-system-arm: warning: something"), None);
    }
}
