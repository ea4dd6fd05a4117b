//! UF2: our writer checked by the `uf2-decode` crate, our reader on its
//! round trips, the RP2040 bootrom's rules, and the copy onto a drive.

use moat::flash::uf2::{self, Block, Uf2Error};
use moat::flash::{Destination, FlashError, Image, Silent};
use proptest::prelude::*;

fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn writer_output_decodes_with_the_uf2_decode_crate() {
    let data = bytes(10_000);
    let image = uf2::encode(uf2::FLASH_BASE, &data, uf2::RP2040_FAMILY);
    assert_eq!(image.len(), 10_000usize.div_ceil(256) * 512);
    let (bin, families) = uf2_decode::convert_from_uf2(&image).unwrap();
    // The last payload is padded to 256 bytes with zeros.
    assert_eq!(&bin[..data.len()], &data[..]);
    assert!(bin[data.len()..].iter().all(|&b| b == 0));
    assert_eq!(
        families.get(&uf2::RP2040_FAMILY).copied(),
        Some(u64::from(uf2::FLASH_BASE))
    );
}

#[test]
fn writer_follows_the_rp2040_rules() {
    let image = uf2::encode(uf2::FLASH_BASE + 0x100, &bytes(3000), uf2::RP2040_FAMILY);
    let blocks = uf2::decode(&image).unwrap();
    uf2::check_rp2040(&blocks, uf2::RP2040_FAMILY, 2 << 20).unwrap();
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(b.flags, 0x2000);
        assert_eq!(b.payload.len(), 256);
        assert_eq!(b.address, 0x1000_0100 + 256 * i as u32);
        assert_eq!((b.block_no, b.num_blocks), (i as u32, blocks.len() as u32));
    }
    let raw = &image[..512];
    assert_eq!(&raw[..8], &[0x55, 0x46, 0x32, 0x0a, 0x57, 0x51, 0x5d, 0x9e]);
    assert_eq!(&raw[508..], &0x0AB1_6F30u32.to_le_bytes());
}

fn rule_error(mutate: impl Fn(&mut Vec<Block>)) -> String {
    let mut blocks = uf2::decode(&uf2::encode(
        uf2::FLASH_BASE,
        &bytes(2048),
        uf2::RP2040_FAMILY,
    ))
    .unwrap();
    mutate(&mut blocks);
    match uf2::check_rp2040(&blocks, uf2::RP2040_FAMILY, 2 << 20) {
        Err(Uf2Error::Rule { rule, .. }) => rule,
        other => panic!("expected a rule violation, got {other:?}"),
    }
}

#[test]
fn images_the_rp2040_would_reject_are_refused() {
    assert!(rule_error(|b| b[7].payload.truncate(100)).contains("256-byte payloads"));
    assert!(rule_error(|b| b[0].flags |= 0x8000).contains("flags"));
    assert!(rule_error(|b| b[3].family = 0xada5_2840).contains("family"));
    assert!(rule_error(|b| b[2].address += 4).contains("aligned"));
    assert!(rule_error(|b| b[0].address = 0x2000_0000).contains("outside the flash"));
    assert!(rule_error(|b| b[5].num_blocks = 99).contains("numbered"));
}

#[test]
fn damaged_files_are_not_uf2() {
    let mut image = uf2::encode(uf2::FLASH_BASE, &bytes(600), uf2::RP2040_FAMILY);
    assert_eq!(
        uf2::decode(&image[..700]),
        Err(Uf2Error::Length { len: 700 })
    );
    image[512 + 508] ^= 1;
    assert_eq!(uf2::decode(&image), Err(Uf2Error::Magic { index: 1 }));
    assert_eq!(uf2::decode(&[]), Err(Uf2Error::Empty));
}

proptest! {
    #[test]
    fn reader_returns_what_the_writer_wrote(
        data in proptest::collection::vec(any::<u8>(), 1..3000),
        page in 0u32..64,
    ) {
        let at = uf2::FLASH_BASE + page * 256;
        let blocks = uf2::decode(&uf2::encode(at, &data, uf2::RP2040_FAMILY)).unwrap();
        let (base, flash) = uf2::to_flash(&blocks);
        prop_assert_eq!(base, at);
        prop_assert_eq!(&flash[..data.len()], &data[..]);
        let (bin, _) = uf2_decode::convert_from_uf2(&uf2::encode(at, &data, uf2::RP2040_FAMILY)).unwrap();
        prop_assert_eq!(&bin[..data.len()], &data[..]);
    }
}

fn firmware(len: usize) -> Image {
    Image {
        name: "firmware.uf2".into(),
        offset: 0,
        data: uf2::encode(uf2::FLASH_BASE, &bytes(len), uf2::RP2040_FAMILY),
    }
}

#[test]
fn firmware_is_copied_to_a_drive_with_info_uf2_txt() {
    let drive = tempfile::tempdir().unwrap();
    std::fs::write(drive.path().join("INFO_UF2.TXT"), "UF2 Bootloader v3.0\n").unwrap();
    let image = firmware(5000);
    let dest = Destination::Drive {
        volume: "RPI-RP2".into(),
        drive: Some(drive.path().to_path_buf()),
    };
    let out = uf2::flash(
        std::slice::from_ref(&image),
        uf2::RP2040_FAMILY,
        "RPI-RP2",
        &dest,
        1408,
        &mut Silent,
    )
    .unwrap();
    let written = std::fs::read(drive.path().join("firmware.uf2")).unwrap();
    assert_eq!(written, image.data);
    assert!(out.target.ends_with("firmware.uf2"));
}

#[test]
fn a_folder_without_info_uf2_txt_is_not_taken_for_a_drive() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Destination::Drive {
        volume: "RPI-RP2".into(),
        drive: Some(dir.path().to_path_buf()),
    };
    let e = uf2::flash(
        &[firmware(600)],
        uf2::RP2040_FAMILY,
        "RPI-RP2",
        &dest,
        1408,
        &mut Silent,
    )
    .unwrap_err();
    assert!(e.to_string().contains("BOOTSEL"), "{e}");
    assert!(!dir.path().join("firmware.uf2").exists());
}

#[test]
fn a_bin_artefact_is_converted_and_written_to_out() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pico.uf2");
    let bin = Image {
        name: "firmware.bin".into(),
        offset: 0,
        data: bytes(1000),
    };
    uf2::flash(
        &[bin],
        uf2::RP2040_FAMILY,
        "RPI-RP2",
        &Destination::File { path: out.clone() },
        1408,
        &mut Silent,
    )
    .unwrap();
    let blocks = uf2::decode(&std::fs::read(&out).unwrap()).unwrap();
    uf2::check_rp2040(&blocks, uf2::RP2040_FAMILY, 2 << 20).unwrap();
    assert_eq!(&uf2::to_flash(&blocks).1[..1000], &bytes(1000)[..]);
}

#[test]
fn firmware_over_the_flash_budget_or_of_another_family_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Destination::File {
        path: dir.path().join("x.uf2"),
    };
    let e = uf2::flash(
        &[firmware(300_000)],
        uf2::RP2040_FAMILY,
        "RPI-RP2",
        &dest,
        256,
        &mut Silent,
    )
    .unwrap_err();
    assert!(
        matches!(e, FlashError::TooLarge { size: 262_144, .. }),
        "{e}"
    );
    let other = Image {
        data: uf2::encode(uf2::FLASH_BASE, &bytes(600), 0xada5_2840),
        ..firmware(0)
    };
    let e = uf2::flash(
        &[other],
        uf2::RP2040_FAMILY,
        "RPI-RP2",
        &dest,
        1408,
        &mut Silent,
    )
    .unwrap_err();
    assert!(e.to_string().contains("family"), "{e}");
    assert!(!dir.path().join("x.uf2").exists());
}
