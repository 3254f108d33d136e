//! Bounded reading and little-endian writing of SMB wire data.
//!
//! Every decoder reads untrusted bytes through [`Reader`], which hands out
//! sub-slices only after checking them against the buffer, so a lying length
//! or offset becomes a [`WireError`] instead of a panic.

use super::WireError;

/// A cursor over untrusted bytes. Positions are relative to the start of the
/// slice it was made from (for SMB2 bodies: the start of the SMB2 header,
/// which is what the protocol's offsets are relative to).
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// A reader positioned at `pos` (which may equal the length).
    pub fn at(buf: &'a [u8], pos: usize) -> Result<Self, WireError> {
        if pos > buf.len() {
            return Err(WireError::Truncated { what: "position", need: pos, have: buf.len() });
        }
        Ok(Reader { buf, pos })
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn buffer(&self) -> &'a [u8] {
        self.buf
    }

    pub fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(len).filter(|&e| e <= self.buf.len()).ok_or(WireError::Truncated {
            what,
            need: len,
            have: self.remaining(),
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub fn skip(&mut self, len: usize, what: &'static str) -> Result<(), WireError> {
        self.take(len, what).map(|_| ())
    }

    pub fn seek(&mut self, pos: usize, what: &'static str) -> Result<(), WireError> {
        if pos > self.buf.len() {
            return Err(WireError::BadOffset { what, offset: pos, len: 0, buf: self.buf.len() });
        }
        self.pos = pos;
        Ok(())
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub fn u32_be(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let b = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    /// Checks and returns `buf[offset..offset+len]` without moving the cursor.
    /// SMB2 encodes variable fields as (offset, length) pairs; a zero length
    /// is always an empty slice whatever the offset says.
    pub fn slice_at(&self, offset: usize, len: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if len == 0 {
            return Ok(&[]);
        }
        let end = offset.checked_add(len).filter(|&e| e <= self.buf.len()).ok_or(WireError::BadOffset {
            what,
            offset,
            len,
            buf: self.buf.len(),
        })?;
        Ok(&self.buf[offset..end])
    }
}

/// Little-endian writer helpers on `Vec<u8>`.
pub trait Writer {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_bytes(&mut self, b: &[u8]);
    fn put_zeros(&mut self, n: usize);
    /// Pads with zeros to a multiple of `align` (relative to the start of the vec).
    fn align_to(&mut self, align: usize);
    /// Overwrites a u16 already written at `at`.
    fn patch_u16(&mut self, at: usize, v: u16);
    /// Overwrites a u32 already written at `at`.
    fn patch_u32(&mut self, at: usize, v: u32);
}

impl Writer for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_bytes(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
    fn put_zeros(&mut self, n: usize) {
        self.resize(self.len() + n, 0);
    }
    fn align_to(&mut self, align: usize) {
        let pad = (align - self.len() % align) % align;
        self.put_zeros(pad);
    }
    fn patch_u16(&mut self, at: usize, v: u16) {
        self[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn patch_u32(&mut self, at: usize, v: u32) {
        self[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
}

/// UTF-16LE encoding, as SMB2 carries every name.
pub fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

/// Decodes UTF-16LE; an odd length or unpaired surrogate is an error.
pub fn from_utf16le(b: &[u8], what: &'static str) -> Result<String, WireError> {
    if !b.len().is_multiple_of(2) {
        return Err(WireError::Invalid { what, why: "odd UTF-16 length".into() });
    }
    let units: Vec<u16> = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    String::from_utf16(&units).map_err(|_| WireError::Invalid { what, why: "invalid UTF-16".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_stops_at_end() {
        let data = [1u8, 0, 2, 0, 0, 0, 3];
        let mut r = Reader::new(&data);
        assert_eq!(r.u16("a").unwrap(), 1);
        assert_eq!(r.u32("b").unwrap(), 2);
        assert_eq!(r.u8("c").unwrap(), 3);
        assert!(matches!(r.u8("d"), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn slice_at_rejects_out_of_range_and_overflow() {
        let data = [0u8; 10];
        let r = Reader::new(&data);
        assert_eq!(r.slice_at(8, 2, "x").unwrap().len(), 2);
        assert!(r.slice_at(9, 2, "x").is_err());
        assert!(r.slice_at(usize::MAX, 2, "x").is_err());
        assert!(r.slice_at(1000, 0, "x").unwrap().is_empty());
    }

    #[test]
    fn utf16_round_trip() {
        let s = "dir\\fïlé😀";
        assert_eq!(from_utf16le(&utf16le(s), "n").unwrap(), s);
        assert!(from_utf16le(&[0x41], "n").is_err());
        assert!(from_utf16le(&[0x00, 0xD8], "n").is_err());
    }

    #[test]
    fn writer_aligns_and_patches() {
        let mut v = vec![1u8];
        v.align_to(8);
        assert_eq!(v.len(), 8);
        v.put_u32(0);
        v.patch_u32(8, 0xdeadbeef);
        assert_eq!(&v[8..], &0xdeadbeefu32.to_le_bytes());
    }
}
