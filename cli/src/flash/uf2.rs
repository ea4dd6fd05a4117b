//! UF2 images (RP2040 and friends): our own writer and reader, the RP2040
//! bootrom's rules, and the copy onto the bootloader's USB drive.
//!
//! A UF2 file is a sequence of 512-byte blocks: magics 0x0A324655 and
//! 0x9E5D5157, flags, target address, payload size, block number, block
//! count, family id (flag 0x2000), 476 bytes of data, end magic
//! 0x0AB16F30. The RP2040 bootrom only accepts blocks with exactly 256
//! payload bytes at 256-aligned flash addresses (from 0x10000000), the
//! family flag and the RP2040 family id, and no other flags: `uftwo` and
//! friends that write a short last block are rejected by it.

use super::{Destination, FlashError, Image, Outcome, Progress};
use std::path::{Path, PathBuf};

pub const BLOCK_SIZE: usize = 512;
pub const MAGIC_START0: u32 = 0x0A32_4655;
pub const MAGIC_START1: u32 = 0x9E5D_5157;
pub const MAGIC_END: u32 = 0x0AB1_6F30;
pub const FLAG_FAMILY_ID: u32 = 0x0000_2000;
pub const FLAG_NOT_MAIN_FLASH: u32 = 0x0000_0001;
pub const RP2040_FAMILY: u32 = 0xe48b_ff56;
/// Where the RP2040's flash is mapped.
pub const FLASH_BASE: u32 = 0x1000_0000;
/// The payload size the RP2040 bootrom insists on.
pub const PAYLOAD: usize = 256;
const DATA_AREA: usize = 476;
/// The RP2040 addresses at most 16 MiB of flash.
pub const MAX_FLASH: u64 = 16 << 20;

/// One block, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub flags: u32,
    pub address: u32,
    pub payload: Vec<u8>,
    pub block_no: u32,
    pub num_blocks: u32,
    /// The family id, or the file size when the family flag is clear.
    pub family: u32,
}

/// A file that is not a valid UF2 image (for the given chip).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Uf2Error {
    #[error("{len} bytes is not a whole number of 512-byte UF2 blocks")]
    Length { len: usize },
    #[error("block {index}: bad magic numbers (not a UF2 block)")]
    Magic { index: usize },
    #[error("block {index}: payload size {size} exceeds the 476-byte data area")]
    PayloadTooLarge { index: usize, size: u32 },
    #[error("the image holds no blocks")]
    Empty,
    #[error("block {index}: {rule}")]
    Rule { index: usize, rule: String },
}

fn word(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// Encodes `data` to be written at `address` (256-aligned) as RP2040-style
/// UF2: 256-byte payloads (the last one padded with zeros), family flag.
pub fn encode(address: u32, data: &[u8], family: u32) -> Vec<u8> {
    let chunks: Vec<&[u8]> = data.chunks(PAYLOAD).collect();
    let n = chunks.len() as u32;
    let mut out = Vec::with_capacity(chunks.len() * BLOCK_SIZE);
    for (i, chunk) in chunks.iter().enumerate() {
        let header = [
            MAGIC_START0,
            MAGIC_START1,
            FLAG_FAMILY_ID,
            address + (i * PAYLOAD) as u32,
            PAYLOAD as u32,
            i as u32,
            n,
            family,
        ];
        for w in header {
            out.extend(w.to_le_bytes());
        }
        let mut area = [0u8; DATA_AREA];
        area[..chunk.len()].copy_from_slice(chunk);
        out.extend(area);
        out.extend(MAGIC_END.to_le_bytes());
    }
    out
}

/// Decodes every block (any UF2, any family).
pub fn decode(bytes: &[u8]) -> Result<Vec<Block>, Uf2Error> {
    if !bytes.len().is_multiple_of(BLOCK_SIZE) {
        return Err(Uf2Error::Length { len: bytes.len() });
    }
    let mut blocks = Vec::with_capacity(bytes.len() / BLOCK_SIZE);
    for (index, b) in bytes.chunks_exact(BLOCK_SIZE).enumerate() {
        if word(b, 0) != MAGIC_START0
            || word(b, 1) != MAGIC_START1
            || word(&b[BLOCK_SIZE - 4..], 0) != MAGIC_END
        {
            return Err(Uf2Error::Magic { index });
        }
        let size = word(b, 4);
        if size as usize > DATA_AREA {
            return Err(Uf2Error::PayloadTooLarge { index, size });
        }
        blocks.push(Block {
            flags: word(b, 2),
            address: word(b, 3),
            payload: b[32..32 + size as usize].to_vec(),
            block_no: word(b, 5),
            num_blocks: word(b, 6),
            family: word(b, 7),
        });
    }
    if blocks.is_empty() {
        return Err(Uf2Error::Empty);
    }
    Ok(blocks)
}

/// Checks the rules the RP2040 bootrom enforces (and that the image fits
/// a flash of `flash_size` bytes).
pub fn check_rp2040(blocks: &[Block], family: u32, flash_size: u64) -> Result<(), Uf2Error> {
    let n = blocks.len() as u32;
    let rule = |index: usize, rule: String| Err(Uf2Error::Rule { index, rule });
    let end = u64::from(FLASH_BASE) + flash_size;
    for (index, b) in blocks.iter().enumerate() {
        if b.flags != FLAG_FAMILY_ID {
            return rule(
                index,
                format!(
                    "flags {:#x}: the RP2040 wants exactly the family flag 0x2000",
                    b.flags
                ),
            );
        }
        if b.family != family {
            return rule(
                index,
                format!(
                    "family {:#010x}, but the board's is {family:#010x}",
                    b.family
                ),
            );
        }
        if b.payload.len() != PAYLOAD {
            return rule(
                index,
                format!(
                    "payload of {} bytes: the RP2040 takes only 256-byte payloads",
                    b.payload.len()
                ),
            );
        }
        if b.address % PAYLOAD as u32 != 0 {
            return rule(
                index,
                format!("address {:#x} is not 256-byte aligned", b.address),
            );
        }
        if b.address < FLASH_BASE || u64::from(b.address) + PAYLOAD as u64 > end {
            return rule(
                index,
                format!(
                    "address {:#x} is outside the flash ({FLASH_BASE:#x}..{end:#x})",
                    b.address
                ),
            );
        }
        if b.block_no != index as u32 || b.num_blocks != n {
            return rule(
                index,
                format!(
                    "numbered {} of {}, expected {index} of {n}",
                    b.block_no, b.num_blocks
                ),
            );
        }
    }
    Ok(())
}

/// The flash contents an image describes: its lowest address and the
/// bytes from there (gaps filled with 0xff, as erased flash reads).
pub fn to_flash(blocks: &[Block]) -> (u32, Vec<u8>) {
    let main: Vec<&Block> = blocks
        .iter()
        .filter(|b| b.flags & FLAG_NOT_MAIN_FLASH == 0)
        .collect();
    let Some(base) = main.iter().map(|b| b.address).min() else {
        return (0, Vec::new());
    };
    let end = main
        .iter()
        .map(|b| b.address as usize + b.payload.len())
        .max()
        .unwrap_or(base as usize);
    let mut out = vec![0xff; end - base as usize];
    for b in main {
        let at = (b.address - base) as usize;
        out[at..at + b.payload.len()].copy_from_slice(&b.payload);
    }
    (base, out)
}

/// Mount points of UF2 bootloader drives labelled `volume`: every mounted
/// file system (and `/media/*/`, `/run/media/*/`) whose folder is named
/// `volume` and holds `INFO_UF2.TXT`.
pub fn find_drives(volume: &str) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let roots = ["/media", "/run/media", "/Volumes"].map(Path::new);
    find_drives_in(volume, &mounts, &roots)
}

/// [`find_drives`] given the mount table's text and the automount roots.
pub fn find_drives_in(volume: &str, mounts: &str, roots: &[&Path]) -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    for line in mounts.lines() {
        if let Some(dir) = line.split(' ').nth(1) {
            // /proc/mounts escapes spaces as \040.
            candidates.push(PathBuf::from(dir.replace("\\040", " ")));
        }
    }
    for root in roots {
        if let Ok(users) = std::fs::read_dir(root) {
            for u in users.flatten() {
                candidates.push(u.path().join(volume));
                candidates.push(u.path());
            }
        }
    }
    let mut found: Vec<PathBuf> = candidates
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == volume) && is_uf2_drive(p))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// A UF2 bootloader drive has `INFO_UF2.TXT` at its root.
pub fn is_uf2_drive(dir: &Path) -> bool {
    dir.join("INFO_UF2.TXT").is_file()
}

/// Checks and writes the UF2 image (the one artefact, or `.bin`
/// artefacts converted at their offsets) to the drive or file of `dest`.
pub fn flash(
    images: &[Image],
    family: u32,
    volume: &str,
    dest: &Destination,
    flash_kb: u32,
    progress: &mut dyn Progress,
) -> Result<Outcome, FlashError> {
    let [image] = images else {
        return Err(FlashError::Invalid(format!(
            "a UF2 board flashes exactly one artefact, the board file lists {}",
            images.len()
        )));
    };
    let uf2 = if image.name.ends_with(".uf2") {
        image.data.clone()
    } else {
        let at = if image.offset == 0 {
            FLASH_BASE
        } else {
            image.offset
        };
        encode(at, &image.data, family)
    };
    let invalid = |e: Uf2Error| {
        FlashError::Invalid(format!(
            "{} is not a valid image for this board: {e}: rebuild it with `moat build`",
            image.name
        ))
    };
    let blocks = decode(&uf2).map_err(invalid)?;
    let flash_size = u64::from(flash_kb) * 1024;
    // The bootrom's rules, within the largest flash an RP2040 addresses;
    // the board's budget is checked next, with its own error.
    check_rp2040(&blocks, family, MAX_FLASH).map_err(invalid)?;
    let (base, bytes) = to_flash(&blocks);
    let end = u64::from(base) + bytes.len() as u64 - u64::from(FLASH_BASE);
    if flash_size > 0 && end > flash_size {
        return Err(FlashError::TooLarge {
            what: image.name.clone(),
            end,
            size: flash_size,
        });
    }
    let target = match dest {
        Destination::File { path } => path.clone(),
        Destination::Drive { drive: Some(d), .. } => {
            if !is_uf2_drive(d) {
                return Err(FlashError::Invalid(format!(
                    "{} is not a UF2 bootloader drive (no INFO_UF2.TXT): hold BOOTSEL while plugging the board in, then name the drive's mount point",
                    d.display()
                )));
            }
            d.join("firmware.uf2")
        }
        Destination::Drive { drive: None, .. } => {
            let drives = find_drives(volume);
            match drives.as_slice() {
                [one] => one.join("firmware.uf2"),
                [] => {
                    return Err(FlashError::Invalid(format!(
                        "no {volume} drive is mounted: hold BOOTSEL while plugging the board in (and mount the drive), \
                         or name its mount point with `--drive`, or write the image to a file with `--out`"
                    )))
                }
                many => {
                    return Err(FlashError::Invalid(format!(
                        "{} {volume} drives are mounted ({}): name one with `--drive`",
                        many.len(),
                        many.iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        }
        other => {
            return Err(FlashError::Invalid(format!(
                "UF2 images go to a drive or a file, not to {other:?}"
            )))
        }
    };
    write_file(&target, &uf2, progress)?;
    Ok(Outcome {
        results: vec![(image.name.clone(), "written".to_owned())],
        target: target.display().to_string(),
        check_after_boot: None,
    })
}

/// Writes in 32 KiB pieces (progress) and syncs: the bootloader starts
/// flashing as blocks arrive and reboots after the last.
fn write_file(target: &Path, uf2: &[u8], progress: &mut dyn Progress) -> Result<(), FlashError> {
    use std::io::Write as _;
    let err = |e| FlashError::io(format!("cannot write {}", target.display()), e);
    let mut f = std::fs::File::create(target).map_err(err)?;
    progress.start(
        &format!(
            "copy {} blocks to {}",
            uf2.len() / BLOCK_SIZE,
            target.display()
        ),
        uf2.len() as u64,
    );
    let mut done = 0u64;
    for chunk in uf2.chunks(32 * 1024) {
        f.write_all(chunk).map_err(err)?;
        done += chunk.len() as u64;
        progress.set(done);
    }
    f.sync_all().map_err(err)?;
    progress.finish("written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootloader_drives_are_found_in_the_mount_table_and_under_automount_roots() {
        let t = tempfile::tempdir().unwrap();
        let mounted = t.path().join("mnt/RPI-RP2");
        let automount = t.path().join("media/alice/RPI-RP2");
        let not_uf2 = t.path().join("media/bob/RPI-RP2");
        let other_label = t.path().join("mnt/OTHER");
        for d in [&mounted, &automount, &not_uf2, &other_label] {
            std::fs::create_dir_all(d).unwrap();
        }
        for d in [&mounted, &automount, &other_label] {
            std::fs::write(d.join("INFO_UF2.TXT"), "UF2 Bootloader v3.0\n").unwrap();
        }
        let mounts = format!(
            "/dev/sda1 / ext4 rw 0 0\n/dev/sdb1 {} vfat rw 0 0\n/dev/sdc1 {} vfat rw 0 0\n",
            mounted.display(),
            other_label.display()
        );
        let media = t.path().join("media");
        let found = find_drives_in("RPI-RP2", &mounts, &[media.as_path()]);
        let mut want = vec![automount, mounted];
        want.sort();
        assert_eq!(found, want);
        assert!(find_drives_in("RPI-RP2", "", &[]).is_empty());
    }
}
