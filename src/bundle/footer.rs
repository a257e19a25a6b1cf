//! The fixed-size footer at the very end of a bundled mkectl (layout in the
//! module docs of `bundle`). It is the only way to find the payload, so it
//! carries the payload's position, length and SHA-256.

/// Magic bytes, the last 8 bytes of a bundled mkectl.
pub const MAGIC: [u8; 8] = *b"MKE-BNDL";
/// Footer size in bytes.
pub const FOOTER_LEN: u64 = 64;
/// The payload format this mkectl writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// A decoded footer. Decoding checks only the magic; the caller validates the
/// numbers against the file (see `Bundle::open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub payload_offset: u64,
    pub payload_len: u64,
    pub payload_sha256: [u8; 32],
    pub format_version: u32,
    pub reserved: u32,
}

impl Footer {
    pub fn new(payload_offset: u64, payload_len: u64, payload_sha256: [u8; 32]) -> Self {
        Self {
            payload_offset,
            payload_len,
            payload_sha256,
            format_version: FORMAT_VERSION,
            reserved: 0,
        }
    }

    pub fn encode(&self) -> [u8; FOOTER_LEN as usize] {
        let mut b = [0u8; FOOTER_LEN as usize];
        b[0..8].copy_from_slice(&self.payload_offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.payload_len.to_le_bytes());
        b[16..48].copy_from_slice(&self.payload_sha256);
        b[48..52].copy_from_slice(&self.format_version.to_le_bytes());
        b[52..56].copy_from_slice(&self.reserved.to_le_bytes());
        b[56..64].copy_from_slice(&MAGIC);
        b
    }

    /// `None` when the bytes do not end with the magic (no bundle).
    pub fn decode(b: &[u8; FOOTER_LEN as usize]) -> Option<Self> {
        if b[56..64] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |i: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[i..i + 4]);
            u32::from_le_bytes(a)
        };
        let mut sha = [0u8; 32];
        sha.copy_from_slice(&b[16..48]);
        Some(Self {
            payload_offset: u64_at(0),
            payload_len: u64_at(8),
            payload_sha256: sha,
            format_version: u32_at(48),
            reserved: u32_at(52),
        })
    }

    /// Hex form of the payload digest.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.payload_sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let f = Footer::new(0x0102_0304_0506_0708, 42, [7u8; 32]);
        let b = f.encode();
        assert_eq!(b.len(), 64);
        assert_eq!(&b[56..], b"MKE-BNDL");
        assert_eq!(b[0], 0x08, "little endian offset");
        assert_eq!(b[8], 42);
        assert_eq!(&b[48..52], &1u32.to_le_bytes());
        assert_eq!(Footer::decode(&b), Some(f));
    }

    #[test]
    fn no_magic_is_no_footer() {
        let mut b = Footer::new(1, 2, [0; 32]).encode();
        b[63] ^= 1;
        assert_eq!(Footer::decode(&b), None);
        assert_eq!(Footer::decode(&[0u8; 64]), None);
    }
}
