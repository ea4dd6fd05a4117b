//! SWD/JTAG debug probes through probe-rs (cargo feature `probe-rs`, on
//! by default; its build cost is noted in the crate's Cargo.toml).
//!
//! The chip name is looked up in probe-rs's built-in target database; the
//! artefacts (ELF: its loadable segments at their physical addresses; raw
//! images: at the board file's offset, else the start of the first flash
//! region) are staged in a `FlashLoader`, which refuses data outside the
//! chip's flash. [`plan`] does that without a probe; [`flash`] then
//! programs and verifies through the first probe found.

use super::{Block, FlashError, Outcome, Progress, Write};
use probe_rs::config::{MemoryRegion, Registry};
use probe_rs::flashing::{DownloadOptions, FlashLoader, FlashProgress, ProgressEvent};
use probe_rs::probe::list::Lister;
use probe_rs::probe::Probe;
use probe_rs::{Permissions, Session, Target};
use serde::Serialize;

/// The chip `name` from probe-rs's target database.
pub fn lookup(name: &str) -> Result<Target, FlashError> {
    let registry = Registry::from_builtin_families();
    registry
        .get_target_by_name(name)
        .map_err(|e| FlashError::Invalid(unknown_chip(&registry, name, &e)))
}

/// Checks that probe-rs knows the chip `name` (board files are checked
/// when they are loaded, long before anything is flashed); the error says
/// why not, with close matches and the fix.
pub fn check_chip(name: &str) -> Result<(), String> {
    let registry = Registry::from_builtin_families();
    registry
        .get_target_by_name(name)
        .map(drop)
        .map_err(|e| unknown_chip(&registry, name, &e))
}

fn unknown_chip(registry: &Registry, name: &str, e: &dyn std::fmt::Display) -> String {
    let close = close_chips(registry, name);
    let hint = if !close.is_empty() {
        format!(
            "did you mean {}? (all names: `probe-rs chip list`)",
            close
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        // The longest prefix of the name that matches something.
        let similar = (2..name.len())
            .rev()
            .filter_map(|n| name.get(..n))
            .map(|stem| registry.search_chips(stem))
            .find(|found| !found.is_empty())
            .unwrap_or_default();
        if similar.is_empty() {
            "see `probe-rs chip list` for the names".to_owned()
        } else {
            format!(
                "similar names: {}",
                similar.into_iter().take(8).collect::<Vec<_>>().join(", ")
            )
        }
    };
    format!("probe-rs does not know the chip `{name}` ({e}): fix `chip` in the board file; {hint}")
}

/// Up to five chip names within a few edits of `name` (ignoring case),
/// closest first.
fn close_chips(registry: &Registry, name: &str) -> Vec<String> {
    let want = name.to_ascii_lowercase();
    let mut found: Vec<(usize, &str)> = registry
        .families()
        .iter()
        .flat_map(|f| f.variants.iter())
        .flat_map(|chip| chip.package_variants())
        .filter_map(|c| {
            let d = edit_distance(&want, &c.to_ascii_lowercase());
            (d <= 2.max(c.len() / 4) && d < c.len()).then_some((d, c.as_str()))
        })
        .collect();
    found.sort_unstable();
    found.dedup_by(|a, b| a.1 == b.1);
    found
        .into_iter()
        .take(5)
        .map(|(_, c)| c.to_owned())
        .collect()
}

/// Levenshtein distance (chip names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (up + 1).min(row[j] + 1).min(diag + usize::from(ca != *cb));
            diag = up;
        }
    }
    row[b.len()]
}

/// What programming would do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbePlan {
    /// The target's name in probe-rs's database.
    pub target: String,
    pub blocks: Vec<Block>,
}

/// Loadable segments (`PT_LOAD` with file data) of a 32-bit little-endian
/// ELF file, at their physical addresses; None when `data` is not one.
pub fn elf_segments(data: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    if data.len() < 52 || &data[..4] != b"\x7fELF" || data[4] != 1 || data[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let phoff = u32_at(28)? as usize;
    let phentsize = usize::from(u16_at(42)?);
    let phnum = usize::from(u16_at(44)?);
    let mut out = Vec::new();
    for i in 0..phnum {
        let h = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let (p_type, p_offset, p_paddr, p_filesz) =
            (u32_at(h)?, u32_at(h + 4)?, u32_at(h + 12)?, u32_at(h + 16)?);
        if p_type == 1 && p_filesz > 0 {
            let start = p_offset as usize;
            let bytes = data.get(start..start.checked_add(p_filesz as usize)?)?;
            out.push((u64::from(p_paddr), bytes));
        }
    }
    Some(out)
}

fn first_flash(target: &Target) -> Option<u64> {
    target
        .memory_map
        .iter()
        .filter_map(MemoryRegion::as_nvm_region)
        .map(|r| r.range.start)
        .min()
}

fn in_flash(target: &Target, address: u64) -> bool {
    target
        .memory_map
        .iter()
        .filter_map(MemoryRegion::as_nvm_region)
        .any(|r| r.range.contains(&address))
}

fn flash_ranges(target: &Target) -> String {
    target
        .memory_map
        .iter()
        .filter_map(MemoryRegion::as_nvm_region)
        .map(|r| format!("{:#x}..{:#x}", r.range.start, r.range.end))
        .collect::<Vec<_>>()
        .join(", ")
}

fn region_name(target: &Target, address: u64) -> String {
    target
        .memory_map
        .iter()
        .filter_map(MemoryRegion::as_nvm_region)
        .find(|r| r.range.contains(&address))
        .map_or_else(
            || "flash".to_owned(),
            |r| r.name.clone().unwrap_or_else(|| "flash".to_owned()),
        )
}

/// Stages `writes` in a loader for `target`.
fn loader(target: &Target, writes: &[Write]) -> Result<FlashLoader, FlashError> {
    let mut loader = target.flash_loader();
    for w in writes {
        let data = std::fs::read(&w.file)
            .map_err(|e| FlashError::io(format!("cannot read {}", w.file.display()), e))?;
        let pieces = match elf_segments(&data) {
            Some(segments) if !segments.is_empty() => segments,
            Some(_) => {
                return Err(FlashError::Invalid(format!(
                    "{} is an ELF file without loadable segments: flash the firmware ELF that `moat build` produced",
                    w.name
                )))
            }
            None => {
                let at = match w.offset {
                    Some(o) => u64::from(o),
                    None => first_flash(target).ok_or_else(|| {
                        FlashError::Invalid(format!("{} has no flash region", target.name))
                    })?,
                };
                vec![(at, data.as_slice())]
            }
        };
        for (address, bytes) in pieces {
            let end = address + bytes.len() as u64;
            if !in_flash(target, address) || !in_flash(target, end.saturating_sub(1)) {
                return Err(FlashError::Invalid(format!(
                    "{}: {} bytes at {address:#x} do not fit the flash of {} (its flash: {}): check the board's linker settings and `offset`",
                    w.name,
                    bytes.len(),
                    target.name,
                    flash_ranges(target)
                )));
            }
            loader.add_data(address, bytes).map_err(|e| {
                FlashError::Invalid(format!(
                    "{}: {} bytes at {address:#x} do not fit the flash of {} ({e}): check the board's linker settings and `offset`",
                    w.name,
                    bytes.len(),
                    target.name
                ))
            })?;
        }
    }
    Ok(loader)
}

/// What [`flash`] would program, without a probe.
pub fn plan(chip: &str, writes: &[Write]) -> Result<ProbePlan, FlashError> {
    let target = lookup(chip)?;
    let loader = loader(&target, writes)?;
    let blocks = loader
        .data()
        .map(|(address, bytes)| Block {
            address,
            size: bytes.len() as u64,
            region: region_name(&target, address),
        })
        .collect();
    Ok(ProbePlan {
        target: target.name.clone(),
        blocks,
    })
}

/// Runs the whole download (flash algorithm selection, sector layout) on
/// `probe` without writing: probe-rs's `dry_run`.
pub fn dry_run(probe: Probe, chip: &str, writes: &[Write]) -> Result<ProbePlan, FlashError> {
    let target = lookup(chip)?;
    let mut session = probe
        .attach(target.clone(), Permissions::default())
        .map_err(|e| FlashError::Invalid(format!("cannot attach to {chip}: {e}")))?;
    let planned = plan(chip, writes)?;
    let loader = loader(&target, writes)?;
    let mut options = DownloadOptions::default();
    options.dry_run = true;
    loader
        .commit(&mut session, options)
        .map_err(|e| FlashError::Invalid(format!("the flash plan for {chip} failed: {e}")))?;
    Ok(planned)
}

/// Programs and verifies `writes` through the first debug probe found,
/// then resets the chip.
pub fn flash(
    chip: &str,
    writes: &[Write],
    progress: &mut dyn Progress,
) -> Result<Outcome, FlashError> {
    let target = lookup(chip)?;
    let probes = Lister::new().list_all();
    let Some(info) = probes.first() else {
        return Err(FlashError::Invalid(
            "no debug probe found: connect one (CMSIS-DAP e.g. a Raspberry Pi Debug Probe, ST-Link, J-Link) and check its USB permissions (udev rules)".into(),
        ));
    };
    let name = info.identifier.clone();
    let probe = info.open().map_err(|e| {
        FlashError::Invalid(format!(
            "cannot open the debug probe {name}: {e}: is another program (a debugger, probe-rs) using it?"
        ))
    })?;
    let mut session: Session = probe
        .attach(target.clone(), Permissions::default())
        .map_err(|e| {
            FlashError::Invalid(format!(
                "cannot attach to a {chip} through {name}: {e}: check the SWD wiring and the target's power"
            ))
        })?;
    let loader = loader(&target, writes)?;
    let total: u64 = loader.data().map(|(_, d)| d.len() as u64).sum();
    progress.start(&format!("program {chip} through {name}"), total);
    let mut done = 0u64;
    let mut options = DownloadOptions::default();
    options.verify = true;
    options.progress = FlashProgress::new(|event| {
        if let ProgressEvent::Progress { size, .. } = event {
            done += size;
            progress.set(done.min(total));
        }
    });
    loader.commit(&mut session, options).map_err(|e| {
        let verify = e.to_string().to_lowercase().contains("verif");
        if verify {
            FlashError::VerifyFailed {
                what: chip.to_owned(),
                offset: 0,
            }
        } else {
            FlashError::Device {
                port: name.clone(),
                during: "programming".into(),
                message: e.to_string(),
            }
        }
    })?;
    progress.finish("programmed and verified");
    if let Ok(mut core) = session.core(0) {
        let _ = core.reset();
    }
    Ok(Outcome {
        results: writes
            .iter()
            .map(|w| (w.name.clone(), "verified".to_owned()))
            .collect(),
        target: name,
        check_after_boot: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A minimal 32-bit ARM ELF: one `PT_LOAD` segment holding `.text` at
    /// `address`, with section headers (probe-rs matches segments to
    /// sections).
    fn elf(address: u32, code: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.text\0.shstrtab\0";
        let (ehsize, phsize, shsize) = (52u32, 32u32, 40u32);
        let text_off = ehsize + phsize;
        let str_off = text_off + code.len() as u32;
        let sh_off = (str_off + shstrtab.len() as u32).next_multiple_of(4);
        let mut f = Vec::new();
        f.extend(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
        let w16 = |f: &mut Vec<u8>, v: u16| f.extend(v.to_le_bytes());
        let w32 = |f: &mut Vec<u8>, v: u32| f.extend(v.to_le_bytes());
        w16(&mut f, 2); // ET_EXEC
        w16(&mut f, 40); // EM_ARM
        w32(&mut f, 1);
        w32(&mut f, address | 1); // entry (thumb)
        w32(&mut f, ehsize); // phoff
        w32(&mut f, sh_off);
        w32(&mut f, 0x0500_0200); // EABI5, soft float
        w16(&mut f, ehsize as u16);
        w16(&mut f, phsize as u16);
        w16(&mut f, 1);
        w16(&mut f, shsize as u16);
        w16(&mut f, 3);
        w16(&mut f, 2); // shstrndx
        for v in [
            1,
            text_off,
            address,
            address,
            code.len() as u32,
            code.len() as u32,
            5,
            4,
        ] {
            w32(&mut f, v); // PT_LOAD, R+X
        }
        f.extend(code);
        f.extend(shstrtab);
        f.resize(sh_off as usize, 0);
        f.extend([0u8; 40]); // null section
        for v in [1, 1, 6, address, text_off, code.len() as u32, 0, 0, 4, 0] {
            w32(&mut f, v); // .text: PROGBITS, ALLOC+EXEC
        }
        for v in [7, 3, 0, 0, str_off, shstrtab.len() as u32, 0, 0, 1, 0] {
            w32(&mut f, v); // .shstrtab: STRTAB
        }
        f
    }

    fn write(dir: &Path, name: &str, data: &[u8], offset: Option<u32>) -> Write {
        let file = dir.join(name);
        std::fs::write(&file, data).unwrap();
        Write {
            name: name.into(),
            file,
            offset,
            size: data.len() as u64,
            sha256: String::new(),
        }
    }

    #[test]
    fn elf_segments_are_read_at_their_physical_addresses() {
        let code: Vec<u8> = (0..=255).collect();
        let file = elf(0x1000_0000, &code);
        let segments = elf_segments(&file).unwrap();
        assert_eq!(segments, [(0x1000_0000, code.as_slice())]);
        assert_eq!(elf_segments(b"not an elf"), None);
    }

    #[test]
    fn chips_are_looked_up_in_the_target_database() {
        for chip in ["RP2040", "nRF52840_xxAA", "STM32F411RETx"] {
            assert_eq!(lookup(chip).unwrap().name, chip);
        }
        let e = lookup("RP2041").unwrap_err().to_string();
        assert!(e.contains("board file") && e.contains("RP2040"), "{e}");
    }

    #[test]
    fn an_rp2040_elf_is_planned_into_its_flash() {
        let dir = tempfile::tempdir().unwrap();
        let code = vec![0x5a; 3000];
        let w = write(dir.path(), "firmware.elf", &elf(0x1000_0000, &code), None);
        let p = plan("RP2040", &[w]).unwrap();
        assert_eq!(p.target, "RP2040");
        assert_eq!(p.blocks.len(), 1);
        assert_eq!((p.blocks[0].address, p.blocks[0].size), (0x1000_0000, 3000));
        let raw = write(dir.path(), "firmware.bin", &code, None);
        assert_eq!(
            plan("RP2040", &[raw]).unwrap().blocks[0].address,
            0x1000_0000
        );
    }

    #[test]
    fn data_outside_the_flash_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let w = write(dir.path(), "ram.elf", &elf(0x2000_0000, &[1; 64]), None);
        let e = plan("RP2040", &[w]).unwrap_err().to_string();
        assert!(e.contains("0x20000000") && e.contains("do not fit"), "{e}");
    }

    #[test]
    fn a_dry_run_on_a_fake_probe_prepares_the_download() {
        let dir = tempfile::tempdir().unwrap();
        for (chip, at) in [("RP2040", 0x1000_0000), ("STM32F411RETx", 0x0800_0000)] {
            let w = write(dir.path(), "firmware.elf", &elf(at, &[7; 4096]), None);
            let probe = Probe::from_specific_probe(Box::new(
                probe_rs::probe::fake_probe::FakeProbe::with_mocked_core(),
            ));
            let p = dry_run(probe, chip, &[w]).unwrap();
            assert_eq!(p.blocks[0].address, u64::from(at));
        }
    }

    #[test]
    fn the_plan_of_a_probe_rs_board_lists_the_loader_blocks_and_checks_the_chip() {
        use crate::board::{Artefact, Boards, Flash};
        let mut board = Boards::embedded().get("rpi-pico").cloned().unwrap();
        board.flash = Flash::ProbeRs {
            chip: "RP2040".into(),
        };
        board.firmware = vec![Artefact {
            path: "firmware.elf".into(),
            offset: None,
        }];
        let build = tempfile::tempdir().unwrap();
        std::fs::create_dir(build.path().join("firmware")).unwrap();
        write(
            &build.path().join("firmware"),
            "firmware.elf",
            &elf(0x1000_0000, &[1; 1000]),
            None,
        );
        let opts = crate::flash::Options::default();
        let p = crate::flash::plan_for("pico", None, &board, build.path(), &opts).unwrap();
        assert_eq!(p.method, "probe-rs");
        let blocks: Vec<(u64, u64)> = p.blocks.iter().map(|b| (b.address, b.size)).collect();
        assert_eq!(blocks, [(0x1000_0000, 1000)]);
        board.flash = Flash::ProbeRs {
            chip: "RP2041".into(),
        };
        let e = crate::flash::plan_for("pico", None, &board, build.path(), &opts).unwrap_err();
        assert!(
            e.to_string().contains("fix `chip` in the board file"),
            "{e}"
        );
    }
}
