//! A minimal, bounded DER (X.690) reader and writer: just enough for the
//! SPNEGO tokens of RFC 4178 (single-byte tags, definite lengths).
//!
//! Decoding builds a small tree borrowed from the input. Every length is
//! checked against the bytes that are actually there, and nesting is limited
//! to [`MAX_DEPTH`], so hostile tokens end in a [`DerError`], never in a panic
//! or an allocation a length field asked for.

/// Deepest constructed nesting accepted. SPNEGO needs 7 (Samba's NegTokenInit2
/// hint: APPLICATION 0 / [0] / SEQUENCE / [3] / SEQUENCE / [0] / GeneralString).
pub const MAX_DEPTH: usize = 16;

pub const TAG_INTEGER: u8 = 0x02;
pub const TAG_BIT_STRING: u8 = 0x03;
pub const TAG_OCTET_STRING: u8 = 0x04;
pub const TAG_OID: u8 = 0x06;
pub const TAG_ENUMERATED: u8 = 0x0A;
pub const TAG_GENERAL_STRING: u8 = 0x1B;
pub const TAG_SEQUENCE: u8 = 0x30;

/// Bit 6 of the identifier octet: the content is itself DER elements.
const CONSTRUCTED: u8 = 0x20;

/// `[APPLICATION n]` constructed tag (n < 31).
pub const fn application(n: u8) -> u8 {
    0x60 | n
}

/// `[n]` context-specific constructed tag (n < 31), as explicit tagging uses.
pub const fn context(n: u8) -> u8 {
    0xA0 | n
}

/// Why bytes could not be decoded as DER.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DerError {
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated { what: &'static str, need: usize, have: usize },
    #[error("indefinite length is not DER")]
    IndefiniteLength,
    #[error("length field of {octets} octets is not supported")]
    LengthTooLong { octets: usize },
    #[error("multi-byte tag 0x{tag:02x} is not supported")]
    HighTagNumber { tag: u8 },
    #[error("nesting deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("{count} trailing bytes after the {what}")]
    TrailingBytes { what: &'static str, count: usize },
    #[error("expected {what} (tag 0x{expected:02x}), found tag 0x{found:02x}")]
    UnexpectedTag { what: &'static str, expected: u8, found: u8 },
    #[error("missing {what}")]
    Missing { what: &'static str },
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: &'static str },
}

/// One decoded element. `children` is filled for constructed tags only;
/// `content` is always the raw content octets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub children: Vec<Element<'a>>,
}

impl<'a> Element<'a> {
    pub fn is_constructed(&self) -> bool {
        self.tag & CONSTRUCTED != 0
    }

    /// Checks the tag, for readable errors at each step of a walk.
    pub fn expect(&self, tag: u8, what: &'static str) -> Result<&Self, DerError> {
        if self.tag == tag {
            Ok(self)
        } else {
            Err(DerError::UnexpectedTag { what, expected: tag, found: self.tag })
        }
    }

    /// The first child with `tag`, if any (explicitly tagged optional fields).
    pub fn child(&self, tag: u8) -> Option<&Element<'a>> {
        self.children.iter().find(|c| c.tag == tag)
    }

    /// The only child of an explicit `[n]` wrapper.
    pub fn inner(&self, what: &'static str) -> Result<&Element<'a>, DerError> {
        match self.children.as_slice() {
            [one] => Ok(one),
            [] => Err(DerError::Missing { what }),
            _ => Err(DerError::Invalid { what, why: "explicit tag wraps more than one element" }),
        }
    }
}

/// Decodes exactly one element spanning all of `input`.
pub fn parse(input: &[u8]) -> Result<Element<'_>, DerError> {
    let mut pos = 0;
    let element = parse_element(input, &mut pos, 0)?;
    if pos != input.len() {
        return Err(DerError::TrailingBytes { what: "top-level element", count: input.len() - pos });
    }
    Ok(element)
}

fn take<'a>(input: &'a [u8], pos: &mut usize, len: usize, what: &'static str) -> Result<&'a [u8], DerError> {
    let have = input.len() - *pos;
    if len > have {
        return Err(DerError::Truncated { what, need: len, have });
    }
    let s = &input[*pos..*pos + len];
    *pos += len;
    Ok(s)
}

fn parse_element<'a>(input: &'a [u8], pos: &mut usize, depth: usize) -> Result<Element<'a>, DerError> {
    if depth >= MAX_DEPTH {
        return Err(DerError::TooDeep { limit: MAX_DEPTH });
    }
    let tag = take(input, pos, 1, "tag")?[0];
    if tag & 0x1F == 0x1F {
        return Err(DerError::HighTagNumber { tag });
    }
    let first = take(input, pos, 1, "length")?[0];
    let len = if first < 0x80 {
        usize::from(first)
    } else if first == 0x80 {
        return Err(DerError::IndefiniteLength);
    } else {
        let octets = usize::from(first & 0x7F);
        // Four length octets already allow 4 GiB, far past any token.
        if octets > 4 {
            return Err(DerError::LengthTooLong { octets });
        }
        take(input, pos, octets, "long-form length")?.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let content = take(input, pos, len, "content")?;
    let mut children = Vec::new();
    if tag & CONSTRUCTED != 0 {
        let mut inner = 0;
        while inner < content.len() {
            children.push(parse_element(content, &mut inner, depth + 1)?);
        }
    }
    Ok(Element { tag, content, children })
}

/// Appends a DER length (minimal form).
pub fn put_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// Appends one element with the given tag and content.
pub fn put_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    put_length(out, content.len());
    out.extend_from_slice(content);
}

/// One element as a new vec.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    put_tlv(&mut out, tag, content);
    out
}

/// A constructed element from already-encoded children.
pub fn constructed(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    tlv(tag, &parts.concat())
}

/// Content octets of an OBJECT IDENTIFIER (X.690 8.19). None for fewer than
/// two arcs or a first arc above 2.
pub fn encode_oid(arcs: &[u64]) -> Option<Vec<u8>> {
    let (&first, rest) = arcs.split_first()?;
    let (&second, rest) = rest.split_first()?;
    if first > 2 || (first < 2 && second >= 40) {
        return None;
    }
    let mut out = Vec::new();
    for arc in std::iter::once(first * 40 + second).chain(rest.iter().copied()) {
        let mut groups = [0u8; 10];
        let mut n = 0;
        let mut v = arc;
        loop {
            groups[n] = (v & 0x7F) as u8;
            n += 1;
            v >>= 7;
            if v == 0 {
                break;
            }
        }
        for i in (0..n).rev() {
            out.push(groups[i] | if i > 0 { 0x80 } else { 0 });
        }
    }
    Some(out)
}

/// Decodes OBJECT IDENTIFIER content octets into arcs.
pub fn decode_oid(content: &[u8]) -> Result<Vec<u64>, DerError> {
    const WHAT: &str = "object identifier";
    if content.is_empty() {
        return Err(DerError::Invalid { what: WHAT, why: "empty" });
    }
    if content.last().is_some_and(|&b| b & 0x80 != 0) {
        return Err(DerError::Invalid { what: WHAT, why: "last subidentifier unterminated" });
    }
    let mut arcs = Vec::with_capacity(content.len() + 1);
    let mut value: u64 = 0;
    let mut started = false;
    for &b in content {
        if !started && b == 0x80 {
            return Err(DerError::Invalid { what: WHAT, why: "non-minimal subidentifier" });
        }
        if value > u64::MAX >> 7 {
            return Err(DerError::Invalid { what: WHAT, why: "subidentifier overflows 64 bits" });
        }
        value = (value << 7) | u64::from(b & 0x7F);
        started = true;
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
            started = false;
        }
    }
    Ok(arcs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_in_minimal_form() {
        for (len, header) in [
            (0usize, vec![0x04, 0x00]),
            (0x7F, vec![0x04, 0x7F]),
            (0x80, vec![0x04, 0x81, 0x80]),
            (0xFF, vec![0x04, 0x81, 0xFF]),
            (0x100, vec![0x04, 0x82, 0x01, 0x00]),
            (0x1_0000, vec![0x04, 0x83, 0x01, 0x00, 0x00]),
        ] {
            let content = vec![0xAB; len];
            let encoded = tlv(TAG_OCTET_STRING, &content);
            assert_eq!(&encoded[..header.len()], header.as_slice(), "len {len}");
            let e = parse(&encoded).unwrap();
            assert_eq!((e.tag, e.content), (TAG_OCTET_STRING, content.as_slice()));
            assert!(e.children.is_empty());
        }
    }

    #[test]
    fn nested_structure_round_trips() {
        let oid = tlv(TAG_OID, &[0x2B, 0x06, 0x01]);
        let seq = constructed(TAG_SEQUENCE, &[&oid, &tlv(TAG_OCTET_STRING, b"xy")]);
        let outer = constructed(context(2), &[&seq]);
        let e = parse(&outer).unwrap();
        assert_eq!(e.tag, 0xA2);
        let s = e.inner("seq").unwrap().expect(TAG_SEQUENCE, "seq").unwrap();
        assert_eq!(s.children.len(), 2);
        assert_eq!(s.child(TAG_OCTET_STRING).unwrap().content, b"xy");
        assert!(s.child(TAG_INTEGER).is_none());
        assert!(matches!(s.expect(TAG_OID, "oid"), Err(DerError::UnexpectedTag { expected: 0x06, found: 0x30, .. })));
    }

    #[test]
    fn accepts_non_minimal_long_form_length() {
        // Lenient on input: 0x81 0x02 is BER-valid even if not minimal DER.
        let e = parse(&[0x04, 0x81, 0x02, 1, 2]).unwrap();
        assert_eq!(e.content, &[1, 2]);
    }

    #[test]
    fn length_beyond_buffer_is_an_error() {
        assert!(matches!(parse(&[0x04, 0x05, 1, 2]), Err(DerError::Truncated { need: 5, have: 2, .. })));
        assert!(matches!(parse(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF, 0]), Err(DerError::Truncated { .. })));
        assert!(matches!(
            parse(&[0x30, 0x88, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(DerError::LengthTooLong { octets: 8 })
        ));
        // A child claiming more than its parent holds, although the input has it.
        assert!(matches!(parse(&[0x30, 0x02, 0x04, 0x03, 1, 2, 3]), Err(DerError::Truncated { .. })));
        assert!(matches!(parse(&[0x30, 0x03, 0x04, 0x03, 1]), Err(DerError::Truncated { .. })));
    }

    #[test]
    fn truncated_inputs_are_errors() {
        let full = constructed(TAG_SEQUENCE, &[&tlv(TAG_OCTET_STRING, b"hello")]);
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_indefinite_high_tag_and_trailing_bytes() {
        assert_eq!(parse(&[0x30, 0x80, 0x00, 0x00]), Err(DerError::IndefiniteLength));
        assert_eq!(parse(&[0x1F, 0x81, 0x00, 0x00]), Err(DerError::HighTagNumber { tag: 0x1F }));
        assert_eq!(parse(&[0x04, 0x00, 0x00]), Err(DerError::TrailingBytes { what: "top-level element", count: 1 }));
    }

    #[test]
    fn deep_nesting_is_refused() {
        // 200 nested SEQUENCEs, each with a correct length.
        let mut token = Vec::new();
        for _ in 0..200 {
            token = tlv(TAG_SEQUENCE, &token);
        }
        assert_eq!(parse(&token), Err(DerError::TooDeep { limit: MAX_DEPTH }));
        let mut ok = Vec::new();
        for _ in 0..MAX_DEPTH {
            ok = tlv(TAG_SEQUENCE, &ok);
        }
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn oid_codec_matches_known_encodings() {
        // SPNEGO 1.3.6.1.5.5.2 and NTLMSSP 1.3.6.1.4.1.311.2.2.10 as carried on the wire.
        let spnego = [0x2B, 0x06, 0x01, 0x05, 0x05, 0x02];
        let ntlmssp = [0x2B, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0A];
        assert_eq!(encode_oid(&[1, 3, 6, 1, 5, 5, 2]).unwrap(), spnego);
        assert_eq!(encode_oid(&[1, 3, 6, 1, 4, 1, 311, 2, 2, 10]).unwrap(), ntlmssp);
        assert_eq!(decode_oid(&ntlmssp).unwrap(), [1, 3, 6, 1, 4, 1, 311, 2, 2, 10]);
        assert_eq!(decode_oid(&[0x88, 0x37]).unwrap(), [2, 999]);
        assert_eq!(encode_oid(&[2, 999]).unwrap(), [0x88, 0x37]);
        assert!(encode_oid(&[1]).is_none());
        assert!(encode_oid(&[1, 40]).is_none());
        assert!(decode_oid(&[]).is_err());
        assert!(decode_oid(&[0x2B, 0x82]).is_err());
        assert!(decode_oid(&[0x2B, 0x80, 0x01]).is_err());
        assert!(decode_oid(&[0x2B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).is_err());
    }
}
