//! Flash throughput against the ESP ROM-loader simulator: bytes on the
//! wire per byte flashed, and the time that takes at 115200 and 921600
//! baud (8N1: 10 bits a byte; the pty itself has no rate, so the time is
//! computed from the bytes, the protocol-efficiency figure that matters).
//!
//! `cargo bench -p moat-e2e --bench flash_throughput`

use moat::flash::{self, After, Before, Image, SerialOptions, Silent};
use moat_e2e::esp_rom_sim::{Sim, SimChip, SimConfig};
use std::time::Instant;

const SIZE: usize = 512 * 1024;

fn noise(len: usize) -> Vec<u8> {
    let mut x = 12345u32;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

/// Machine code: the start of this benchmark's own executable.
fn code(len: usize) -> Vec<u8> {
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    exe.iter().cycle().take(len).copied().collect()
}

fn main() {
    let inputs = [("machine code", code(SIZE)), ("random", noise(SIZE))];
    println!(
        "{:<14} {:<13} {:>7} {:>12} {:>10} {:>10} {:>10} {:>9}",
        "path", "data", "baud", "wire bytes", "wire/byte", "s@115200", "s@921600", "pty wall"
    );
    for (label, data) in &inputs {
        for (path, chip, stub) in [
            ("esp32 stub", SimChip::Esp32, true),
            ("esp32 rom", SimChip::Esp32, false),
            ("esp8266 rom", SimChip::Esp8266, false),
        ] {
            for baud in [115_200u32, 921_600] {
                if chip == SimChip::Esp8266 && baud != 115_200 {
                    continue; // our ESP8266 client stays at 115200
                }
                let sim = Sim::start(SimConfig::new(chip)).unwrap();
                let mut image = data.clone();
                image[0] = 0xe9;
                let images = [Image {
                    name: "firmware.bin".into(),
                    offset: if chip == SimChip::Esp32 { 0x10000 } else { 0 },
                    data: image,
                }];
                let opts = SerialOptions {
                    before: Before::NoReset,
                    after: After::NoResetNoStub,
                    stub,
                    skip: false,
                    ..SerialOptions::new(sim.path(), baud)
                };
                let t = Instant::now();
                let result = match chip {
                    SimChip::Esp32 => flash::espflash::flash("esp32", &images, &opts, &mut Silent),
                    SimChip::Esp8266 => flash::esp8266_rom::flash(&images, &opts, &mut Silent),
                };
                let wall = t.elapsed();
                let r = sim.finish();
                result.unwrap();
                assert_eq!(
                    &r.flash[images[0].offset as usize..][..SIZE],
                    &images[0].data[..]
                );
                let wire = r.from_host + r.to_host;
                let per = wire as f64 / SIZE as f64;
                println!(
                    "{:<14} {:<13} {:>7} {:>12} {:>10.3} {:>10.1} {:>10.1} {:>8.2}s",
                    path,
                    label,
                    baud,
                    wire,
                    per,
                    wire as f64 * 10.0 / 115_200.0,
                    wire as f64 * 10.0 / 921_600.0,
                    wall.as_secs_f64()
                );
            }
        }
    }
}
