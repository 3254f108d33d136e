//! Transport framing, without I/O: the 4-byte Direct TCP header (MS-SMB2
//! 2.1, port 445) and the NetBIOS session service handshake (RFC 1002 4.3,
//! port 139). SMB2 over NetBIOS uses the same 4-byte header for messages.

use super::WireError;

/// The largest frame we accept or send; 8 MiB reads plus headers fit.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;
/// The Direct TCP StreamProtocolLength is 24 bits.
const MAX_STREAM_PROTOCOL_LEN: usize = 0x00FF_FFFF;

// RFC 1002 4.3.1 session packet types.
const SESSION_MESSAGE: u8 = 0x00;
const SESSION_REQUEST: u8 = 0x81;
const POSITIVE_SESSION_RESPONSE: u8 = 0x82;
const NEGATIVE_SESSION_RESPONSE: u8 = 0x83;
const RETARGET_SESSION_RESPONSE: u8 = 0x84;
const SESSION_KEEP_ALIVE: u8 = 0x85;

/// NetBIOS name suffixes (service types): file server, workstation.
const SUFFIX_SERVER: u8 = 0x20;
const SUFFIX_WORKSTATION: u8 = 0x00;
/// The called name servers answer to when the real NetBIOS name is unknown.
const ANY_SMB_SERVER: &str = "*SMBSERVER";

/// What a 4-byte frame header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A message of this many bytes follows.
    Message(usize),
    /// A NetBIOS keepalive with no payload: read the next header.
    KeepAlive,
}

/// The 4-byte header for a message of `len` bytes.
pub fn encode_frame_header(len: usize) -> Result<[u8; 4], WireError> {
    let limit = MAX_FRAME_LEN.min(MAX_STREAM_PROTOCOL_LEN);
    if len > limit {
        return Err(WireError::TooLarge { what: "frame", len, limit });
    }
    let b = (len as u32).to_be_bytes();
    Ok([SESSION_MESSAGE, b[1], b[2], b[3]])
}

/// Parses a 4-byte frame header.
pub fn decode_frame_header(h: [u8; 4]) -> Result<Frame, WireError> {
    let len = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
    match h[0] {
        SESSION_MESSAGE => {
            if len > MAX_FRAME_LEN {
                return Err(WireError::TooLarge { what: "frame", len, limit: MAX_FRAME_LEN });
            }
            Ok(Frame::Message(len))
        }
        SESSION_KEEP_ALIVE if len == 0 => Ok(Frame::KeepAlive),
        SESSION_KEEP_ALIVE => {
            Err(WireError::Invalid { what: "netbios keepalive", why: format!("non-zero length {len}") })
        }
        other => Err(WireError::Invalid { what: "frame header", why: format!("packet type 0x{other:02x}") }),
    }
}

/// The 16-byte NetBIOS name: upper-case, truncated or space-padded to 15
/// bytes, then the service suffix. Bytes outside printable ASCII become '_'
/// since NetBIOS names are in an OEM code page we do not know.
fn netbios_name(name: &str, suffix: u8) -> [u8; 16] {
    let mut out = [b' '; 16];
    for (slot, b) in out.iter_mut().zip(name.bytes().take(15)) {
        *slot = if b.is_ascii_graphic() { b.to_ascii_uppercase() } else { b'_' };
    }
    out[15] = suffix;
    out
}

/// RFC 1001 14.1 first-level encoding: each nibble becomes 'A' + nibble,
/// wrapped as a single 32-byte label with an empty scope.
fn put_encoded_name(out: &mut Vec<u8>, name: &[u8; 16]) {
    out.push(32);
    for b in name {
        out.push(b'A' + (b >> 4));
        out.push(b'A' + (b & 0x0F));
    }
    out.push(0);
}

/// The server's NetBIOS name from what the user gave us: the first DNS label
/// of a host name, or "*SMBSERVER" for an IP address or nothing.
fn called_name(server: &str) -> &str {
    let server = server.trim();
    if server.is_empty() || server.parse::<std::net::IpAddr>().is_ok() {
        return ANY_SMB_SERVER;
    }
    server.split('.').next().unwrap_or(server)
}

/// A complete SESSION REQUEST packet (RFC 1002 4.3.2), header included.
/// `called` is the server (host name, IP, or "*SMBSERVER"); `calling` is
/// our own name.
pub fn netbios_session_request(called: &str, calling: &str) -> Vec<u8> {
    let called = netbios_name(called_name(called), SUFFIX_SERVER);
    let calling = netbios_name(calling.trim().split('.').next().unwrap_or(""), SUFFIX_WORKSTATION);
    let mut out = Vec::with_capacity(4 + 2 * 34);
    out.extend_from_slice(&[SESSION_REQUEST, 0, 0, 68]);
    put_encoded_name(&mut out, &called);
    put_encoded_name(&mut out, &calling);
    out
}

/// The server's answer to a SESSION REQUEST (RFC 1002 4.3.3 - 4.3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetbiosSessionReply {
    Positive,
    /// 0x80 not listening on called name, 0x81 not listening for calling
    /// name, 0x82 called name not present, 0x83 insufficient resources,
    /// 0x8F unspecified.
    Negative(u8),
    /// Reconnect to this address instead.
    Retarget {
        ip: [u8; 4],
        port: u16,
    },
}

/// Parses a session reply, 4-byte header included.
pub fn decode_netbios_session_reply(buf: &[u8]) -> Result<NetbiosSessionReply, WireError> {
    if buf.len() < 4 {
        return Err(WireError::Truncated { what: "netbios session reply", need: 4, have: buf.len() });
    }
    // The low bit of the flags byte extends the 16-bit length (RFC 1002 4.3.1).
    let len = (((buf[1] & 1) as usize) << 16) | ((buf[2] as usize) << 8) | buf[3] as usize;
    let (want, what) = match buf[0] {
        POSITIVE_SESSION_RESPONSE => (0, "positive session response"),
        NEGATIVE_SESSION_RESPONSE => (1, "negative session response"),
        RETARGET_SESSION_RESPONSE => (6, "retarget session response"),
        other => {
            return Err(WireError::Invalid { what: "netbios session reply", why: format!("packet type 0x{other:02x}") })
        }
    };
    if len != want {
        return Err(WireError::Invalid { what, why: format!("length {len}, expected {want}") });
    }
    let body = buf.get(4..4 + want).ok_or(WireError::Truncated { what, need: 4 + want, have: buf.len() })?;
    Ok(match buf[0] {
        POSITIVE_SESSION_RESPONSE => NetbiosSessionReply::Positive,
        NEGATIVE_SESSION_RESPONSE => NetbiosSessionReply::Negative(body[0]),
        _ => NetbiosSessionReply::Retarget {
            ip: [body[0], body[1], body[2], body[3]],
            port: u16::from_be_bytes([body[4], body[5]]),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_header_round_trip_and_real_bytes() {
        assert_eq!(encode_frame_header(0x7C).unwrap(), [0x00, 0x00, 0x00, 0x7C]);
        assert_eq!(encode_frame_header(0x12_3456).unwrap(), [0x00, 0x12, 0x34, 0x56]);
        for len in [0, 1, 64, 65_535, 65_536, 8 * 1024 * 1024 + 4096, MAX_STREAM_PROTOCOL_LEN] {
            let h = encode_frame_header(len).unwrap();
            assert_eq!(decode_frame_header(h).unwrap(), Frame::Message(len));
        }
        assert!(matches!(encode_frame_header(MAX_STREAM_PROTOCOL_LEN + 1), Err(WireError::TooLarge { .. })));
        assert!(matches!(encode_frame_header(usize::MAX), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn frame_header_keepalive_and_bad_types() {
        assert_eq!(decode_frame_header([0x85, 0, 0, 0]).unwrap(), Frame::KeepAlive);
        assert!(decode_frame_header([0x85, 0, 0, 1]).is_err());
        assert!(matches!(decode_frame_header([0xFE, b'S', b'M', b'B']), Err(WireError::Invalid { .. })));
        assert!(decode_frame_header([0x82, 0, 0, 0]).is_err());
    }

    #[test]
    fn netbios_name_encoding_matches_rfc1001() {
        // RFC 1001 14.1: "FRED" padded with spaces encodes to this.
        let mut out = Vec::new();
        put_encoded_name(&mut out, &netbios_name("fred", SUFFIX_SERVER));
        assert_eq!(out[0], 32);
        assert_eq!(&out[1..33], b"EGFCEFEECACACACACACACACACACACACA");
        assert_eq!(out[33], 0);
    }

    #[test]
    fn session_request_layout() {
        let req = netbios_session_request("fred.example.com", "client-7");
        assert_eq!(req.len(), 72);
        assert_eq!(&req[..4], &[0x81, 0x00, 0x00, 0x44]);
        assert_eq!(&req[5..37], b"EGFCEFEECACACACACACACACACACACACA");
        // Calling name "CLIENT-7" with workstation suffix 0x00 -> last pair "AA".
        assert_eq!(&req[39..55], b"EDEMEJEFEOFECNDH");
        assert_eq!(&req[69..71], b"AA");
        assert_eq!(req[71], 0);

        // IP address or nothing: *SMBSERVER, suffix 0x20.
        let by_ip = netbios_session_request("192.0.2.10", "c");
        let mut expected = Vec::new();
        put_encoded_name(&mut expected, &netbios_name("*SMBSERVER", SUFFIX_SERVER));
        assert_eq!(&by_ip[4..38], &expected[..]);
        assert_eq!(&netbios_session_request("", "c")[4..38], &expected[..]);

        // Long names are cut to 15 bytes; non-ASCII becomes '_'.
        assert_eq!(&netbios_name("averyveryverylongname", 0x20)[..], b"AVERYVERYVERYLO ");
        assert_eq!(&netbios_name("s\u{e9}rv", 0x20)[..5], b"S__RV");
    }

    #[test]
    fn session_replies() {
        assert_eq!(decode_netbios_session_reply(&[0x82, 0, 0, 0]).unwrap(), NetbiosSessionReply::Positive);
        assert_eq!(decode_netbios_session_reply(&[0x83, 0, 0, 1, 0x82]).unwrap(), NetbiosSessionReply::Negative(0x82));
        assert_eq!(
            decode_netbios_session_reply(&[0x84, 0, 0, 6, 10, 0, 0, 7, 0x00, 0x8B]).unwrap(),
            NetbiosSessionReply::Retarget { ip: [10, 0, 0, 7], port: 139 }
        );
        assert!(matches!(decode_netbios_session_reply(&[0x82, 0]), Err(WireError::Truncated { .. })));
        assert!(matches!(decode_netbios_session_reply(&[0x83, 0, 0, 1]), Err(WireError::Truncated { .. })));
        assert!(matches!(decode_netbios_session_reply(&[0x84, 0, 0, 6, 1, 2, 3]), Err(WireError::Truncated { .. })));
        assert!(matches!(decode_netbios_session_reply(&[0x83, 0, 0, 9, 0x80]), Err(WireError::Invalid { .. })));
        assert!(matches!(decode_netbios_session_reply(&[0x00, 0, 0, 0]), Err(WireError::Invalid { .. })));
    }
}
