//! Emulated boards run on this machine: QEMU for `qemu-mps2` ([`qemu`]),
//! rp2040js for `rpi-pico` ([`rp2040js`]).
//!
//! An emulated node is a local node (`moat flash` installs its firmware
//! into `.moat/nodes/<node>/`, `moat run` starts the board's run command
//! there); its UART is a TCP socket the emulator listens on, named by the
//! node's `port = "tcp:127.0.0.1:N"`, and the host's serial link connects
//! to it.

pub mod qemu;
pub mod rp2040js;

/// The TCP port of a `tcp:HOST:PORT` device path.
pub fn socket_port(path: &str) -> Option<u16> {
    let addr = path.strip_prefix("tcp:")?;
    addr.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_port_reads_the_port_of_a_tcp_device() {
        assert_eq!(socket_port("tcp:127.0.0.1:27600"), Some(27600));
        assert_eq!(socket_port("tcp:[::1]:5"), Some(5));
        assert_eq!(socket_port("/dev/ttyUSB0"), None);
        assert_eq!(socket_port("tcp:127.0.0.1"), None);
        assert_eq!(socket_port("tcp:h:99999"), None);
    }
}
