//! The CRC16 SerialPacker puts after every frame.
//!
//! Polynomial 0xBAAD in reflected (LSB-first) form, processed one nibble at a
//! time with a 16-entry table, initial value 0, no final XOR, high nibble of
//! each byte first. A nibble table keeps satellites' flash and RAM use tiny,
//! which is why the protocol uses this form rather than a byte table.
//! Check value: `crc16(b"123456789") == 0xDC07`.

/// The generator polynomial, reflected form.
pub const POLY: u16 = 0xBAAD;

/// `TABLE[n]` is the CRC register contribution of shifting nibble `n` out
/// of the low end: four reflected polynomial divisions.
const TABLE: [u16; 16] = nibble_table(POLY);

const fn nibble_table(poly: u16) -> [u16; 16] {
    let mut table = [0u16; 16];
    let mut n = 0;
    while n < 16 {
        let mut crc = n as u16;
        let mut bit = 0;
        while bit < 4 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ poly
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[n] = crc;
        n += 1;
    }
    table
}

/// A running CRC16, for computing the checksum while bytes arrive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Crc16(u16);

impl Crc16 {
    pub fn new() -> Self {
        Crc16(0)
    }

    pub fn update(&mut self, byte: u8) {
        let mut crc = self.0;
        crc = (crc >> 4) ^ TABLE[usize::from((crc ^ u16::from(byte >> 4)) & 0xF)];
        crc = (crc >> 4) ^ TABLE[usize::from((crc ^ u16::from(byte)) & 0xF)];
        self.0 = crc;
    }

    pub fn value(self) -> u16 {
        self.0
    }
}

/// The CRC16 of `data`.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc = Crc16::new();
    for &b in data {
        crc.update(b);
    }
    crc.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_matches_the_protocol() {
        assert_eq!(crc16(b"123456789"), 0xDC07);
    }

    #[test]
    fn table_is_derived_from_the_polynomial() {
        // Nibble 8 is the lone top bit: one division leaves exactly POLY.
        assert_eq!(TABLE[0], 0);
        assert_eq!(TABLE[8], POLY);
        assert_eq!(TABLE[1], 0x64a8);
    }

    #[test]
    fn empty_input_is_zero() {
        assert_eq!(crc16(&[]), 0);
    }

    #[test]
    fn single_bit_flips_change_the_crc() {
        let data = b"moat serial frame";
        let good = crc16(data);
        for i in 0..data.len() {
            for bit in 0..8 {
                let mut bad = data.to_vec();
                bad[i] ^= 1 << bit;
                assert_ne!(crc16(&bad), good, "byte {i} bit {bit}");
            }
        }
    }
}
