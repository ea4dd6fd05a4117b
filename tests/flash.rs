//! Flashing without hardware: espflash's real code and our ESP8266 ROM
//! client against the ROM-loader simulator on a pseudo-terminal, checking
//! every byte of the simulated flash, verification, chip checks and the
//! failures a user meets (wrong chip, busy or missing port, too large).

use moat::flash::{self, After, Before, FlashError, Image, SerialOptions, Silent};
use moat_e2e::esp_rom_sim::{op, Sim, SimChip, SimConfig};

/// Deterministic, poorly compressible bytes (a small LCG).
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

/// An ESP32 firmware set as the esp32 board lays it out.
fn esp32_images() -> Vec<Image> {
    let mut app = noise(150_000, 3);
    app[..1000].fill(0); // a compressible stretch too
    vec![
        Image {
            name: "bootloader/bootloader.bin".into(),
            offset: 0x1000,
            data: noise(24_000, 1),
        },
        Image {
            name: "partition_table/partition-table.bin".into(),
            offset: 0x8000,
            data: noise(3072, 2),
        },
        Image {
            name: "micropython.bin".into(),
            offset: 0x10000,
            data: app,
        },
    ]
}

fn esp8266_image(len: usize) -> Image {
    let mut data = noise(len, 7);
    data[0] = 0xe9;
    data[3] = 0x40; // 4 MiB, 40 MHz: what the simulated chip has
    Image {
        name: "firmware.bin".into(),
        offset: 0,
        data,
    }
}

/// Serial options for a pty: no reset lines.
fn pty_opts(sim: &Sim, baud: u32, stub: bool) -> SerialOptions {
    SerialOptions {
        before: Before::NoReset,
        after: After::NoResetNoStub,
        stub,
        ..SerialOptions::new(sim.path(), baud)
    }
}

fn assert_flash_holds(flash: &[u8], images: &[Image]) {
    for i in images {
        let at = i.offset as usize;
        let got = &flash[at..at + i.data.len()];
        if let Some(n) = got.iter().zip(&i.data).position(|(a, b)| a != b) {
            panic!(
                "{}: flash differs at {:#x}: {:#04x} != {:#04x}",
                i.name,
                at + n,
                got[n],
                i.data[n]
            );
        }
    }
}

#[test]
fn espflash_with_stub_writes_every_byte_at_the_board_offsets_and_verifies() {
    let sim = Sim::start(SimConfig::new(SimChip::Esp32)).unwrap();
    let images = esp32_images();
    let out = flash::espflash::flash(
        "esp32",
        &images,
        &pty_opts(&sim, 921_600, true),
        &mut Silent,
    )
    .unwrap();
    let r = sim.finish();
    assert!(r.stub_loaded, "the RAM stub was loaded");
    assert_eq!(r.bauds, [921_600], "the baud rate was changed once");
    assert_flash_holds(&r.flash, &images);
    // The app compresses (zlib through the stub); noise does not and goes
    // uncompressed.
    assert!(r.ops.contains(&op::FLASH_DEFL_DATA), "compressed writes");
    assert_eq!(
        r.ops.iter().filter(|&&o| o == op::SPI_FLASH_MD5).count(),
        6,
        "one MD5 per image to skip, one to verify"
    );
    assert_eq!(r.ends, 1, "one FLASH_DEFL_END at the very end");
    let outcomes: Vec<&str> = out.results.iter().map(|(_, o)| o.as_str()).collect();
    assert_eq!(outcomes, ["verified"; 3]);
    // Flash outside the images stays erased.
    assert!(r.flash[..0x1000].iter().all(|&b| b == 0xff));
    assert!(r.flash[0x10000 + 150_000..].iter().all(|&b| b == 0xff));
}

#[test]
fn espflash_through_the_rom_loader_writes_1k_blocks_and_verifies_with_hex_md5() {
    let sim = Sim::start(SimConfig::new(SimChip::Esp32)).unwrap();
    let images = esp32_images();
    let out = flash::espflash::flash(
        "esp32",
        &images,
        &pty_opts(&sim, 115_200, false),
        &mut Silent,
    )
    .unwrap();
    let r = sim.finish();
    assert!(!r.stub_loaded);
    assert!(r.bauds.is_empty(), "115200 needs no baud change");
    assert_flash_holds(&r.flash, &images);
    assert!(r.ops.contains(&op::FLASH_DATA) && !r.ops.contains(&op::FLASH_DEFL_DATA));
    assert_eq!(r.ends, 1);
    assert_eq!(out.results.len(), 3);
}

#[test]
fn espflash_skips_images_the_flash_already_holds() {
    let sim = Sim::start(SimConfig::new(SimChip::Esp32)).unwrap();
    let mut images = esp32_images();
    let opts = pty_opts(&sim, 115_200, true);
    flash::espflash::flash("esp32", &images, &opts, &mut Silent).unwrap();
    images[2].data[77_777] ^= 0xff; // only the app changes
    let out = flash::espflash::flash("esp32", &images, &opts, &mut Silent).unwrap();
    let r = sim.finish();
    assert_flash_holds(&r.flash, &images);
    let outcomes: Vec<&str> = out.results.iter().map(|(_, o)| o.as_str()).collect();
    assert_eq!(outcomes, ["unchanged", "unchanged", "verified"]);
}

#[test]
fn a_corrupted_flash_byte_fails_verification_and_nothing_is_reported_flashed() {
    let mut cfg = SimConfig::new(SimChip::Esp32);
    cfg.corrupt_at = Some(0x10000 + 1234);
    let sim = Sim::start(cfg).unwrap();
    let e = flash::espflash::flash(
        "esp32",
        &esp32_images(),
        &pty_opts(&sim, 115_200, true),
        &mut Silent,
    )
    .unwrap_err();
    let r = sim.finish();
    match &e {
        FlashError::VerifyFailed { what, offset } => {
            assert_eq!((what.as_str(), *offset), ("micropython.bin", 0x10000));
        }
        other => panic!("expected a verify failure, got {other}"),
    }
    assert!(e.to_string().contains("flash again"), "{e}");
    assert_eq!(r.ends, 0, "flashing was not finished");
}

#[test]
fn an_esp32_board_refuses_an_esp8266_on_the_port() {
    let sim = Sim::start(SimConfig::new(SimChip::Esp8266)).unwrap();
    let e = flash::espflash::flash(
        "esp32",
        &esp32_images(),
        &pty_opts(&sim, 115_200, true),
        &mut Silent,
    )
    .unwrap_err();
    let r = sim.finish();
    assert!(
        matches!(&e, FlashError::WrongChip { found, .. } if found.contains("esp8266")),
        "{e}"
    );
    assert!(e.to_string().contains("board"), "{e}");
    assert!(!r.ops.contains(&op::FLASH_BEGIN) && !r.ops.contains(&op::MEM_BEGIN));
}

#[test]
fn an_image_larger_than_the_flash_is_refused_before_anything_is_written() {
    let mut cfg = SimConfig::new(SimChip::Esp32);
    cfg.flash_size = 1 << 20;
    let sim = Sim::start(cfg).unwrap();
    let images = vec![Image {
        name: "micropython.bin".into(),
        offset: 0x10000,
        data: noise(1 << 20, 5),
    }];
    let e = flash::espflash::flash(
        "esp32",
        &images,
        &pty_opts(&sim, 115_200, true),
        &mut Silent,
    )
    .unwrap_err();
    let r = sim.finish();
    assert!(
        matches!(e, FlashError::TooLarge { size: 0x100000, .. }),
        "{e}"
    );
    assert!(!r.ops.contains(&op::FLASH_DEFL_BEGIN));
}

#[test]
fn esp8266_rom_client_writes_every_byte_in_1k_blocks_and_runs_the_firmware() {
    let sim = Sim::start(SimConfig::new(SimChip::Esp8266)).unwrap();
    let mut images = vec![esp8266_image(100_000)];
    images[0].data[3] = 0x2f; // built for 1 MiB, 80 MHz
    let out =
        flash::esp8266_rom::flash(&images, &pty_opts(&sim, 115_200, false), &mut Silent).unwrap();
    let r = sim.finish();
    // The header says the flash size detected (4 MiB); the rest as built.
    assert_eq!(r.flash[3], 0x4f);
    images[0].data[3] = 0x4f;
    assert_flash_holds(&r.flash, &images);
    let blocks = r.ops.iter().filter(|&&o| o == op::FLASH_DATA).count();
    assert_eq!(blocks, 100_000usize.div_ceil(1024));
    assert_eq!(r.ends, 1);
    assert!(r.rebooted, "FLASH_END told the ROM to run the firmware");
    // The last block is padded with erased-flash bytes.
    assert!(r.flash[100_000..101_376].iter().all(|&b| b == 0xff));
    assert!(out.check_after_boot.unwrap().contains("sys.info"));
}

#[test]
fn esp8266_rom_client_refuses_an_esp32_and_a_non_firmware_file() {
    let sim = Sim::start(SimConfig::new(SimChip::Esp32)).unwrap();
    let e = flash::esp8266_rom::flash(
        &[esp8266_image(4096)],
        &pty_opts(&sim, 115_200, false),
        &mut Silent,
    )
    .unwrap_err();
    assert!(
        matches!(&e, FlashError::WrongChip { found, .. } if found.contains("esp32")),
        "{e}"
    );
    assert!(!sim.finish().ops.contains(&op::FLASH_BEGIN));

    let mut bad = esp8266_image(4096);
    bad.data[0] = 0;
    let e = flash::esp8266_rom::flash(
        &[bad],
        &SerialOptions::new("/dev/null", 115_200),
        &mut Silent,
    )
    .unwrap_err();
    assert!(e.to_string().contains("0xe9"), "{e}");
}

#[test]
fn esp8266_image_larger_than_the_detected_flash_is_refused() {
    let mut cfg = SimConfig::new(SimChip::Esp8266);
    cfg.flash_size = 512 << 10;
    let sim = Sim::start(cfg).unwrap();
    let e = flash::esp8266_rom::flash(
        &[esp8266_image(600 << 10)],
        &pty_opts(&sim, 115_200, false),
        &mut Silent,
    )
    .unwrap_err();
    assert!(
        matches!(e, FlashError::TooLarge { size: 0x80000, .. }),
        "{e}"
    );
    assert!(!sim.finish().ops.contains(&op::FLASH_DATA));
}

#[test]
fn a_silent_port_is_reported_as_no_rom_loader() {
    let mut cfg = SimConfig::new(SimChip::Esp8266);
    cfg.silent = true;
    let sim = Sim::start(cfg).unwrap();
    let e = flash::esp8266_rom::flash(
        &[esp8266_image(4096)],
        &pty_opts(&sim, 115_200, false),
        &mut Silent,
    )
    .unwrap_err();
    assert!(matches!(e, FlashError::NoAnswer { .. }), "{e}");
    assert!(e.to_string().contains("download mode"), "{e}");
}

#[test]
fn missing_and_busy_ports_are_told_apart() {
    let e = flash::espflash::flash(
        "esp32",
        &esp32_images(),
        &SerialOptions::new("/dev/moat-no-such-port", 115_200),
        &mut Silent,
    )
    .unwrap_err();
    assert!(matches!(e, FlashError::PortMissing { .. }), "{e}");
    assert!(e.to_string().contains("--port"), "{e}");

    let sim = Sim::start(SimConfig::new(SimChip::Esp8266)).unwrap();
    // Another program holds the port the way serial tools do (flock).
    let holder = std::fs::File::open(sim.path()).unwrap();
    // SAFETY: flock on a valid fd.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&holder),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(rc, 0);
    let e = flash::esp8266_rom::flash(
        &[esp8266_image(4096)],
        &pty_opts(&sim, 115_200, false),
        &mut Silent,
    )
    .unwrap_err();
    assert!(matches!(e, FlashError::PortBusy { .. }), "{e}");
    drop(holder);
    assert!(sim.finish().ops.is_empty());
}

// ---- `moat flash` end to end --------------------------------------------

/// A project made by `moat init` for `board` whose node `demo` has fake
/// built artefacts (as `moat build` would leave them).
fn project_with_artefacts(board: &str, images: &[Image]) -> moat_e2e::TempProject {
    let p = moat_e2e::temp_project(board).unwrap();
    let fw = p.path().join(".moat/build/demo/firmware");
    for i in images {
        let f = fw.join(&i.name);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, &i.data).unwrap();
    }
    p
}

#[test]
fn moat_flash_plan_json_lists_each_artefact_at_its_board_offset() {
    let images = esp32_images();
    let p = project_with_artefacts("esp32", &images);
    let out = moat_e2e::run_ok(p.moat().args([
        "flash",
        "--plan",
        "--json",
        "--port",
        "/dev/ttyUSB7",
        "--baud",
        "921600",
    ]))
    .unwrap();
    let plans: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plan = &plans[0];
    assert_eq!(plan["node"], "demo");
    assert_eq!(plan["method"], "espflash");
    assert_eq!(plan["destination"]["kind"], "serial");
    assert_eq!(plan["destination"]["port"], "/dev/ttyUSB7");
    assert_eq!(plan["destination"]["baud"], 921_600);
    assert_eq!(plan["config"], "moat.cfg");
    let writes: Vec<(String, u64, u64)> = plan["writes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap().to_owned(),
                w["offset"].as_u64().unwrap(),
                w["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64, u64)> = images
        .iter()
        .map(|i| (i.name.clone(), u64::from(i.offset), i.data.len() as u64))
        .collect();
    assert_eq!(writes, expected);
}

#[test]
fn moat_flash_writes_an_esp32_node_through_the_simulator() {
    let images = esp32_images();
    let p = project_with_artefacts("esp32", &images);
    let sim = Sim::start(SimConfig::new(SimChip::Esp32)).unwrap();
    let out = moat_e2e::run_ok(p.moat().args([
        "flash",
        "--json",
        "--port",
        sim.path(),
        "--before",
        "no-reset",
        "--after",
        "no-reset-no-stub",
        "--no-config",
    ]))
    .unwrap();
    let r = sim.finish();
    assert_flash_holds(&r.flash, &images);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results: Vec<&str> = report[0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["verified"; 3]);
}

#[test]
fn moat_flash_names_the_wrong_chip_and_fails() {
    let p = project_with_artefacts("esp8266", &[esp8266_image(8192)]);
    let sim = Sim::start(SimConfig::new(SimChip::Esp32)).unwrap();
    let out = p
        .moat()
        .args(["flash", "--port", sim.path(), "--before", "no-reset"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong chip") && err.contains("esp32"), "{err}");
    assert!(!sim.finish().ops.contains(&op::FLASH_BEGIN));
}

#[test]
fn moat_flash_writes_an_esp8266_node_and_says_the_rom_cannot_verify() {
    let image = esp8266_image(50_000);
    let p = project_with_artefacts("esp8266", std::slice::from_ref(&image));
    let sim = Sim::start(SimConfig::new(SimChip::Esp8266)).unwrap();
    let out = moat_e2e::run_ok(p.moat().args([
        "flash",
        "--port",
        sim.path(),
        "--before",
        "no-reset",
        "--after",
        "no-reset-no-stub",
        "--no-config",
    ]))
    .unwrap();
    let r = sim.finish();
    assert_flash_holds(&r.flash, &[image]);
    assert!(r.rebooted);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("firmware.bin: written"), "{stdout}");
    assert!(
        stdout.contains("not verified") && stdout.contains("sys.info"),
        "{stdout}"
    );
}

#[test]
fn a_failed_config_upload_after_flashing_fails_the_command_and_says_what_was_done() {
    let image = esp8266_image(8192);
    let p = project_with_artefacts("esp8266", std::slice::from_ref(&image));
    let sim = Sim::start(SimConfig::new(SimChip::Esp8266)).unwrap();
    // The simulated chip "runs" no node runtime after FLASH_END: the link
    // never comes up.
    let out = p
        .moat()
        .args([
            "flash",
            "--port",
            sim.path(),
            "--before",
            "no-reset",
            "--after",
            "no-reset-no-stub",
        ])
        .output()
        .unwrap();
    assert_flash_holds(&sim.finish().flash, &[image]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the firmware was flashed, but") && err.contains("config"),
        "{err}"
    );
}

#[test]
fn a_reset_that_cannot_happen_on_the_port_is_reported_after_a_complete_write() {
    let sim = Sim::start(SimConfig::new(SimChip::Esp32)).unwrap();
    let images = esp32_images();
    let opts = SerialOptions {
        after: After::HardReset, // DTR/RTS ioctls fail on a pty
        ..pty_opts(&sim, 115_200, true)
    };
    let e = flash::espflash::flash("esp32", &images, &opts, &mut Silent).unwrap_err();
    assert_flash_holds(&sim.finish().flash, &images);
    let e = e.to_string();
    assert!(
        e.contains("written and verified") && e.contains("--after no-reset-no-stub"),
        "{e}"
    );
}
