//! The keeper protocol's messages and their byte form: a pure codec (no sockets, no descriptors).
//!
//! A frame is an 8-byte header then the body:
//!
//! ```text
//! magic "SK" (2) | version (1) | kind (1) | body length (u32 LE)
//! ```
//!
//! Strings are a u16 LE length and UTF-8 bytes; opaque records a u32 LE length and bytes. Bodies are bounded
//! by [`MAX_BODY`] (a volume record is a few hundred bytes), so a confused or hostile peer cannot make either
//! side allocate much. The descriptor of a [`Message::Register`] or [`Message::Entry`] travels beside the
//! bytes (SCM_RIGHTS on the first byte of the frame); [`Message::carries_fd`] says which ones must have one.

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"SK";
/// The protocol version this build speaks; a frame of another version is refused, never guessed at.
pub const VERSION: u8 = 1;
/// Bytes before a frame's body.
pub const HEADER_LEN: usize = 8;
/// Largest body accepted (64 KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest key (a mount path) accepted.
pub const MAX_KEY: usize = 4096;

/// One message of the keeper protocol (plugin <-> keeper) or of the handover protocol (new plugin <-> old).
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// Plugin -> keeper: hold this mount's /dev/fuse descriptor (attached) and record under `key`, replacing
    /// what was held under it.
    Register { key: String, record: Vec<u8> },
    /// Plugin -> keeper: the mount at `key` is gone; close its descriptor and drop its record.
    Forget { key: String },
    /// Plugin -> keeper: send every held mount back ([`Message::Entry`]s then [`Message::End`]); the keeper
    /// keeps holding them.
    Fetch,
    /// Plugin -> keeper: are you there?
    Ping,
    /// Keeper -> plugin: one held mount, its descriptor attached.
    Entry { key: String, record: Vec<u8> },
    /// Keeper -> plugin: the last [`Message::Entry`] has been sent.
    End { count: u32 },
    /// The request was carried out.
    Done,
    /// Keeper -> plugin: the answer to [`Message::Ping`].
    Pong { mounts: u32, pid: u32 },
    /// The request was refused; `reason` is for logs (never holds a secret).
    Failed { reason: String },
    /// New plugin -> old plugin: detach every mount, stop serving, then answer [`Message::HandedOver`].
    HandOver,
    /// Old plugin -> new plugin: every mount is detached (their descriptors are in the keeper).
    HandedOver { mounts: u32 },
}

impl std::fmt::Debug for Message {
    /// Records hold credentials: only their length is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Register { key, record } => write!(f, "Register({key:?}, {} byte record)", record.len()),
            Message::Entry { key, record } => write!(f, "Entry({key:?}, {} byte record)", record.len()),
            Message::Forget { key } => write!(f, "Forget({key:?})"),
            Message::Fetch => f.write_str("Fetch"),
            Message::Ping => f.write_str("Ping"),
            Message::End { count } => write!(f, "End({count})"),
            Message::Done => f.write_str("Done"),
            Message::Pong { mounts, pid } => write!(f, "Pong(mounts {mounts}, pid {pid})"),
            Message::Failed { reason } => write!(f, "Failed({reason:?})"),
            Message::HandOver => f.write_str("HandOver"),
            Message::HandedOver { mounts } => write!(f, "HandedOver({mounts})"),
        }
    }
}

/// Why bytes are not a message of this protocol.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("not a keeper protocol frame (magic {0:02x?})")]
    BadMagic([u8; 2]),
    #[error("keeper protocol version {0} (this build speaks {VERSION})")]
    Version(u8),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("a {what} of {len} bytes is over the limit of {max}")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("message truncated: {what} needs {need} bytes, {have} left")]
    Truncated { what: &'static str, need: usize, have: usize },
    #[error("{0} bytes after the end of the message")]
    Trailing(usize),
    #[error("{what} is not UTF-8")]
    NotUtf8 { what: &'static str },
}

/// A decoded frame header: which message, and how many body bytes follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    kind: u8,
    pub body_len: usize,
}

const REGISTER: u8 = 1;
const FORGET: u8 = 2;
const FETCH: u8 = 3;
const PING: u8 = 4;
const ENTRY: u8 = 16;
const END: u8 = 17;
const DONE: u8 = 18;
const PONG: u8 = 19;
const FAILED: u8 = 20;
const HAND_OVER: u8 = 32;
const HANDED_OVER: u8 = 33;

impl Message {
    /// Whether this message travels with a descriptor (and is invalid without one).
    pub fn carries_fd(&self) -> bool {
        matches!(self, Message::Register { .. } | Message::Entry { .. })
    }

    fn kind(&self) -> u8 {
        match self {
            Message::Register { .. } => REGISTER,
            Message::Forget { .. } => FORGET,
            Message::Fetch => FETCH,
            Message::Ping => PING,
            Message::Entry { .. } => ENTRY,
            Message::End { .. } => END,
            Message::Done => DONE,
            Message::Pong { .. } => PONG,
            Message::Failed { .. } => FAILED,
            Message::HandOver => HAND_OVER,
            Message::HandedOver { .. } => HANDED_OVER,
        }
    }
}

/// The frame of `message` (header and body). Fails only for fields over the protocol's bounds.
pub fn encode(message: &Message) -> Result<Vec<u8>, CodecError> {
    let mut body = Vec::new();
    match message {
        Message::Register { key, record } | Message::Entry { key, record } => {
            put_str(&mut body, "key", key, MAX_KEY)?;
            put_bytes(&mut body, record)?;
        }
        Message::Forget { key } => put_str(&mut body, "key", key, MAX_KEY)?,
        Message::Failed { reason } => put_str(&mut body, "reason", reason, MAX_KEY)?,
        Message::End { count } | Message::HandedOver { mounts: count } => body.extend_from_slice(&count.to_le_bytes()),
        Message::Pong { mounts, pid } => {
            body.extend_from_slice(&mounts.to_le_bytes());
            body.extend_from_slice(&pid.to_le_bytes());
        }
        Message::Fetch | Message::Ping | Message::Done | Message::HandOver => {}
    }
    if body.len() > MAX_BODY {
        return Err(CodecError::TooLong { what: "message body", len: body.len(), max: MAX_BODY });
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&MAGIC);
    frame.push(VERSION);
    frame.push(message.kind());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

fn put_str(out: &mut Vec<u8>, what: &'static str, s: &str, max: usize) -> Result<(), CodecError> {
    if s.len() > max {
        return Err(CodecError::TooLong { what, len: s.len(), max });
    }
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), CodecError> {
    if bytes.len() > MAX_BODY {
        return Err(CodecError::TooLong { what: "record", len: bytes.len(), max: MAX_BODY });
    }
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Checks a frame header: magic, version, a known kind, a bounded body length.
pub fn decode_header(bytes: &[u8; HEADER_LEN]) -> Result<Header, CodecError> {
    let magic = [bytes[0], bytes[1]];
    if magic != MAGIC {
        return Err(CodecError::BadMagic(magic));
    }
    if bytes[2] != VERSION {
        return Err(CodecError::Version(bytes[2]));
    }
    let kind = bytes[3];
    if !matches!(kind, REGISTER | FORGET | FETCH | PING | ENTRY | END | DONE | PONG | FAILED | HAND_OVER | HANDED_OVER)
    {
        return Err(CodecError::UnknownKind(kind));
    }
    let body_len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if body_len > MAX_BODY {
        return Err(CodecError::TooLong { what: "message body", len: body_len, max: MAX_BODY });
    }
    Ok(Header { kind, body_len })
}

/// The message of a checked header and exactly its body.
pub fn decode_body(header: Header, body: &[u8]) -> Result<Message, CodecError> {
    let mut r = Reader { rest: body };
    let message = match header.kind {
        REGISTER => Message::Register { key: r.str("key")?, record: r.bytes("record")? },
        ENTRY => Message::Entry { key: r.str("key")?, record: r.bytes("record")? },
        FORGET => Message::Forget { key: r.str("key")? },
        FAILED => Message::Failed { reason: r.str("reason")? },
        FETCH => Message::Fetch,
        PING => Message::Ping,
        DONE => Message::Done,
        HAND_OVER => Message::HandOver,
        END => Message::End { count: r.u32("count")? },
        HANDED_OVER => Message::HandedOver { mounts: r.u32("mounts")? },
        PONG => Message::Pong { mounts: r.u32("mounts")?, pid: r.u32("pid")? },
        other => return Err(CodecError::UnknownKind(other)),
    };
    if !r.rest.is_empty() {
        return Err(CodecError::Trailing(r.rest.len()));
    }
    Ok(message)
}

/// Decodes one whole frame (header and body, nothing after it).
pub fn decode(frame: &[u8]) -> Result<Message, CodecError> {
    let head: &[u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(CodecError::Truncated { what: "header", need: HEADER_LEN, have: frame.len() })?;
    let header = decode_header(head)?;
    let body = &frame[HEADER_LEN..];
    if body.len() < header.body_len {
        return Err(CodecError::Truncated { what: "body", need: header.body_len, have: body.len() });
    }
    if body.len() > header.body_len {
        return Err(CodecError::Trailing(body.len() - header.body_len));
    }
    decode_body(header, body)
}

/// A cursor over a body that hands out bounded pieces or an error, never panics.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], CodecError> {
        if self.rest.len() < n {
            return Err(CodecError::Truncated { what, need: n, have: self.rest.len() });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        let b = self.take(what, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn str(&mut self, what: &'static str) -> Result<String, CodecError> {
        let b = self.take(what, 2)?;
        let len = u16::from_le_bytes([b[0], b[1]]) as usize;
        if len > MAX_KEY {
            return Err(CodecError::TooLong { what, len, max: MAX_KEY });
        }
        let bytes = self.take(what, len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::NotUtf8 { what })
    }

    fn bytes(&mut self, what: &'static str) -> Result<Vec<u8>, CodecError> {
        let len = self.u32(what)? as usize;
        Ok(self.take(what, len)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Register { key: "/var/lib/kubelet/x/globalmount".into(), record: b"{\"a\":1}".to_vec() },
            Message::Forget { key: "/mnt/é".into() },
            Message::Fetch,
            Message::Ping,
            Message::Entry { key: "/k".into(), record: vec![] },
            Message::End { count: 3 },
            Message::Done,
            Message::Pong { mounts: 2, pid: 4242 },
            Message::Failed { reason: "no descriptor".into() },
            Message::HandOver,
            Message::HandedOver { mounts: 7 },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all_messages() {
            let frame = encode(&m).unwrap();
            assert_eq!(decode(&frame).unwrap(), m, "{m:?}");
        }
    }

    #[test]
    fn known_bytes() {
        assert_eq!(encode(&Message::Ping).unwrap(), b"SK\x01\x04\x00\x00\x00\x00");
        let forget = encode(&Message::Forget { key: "/a".into() }).unwrap();
        assert_eq!(forget, b"SK\x01\x02\x04\x00\x00\x00\x02\x00/a");
        let pong = decode(b"SK\x01\x13\x08\x00\x00\x00\x01\x00\x00\x00\x10\x00\x00\x00").unwrap();
        assert_eq!(pong, Message::Pong { mounts: 1, pid: 16 });
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(decode(b"XX\x01\x04\x00\x00\x00\x00"), Err(CodecError::BadMagic(*b"XX")));
        assert_eq!(decode(b"SK\x02\x04\x00\x00\x00\x00"), Err(CodecError::Version(2)));
        assert_eq!(decode(b"SK\x01\x63\x00\x00\x00\x00"), Err(CodecError::UnknownKind(0x63)));
        let huge = decode(b"SK\x01\x01\xff\xff\xff\xff").unwrap_err();
        assert!(matches!(huge, CodecError::TooLong { what: "message body", .. }), "{huge:?}");
        assert!(matches!(decode(b"SK\x01"), Err(CodecError::Truncated { what: "header", .. })));
    }

    #[test]
    fn truncated_oversized_and_odd_bodies_are_errors() {
        let frame = encode(&Message::Register { key: "/k".into(), record: vec![1, 2, 3] }).unwrap();
        // Every strict prefix of the body is an error, never a panic.
        for cut in HEADER_LEN..frame.len() {
            assert!(decode(&frame[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = frame.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(CodecError::Trailing(1)));
        // A body whose inner length runs past its end.
        let header = decode_header(b"SK\x01\x02\x03\x00\x00\x00").unwrap();
        assert!(matches!(decode_body(header, b"\x09\x00/"), Err(CodecError::Truncated { what: "key", .. })));
        // Bytes after the fields inside the declared body.
        let header = decode_header(b"SK\x01\x11\x05\x00\x00\x00").unwrap();
        assert_eq!(decode_body(header, b"\x01\x00\x00\x00\x00"), Err(CodecError::Trailing(1)));
        let header = decode_header(b"SK\x01\x02\x03\x00\x00\x00").unwrap();
        assert_eq!(decode_body(header, b"\x01\x00\xff"), Err(CodecError::NotUtf8 { what: "key" }));
        // Over the bounds on the way out too.
        let long_key = Message::Forget { key: "k".repeat(MAX_KEY + 1) };
        assert!(matches!(encode(&long_key), Err(CodecError::TooLong { what: "key", .. })));
        let big = Message::Register { key: "/k".into(), record: vec![0; MAX_BODY] };
        assert!(matches!(encode(&big), Err(CodecError::TooLong { .. })));
    }

    #[test]
    fn only_register_and_entry_carry_descriptors() {
        let with_fd: Vec<bool> = all_messages().iter().map(Message::carries_fd).collect();
        assert_eq!(with_fd, [true, false, false, false, true, false, false, false, false, false, false]);
    }

    #[test]
    fn debug_never_shows_records() {
        let m = Message::Register { key: "/k".into(), record: b"password=hunter2".to_vec() };
        let shown = format!("{m:?}");
        assert!(!shown.contains("hunter2") && shown.contains("16 byte record"), "{shown}");
    }
}
