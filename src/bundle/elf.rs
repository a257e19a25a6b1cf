//! Where an ELF executable's own bytes end. A bundled mkectl whose footer was
//! cut off still starts (the payload is never mapped), so "no footer" alone
//! would silently mean "no bundle"; bytes beyond the ELF image without a
//! footer reveal the truncation instead.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const EHDR_LEN: usize = 64;
const SHT_NOBITS: u32 = 8;
/// Refuse absurd header tables instead of allocating for them.
const MAX_HEADERS: u64 = 1 << 16;

fn u16_at(b: &[u8], i: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[i], b[i + 1]]))
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

/// End offset of the ELF image in `file`: the furthest byte covered by the
/// ELF header, the program and section header tables, any segment's file
/// bytes or any section's bytes. `None` when the file is not a 64-bit
/// little-endian ELF (the only kind mkectl is built as), or its headers are
/// unreadable: then the caller cannot tell where the image ends.
pub fn image_end(file: &File) -> io::Result<Option<u64>> {
    let mut eh = [0u8; EHDR_LEN];
    match file.read_exact_at(&mut eh, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if eh[0..4] != *b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return Ok(None);
    }
    let phoff = u64_at(&eh, 0x20);
    let shoff = u64_at(&eh, 0x28);
    let phentsize = u16_at(&eh, 0x36);
    let mut phnum = u16_at(&eh, 0x38);
    let shentsize = u16_at(&eh, 0x3a);
    let mut shnum = u16_at(&eh, 0x3c);

    // Extended numbering: the real counts live in section header 0.
    if shoff != 0 && shentsize >= 64 && (shnum == 0 || phnum == 0xffff) {
        let mut sh0 = [0u8; 64];
        if file.read_exact_at(&mut sh0, shoff).is_err() {
            return Ok(None);
        }
        if shnum == 0 {
            shnum = u64_at(&sh0, 0x20);
        }
        if phnum == 0xffff {
            phnum = u64::from(u32_at(&sh0, 0x2c));
        }
    }
    if phnum > MAX_HEADERS || shnum > MAX_HEADERS {
        return Ok(None);
    }

    let mut end = EHDR_LEN as u64;
    let table_end = |off: u64, n: u64, size: u64| off.checked_add(n.checked_mul(size)?);
    let Some(ph_end) = table_end(phoff, phnum, phentsize) else {
        return Ok(None);
    };
    let Some(sh_end) = table_end(shoff, shnum, shentsize) else {
        return Ok(None);
    };
    if phnum > 0 {
        end = end.max(ph_end);
    }
    if shnum > 0 {
        end = end.max(sh_end);
    }

    if phnum > 0 && phentsize >= 0x28 {
        let mut table = vec![0u8; (phnum * phentsize) as usize];
        if file.read_exact_at(&mut table, phoff).is_err() {
            return Ok(None);
        }
        for ph in table.chunks_exact(phentsize as usize) {
            let Some(seg_end) = u64_at(ph, 0x08).checked_add(u64_at(ph, 0x20)) else {
                return Ok(None);
            };
            end = end.max(seg_end);
        }
    }
    if shnum > 0 && shentsize >= 0x28 {
        let mut table = vec![0u8; (shnum * shentsize) as usize];
        if file.read_exact_at(&mut table, shoff).is_err() {
            return Ok(None);
        }
        for sh in table.chunks_exact(shentsize as usize) {
            if u32_at(sh, 0x04) == SHT_NOBITS {
                continue;
            }
            let Some(sec_end) = u64_at(sh, 0x18).checked_add(u64_at(sh, 0x20)) else {
                return Ok(None);
            };
            end = end.max(sec_end);
        }
    }
    Ok(Some(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_executable_ends_at_its_length() {
        // The test binary itself is an unmodified ELF.
        let exe = std::env::current_exe().unwrap();
        let f = File::open(&exe).unwrap();
        let len = f.metadata().unwrap().len();
        assert_eq!(image_end(&f).unwrap(), Some(len));
        let f = File::open("/bin/true").unwrap();
        let len = f.metadata().unwrap().len();
        assert_eq!(image_end(&f).unwrap(), Some(len));
    }

    #[test]
    fn not_elf_is_none() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), b"#!/bin/sh\necho hi\n").unwrap();
        assert_eq!(image_end(&File::open(tmp.path()).unwrap()).unwrap(), None);
        std::fs::write(tmp.path(), b"").unwrap();
        assert_eq!(image_end(&File::open(tmp.path()).unwrap()).unwrap(), None);
    }
}
