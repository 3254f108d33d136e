//! The client→server HTTP/2 byte stream (RFC 7540 §3.5, §4), rewritten one
//! chunk at a time: the preface and every frame pass through unchanged,
//! except header blocks (HEADERS + CONTINUATION), which are decoded,
//! mended by [`hpack::fix_authority`] and re-encoded.

use super::hpack::{self, Decoder, HpackError};

/// The connection preface every client sends first (RFC 7540 §3.5).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// SETTINGS_MAX_FRAME_SIZE of the server. The server sets it explicitly
/// (`server.rs`), so a client may not send a larger frame, and h2 would
/// close the connection if it did.
pub const MAX_FRAME_SIZE: usize = 16_384;

/// The largest header block we buffer, encoded or decoded (as a header list
/// size, RFC 7540 §6.5.2). hyper asks clients for at most 16 KiB
/// (SETTINGS_MAX_HEADER_LIST_SIZE) and refuses larger requests stream by
/// stream; past 64 KiB this layer closes the connection.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;

/// Why the client's byte stream can't be forwarded. Each is a connection
/// error in RFC 7540; the connection is closed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error("the client did not start with the HTTP/2 connection preface")]
    BadPreface,
    #[error("frame of {0} bytes exceeds SETTINGS_MAX_FRAME_SIZE {MAX_FRAME_SIZE}")]
    FrameTooLarge(usize),
    #[error("frame type {frame_type:#x} on stream {stream_id} inside the header block of stream {open}")]
    ExpectedContinuation { frame_type: u8, stream_id: u32, open: u32 },
    #[error("CONTINUATION on stream {0} without an open header block")]
    UnexpectedContinuation(u32),
    #[error("PUSH_PROMISE from a client")]
    PushPromise,
    #[error("HEADERS frame of {len} bytes too short for its padding or priority")]
    BadPadding { len: usize },
    #[error("header block larger than {MAX_HEADER_BLOCK} bytes")]
    BlockTooLarge,
    #[error(transparent)]
    Hpack(#[from] HpackError),
}

/// A frame header (RFC 7540 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHeader {
    len: usize,
    frame_type: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHeader {
    fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            len: usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]),
            frame_type: bytes[3],
            flags: bytes[4],
            // The reserved bit is ignored on receipt (§4.1).
            stream_id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        let len = self.len as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(self.frame_type);
        out.push(self.flags);
        out.extend_from_slice(&self.stream_id.to_be_bytes());
    }
}

/// A header block waiting for its CONTINUATION frames.
struct OpenBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
}

enum State {
    /// How many preface bytes have been seen.
    Preface(usize),
    /// Collecting a frame header.
    Header { bytes: [u8; FRAME_HEADER_LEN], have: usize },
    /// Forwarding the payload of a frame other than HEADERS/CONTINUATION.
    Forward { remaining: usize },
    /// Collecting the payload of a HEADERS or CONTINUATION frame.
    Block { header: FrameHeader, payload: Vec<u8> },
}

/// Rewrites the client→server byte stream of one connection.
pub struct Rewriter {
    state: State,
    open: Option<OpenBlock>,
    decoder: Decoder,
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter { state: State::Preface(0), open: None, decoder: Decoder::default() }
    }
}

impl Rewriter {
    /// Consumes `input` (any split of the stream), appending what the server
    /// should read to `out`. Buffers at most one frame and one header block.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        while !input.is_empty() {
            match &mut self.state {
                State::Preface(seen) => {
                    let take = input.len().min(PREFACE.len() - *seen);
                    if input[..take] != PREFACE[*seen..*seen + take] {
                        return Err(FrameError::BadPreface);
                    }
                    out.extend_from_slice(&input[..take]);
                    *seen += take;
                    input = &input[take..];
                    if *seen == PREFACE.len() {
                        self.state = State::Header { bytes: [0; FRAME_HEADER_LEN], have: 0 };
                    }
                }
                State::Header { bytes, have } => {
                    let take = input.len().min(FRAME_HEADER_LEN - *have);
                    bytes[*have..*have + take].copy_from_slice(&input[..take]);
                    *have += take;
                    input = &input[take..];
                    if *have == FRAME_HEADER_LEN {
                        let (raw, header) = (*bytes, FrameHeader::parse(bytes));
                        self.state = self.start_frame(raw, header, out)?;
                    }
                }
                State::Forward { remaining } => {
                    let take = input.len().min(*remaining);
                    out.extend_from_slice(&input[..take]);
                    *remaining -= take;
                    input = &input[take..];
                    if *remaining == 0 {
                        self.state = State::Header { bytes: [0; FRAME_HEADER_LEN], have: 0 };
                    }
                }
                State::Block { header, payload } => {
                    let take = input.len().min(header.len - payload.len());
                    payload.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if payload.len() == header.len {
                        let (header, payload) = (*header, std::mem::take(payload));
                        self.state = State::Header { bytes: [0; FRAME_HEADER_LEN], have: 0 };
                        self.block_frame(header, &payload, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks a frame header against the open header block (§6.10) and
    /// picks the state for its payload. Forwarded frames' headers go out now.
    fn start_frame(
        &mut self,
        raw: [u8; FRAME_HEADER_LEN],
        header: FrameHeader,
        out: &mut Vec<u8>,
    ) -> Result<State, FrameError> {
        if header.len > MAX_FRAME_SIZE {
            return Err(FrameError::FrameTooLarge(header.len));
        }
        match (&self.open, header.frame_type) {
            (Some(open), CONTINUATION) if open.stream_id == header.stream_id => {}
            (Some(open), frame_type) => {
                return Err(FrameError::ExpectedContinuation {
                    frame_type,
                    stream_id: header.stream_id,
                    open: open.stream_id,
                })
            }
            (None, CONTINUATION) => return Err(FrameError::UnexpectedContinuation(header.stream_id)),
            (None, PUSH_PROMISE) => return Err(FrameError::PushPromise),
            (None, HEADERS) => {}
            (None, _) => {
                out.extend_from_slice(&raw);
                return Ok(if header.len == 0 {
                    State::Header { bytes: [0; FRAME_HEADER_LEN], have: 0 }
                } else {
                    State::Forward { remaining: header.len }
                });
            }
        }
        let payload = Vec::with_capacity(header.len);
        if header.len == 0 {
            // No payload to wait for: a CONTINUATION with an empty fragment, say.
            self.block_frame(header, &payload, out)?;
            return Ok(State::Header { bytes: [0; FRAME_HEADER_LEN], have: 0 });
        }
        Ok(State::Block { header, payload })
    }

    /// A complete HEADERS or CONTINUATION frame: adds its fragment to the
    /// block, and forwards the block once END_HEADERS closes it.
    fn block_frame(&mut self, header: FrameHeader, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        if header.frame_type == HEADERS {
            let (priority, fragment) = split_headers_payload(header.flags, payload)?;
            self.open = Some(OpenBlock {
                stream_id: header.stream_id,
                end_stream: header.flags & END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
            });
        } else if let Some(open) = &mut self.open {
            if open.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                return Err(FrameError::BlockTooLarge);
            }
            open.fragment.extend_from_slice(payload);
        }
        if header.flags & END_HEADERS != 0 {
            if let Some(open) = self.open.take() {
                let mut fields = self.decoder.decode(&open.fragment, MAX_HEADER_BLOCK)?;
                if hpack::fix_authority(&mut fields) {
                    tracing::trace!(stream_id = open.stream_id, ":authority replaced by localhost");
                }
                let mut block = Vec::with_capacity(open.fragment.len() + 64);
                hpack::encode(&fields, &mut block);
                write_block(out, &open, &block);
            }
        }
        Ok(())
    }
}

/// The priority fields and the block fragment of a HEADERS payload, padding
/// removed (§6.2).
fn split_headers_payload(flags: u8, payload: &[u8]) -> Result<(Option<[u8; PRIORITY_LEN]>, &[u8]), FrameError> {
    let bad = || FrameError::BadPadding { len: payload.len() };
    let mut rest = payload;
    let mut padding = 0;
    if flags & PADDED != 0 {
        let (&pad_len, after) = rest.split_first().ok_or_else(bad)?;
        padding = usize::from(pad_len);
        rest = after;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let fields = rest.get(..PRIORITY_LEN).ok_or_else(bad)?;
        priority = Some(fields.try_into().expect("5 bytes"));
        rest = &rest[PRIORITY_LEN..];
    }
    // Padding as long as the rest of the payload or longer is a PROTOCOL_ERROR.
    let fragment_len = rest.len().checked_sub(padding).ok_or_else(bad)?;
    Ok((priority, &rest[..fragment_len]))
}

/// Writes `block` as one HEADERS frame and as many CONTINUATION frames as
/// [`MAX_FRAME_SIZE`] requires, without padding.
fn write_block(out: &mut Vec<u8>, open: &OpenBlock, block: &[u8]) {
    let room = MAX_FRAME_SIZE - open.priority.map_or(0, |_| PRIORITY_LEN);
    let (first, rest) = block.split_at(block.len().min(room));
    let mut flags = if rest.is_empty() { END_HEADERS } else { 0 };
    if open.end_stream {
        flags |= END_STREAM;
    }
    if open.priority.is_some() {
        flags |= PRIORITY;
    }
    let len = first.len() + open.priority.map_or(0, |_| PRIORITY_LEN);
    FrameHeader { len, frame_type: HEADERS, flags, stream_id: open.stream_id }.write(out);
    if let Some(priority) = &open.priority {
        out.extend_from_slice(priority);
    }
    out.extend_from_slice(first);
    let mut chunks = rest.chunks(MAX_FRAME_SIZE).peekable();
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() { END_HEADERS } else { 0 };
        FrameHeader { len: chunk.len(), frame_type: CONTINUATION, flags, stream_id: open.stream_id }.write(out);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::h2fix::hpack::Field;

    const SOCKET: &str = "/var/lib/kubelet/plugins/smb3.csi.dev/csi.sock";

    fn frame(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        FrameHeader { len: payload.len(), frame_type, flags, stream_id }.write(&mut out);
        out.extend_from_slice(payload);
        out
    }

    /// A request block as a client with a dynamic table would send it:
    /// `:authority` literal with incremental indexing (into entry 62).
    fn indexing_block(authority: &str, huffman_path: bool) -> Vec<u8> {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        if huffman_path {
            // :path "/" is static entry 4; use Huffman for a literal value instead:
            // literal without indexing, name index 4, Huffman "/a" = 011000 00011 + EOS padding 11111.
            block.extend_from_slice(&[0x04, 0x82, 0x60, 0x7f]);
        } else {
            block.extend_from_slice(&[0x04, 0x02, b'/', b'a']);
        }
        block.push(0x41); // literal with incremental indexing, name :authority
        block.push(authority.len() as u8);
        block.extend_from_slice(authority.as_bytes());
        block
    }

    /// Parses `out` back into frames after the preface.
    fn frames(out: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let mut rest = &out[PREFACE.len()..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let header = FrameHeader::parse(rest[..FRAME_HEADER_LEN].try_into().unwrap());
            let end = FRAME_HEADER_LEN + header.len;
            frames.push((header, rest[FRAME_HEADER_LEN..end].to_vec()));
            rest = &rest[end..];
        }
        frames
    }

    /// The server's view: decode each forwarded block with a fresh decoder
    /// state that must never need a dynamic table.
    fn server_decode(block: &[u8]) -> Vec<Field> {
        let mut server = Decoder::default();
        let fields = server.decode(block, MAX_HEADER_BLOCK).unwrap();
        // Nothing was indexed: a second decoder sees the same thing.
        assert_eq!(Decoder::default().decode(block, MAX_HEADER_BLOCK).unwrap(), fields);
        fields
    }

    fn value<'a>(fields: &'a [Field], name: &str) -> &'a [u8] {
        &fields.iter().find(|f| f.name == name.as_bytes()).unwrap().value
    }

    fn rewrite_all(input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        Rewriter::default().feed(input, &mut out)?;
        Ok(out)
    }

    fn dynamic_table_reuse(huffman: bool) {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(HEADERS, END_HEADERS, 1, &indexing_block(SOCKET, huffman)));
        input.extend(frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0])); // DATA
                                                                   // The second request refers to the first one's :authority by index 62.
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x83, 0x86, 0x84, 0xbe]));
        let out = rewrite_all(&input).unwrap();
        let frames = frames(&out);
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0], (FrameHeader { len: 0, frame_type: 0x4, flags: 0, stream_id: 0 }, vec![]));
        let first = server_decode(&frames[1].1);
        assert_eq!(value(&first, ":authority"), b"localhost");
        assert_eq!(value(&first, ":path"), b"/a");
        assert_eq!(value(&first, ":method"), b"POST");
        assert_eq!(frames[2].1, [0, 0, 0, 0, 0]);
        assert_eq!(frames[3].0.flags, END_HEADERS | END_STREAM);
        let second = server_decode(&frames[3].1);
        assert_eq!(value(&second, ":authority"), b"localhost");
        assert_eq!(value(&second, ":path"), b"/");
    }

    #[test]
    fn dynamic_table_entries_of_earlier_blocks_raw() {
        dynamic_table_reuse(false);
    }

    #[test]
    fn dynamic_table_entries_of_earlier_blocks_huffman() {
        dynamic_table_reuse(true);
    }

    #[test]
    fn valid_authority_kept_and_bytes_split_anywhere() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS with one setting
        input.extend(frame(HEADERS, END_HEADERS, 1, &indexing_block("localhost:50051", false)));
        input.extend(frame(0x8, 0, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE
        let whole = rewrite_all(&input).unwrap();
        let fields = server_decode(&frames(&whole)[1].1);
        assert_eq!(value(&fields, ":authority"), b"localhost:50051");
        for chunk in [1, 2, 7, 9, 10, 23] {
            let mut rewriter = Rewriter::default();
            let mut out = Vec::new();
            for piece in input.chunks(chunk) {
                rewriter.feed(piece, &mut out).unwrap();
            }
            assert_eq!(out, whole, "chunks of {chunk}");
        }
    }

    #[test]
    fn padding_priority_and_continuation() {
        let block = indexing_block(SOCKET, false);
        let (head, tail) = block.split_at(4);
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 0, 16]); // exclusive dependency on 0, weight 16
        payload.extend_from_slice(head);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &payload));
        input.extend(frame(CONTINUATION, 0, 5, &tail[..2]));
        input.extend(frame(CONTINUATION, END_HEADERS, 5, &tail[2..]));
        let frames = frames(&rewrite_all(&input).unwrap());
        assert_eq!(frames.len(), 1);
        let (header, payload) = &frames[0];
        assert_eq!(header.flags, PRIORITY | END_STREAM | END_HEADERS);
        assert_eq!(header.stream_id, 5);
        assert_eq!(payload[..5], [0x80, 0, 0, 0, 16]);
        assert_eq!(value(&server_decode(&payload[5..]), ":authority"), b"localhost");
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        // A 20 000-byte header value in CONTINUATION frames of the client's.
        let mut block = vec![0x83, 0x86, 0x84, 0x00, 0x01, b'x'];
        let mut value_len = Vec::new();
        hpack::encode(&[Field::new(b"x", &[b'v'; 20_000])], &mut value_len);
        block.extend_from_slice(&value_len[3..]); // the value string after the name
        block.push(0x01); // :authority from the static name, literal value
        block.push(SOCKET.len() as u8);
        block.extend_from_slice(SOCKET.as_bytes());
        let (first, rest) = block.split_at(MAX_FRAME_SIZE - PRIORITY_LEN);
        assert!(rest.len() < MAX_FRAME_SIZE);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PRIORITY, 7, &[[0, 0, 0, 3, 200].as_slice(), first].concat()));
        input.extend(frame(CONTINUATION, END_HEADERS, 7, rest));
        let frames = frames(&rewrite_all(&input).unwrap());
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0.flags, PRIORITY);
        assert_eq!(frames[0].0.len, MAX_FRAME_SIZE);
        assert_eq!(
            frames[1].0,
            FrameHeader { len: frames[1].1.len(), frame_type: CONTINUATION, flags: END_HEADERS, stream_id: 7 }
        );
        let joined = [&frames[0].1[5..], frames[1].1.as_slice()].concat();
        let fields = server_decode(&joined);
        assert_eq!(value(&fields, "x").len(), 20_000);
        assert_eq!(value(&fields, ":authority"), b"localhost");
    }

    #[test]
    fn protocol_violations_close_the_connection() {
        assert_eq!(rewrite_all(b"GET / HTTP/1.1\r\n\r\n"), Err(FrameError::BadPreface));
        let with = |frames: &[Vec<u8>]| [PREFACE.to_vec(), frames.concat()].concat();
        let too_big = [0x00, 0x40, 0x01, 0x00, 0x00, 0, 0, 0, 1];
        assert_eq!(rewrite_all(&with(&[too_big.to_vec()])), Err(FrameError::FrameTooLarge(16_385)));
        let open = frame(HEADERS, 0, 1, &[0x82]);
        assert_eq!(
            rewrite_all(&with(&[open.clone(), frame(0x0, 0, 1, b"x")])),
            Err(FrameError::ExpectedContinuation { frame_type: 0x0, stream_id: 1, open: 1 })
        );
        assert_eq!(
            rewrite_all(&with(&[open, frame(CONTINUATION, END_HEADERS, 3, &[0x84])])),
            Err(FrameError::ExpectedContinuation { frame_type: CONTINUATION, stream_id: 3, open: 1 })
        );
        assert_eq!(
            rewrite_all(&with(&[frame(CONTINUATION, END_HEADERS, 1, &[0x84])])),
            Err(FrameError::UnexpectedContinuation(1))
        );
        assert_eq!(rewrite_all(&with(&[frame(PUSH_PROMISE, 0, 1, &[0; 4])])), Err(FrameError::PushPromise));
        assert_eq!(
            rewrite_all(&with(&[frame(HEADERS, PADDED | END_HEADERS, 1, &[2, 0x82])])),
            Err(FrameError::BadPadding { len: 2 })
        );
        assert_eq!(
            rewrite_all(&with(&[frame(HEADERS, PRIORITY | END_HEADERS, 1, &[0, 0, 0])])),
            Err(FrameError::BadPadding { len: 3 })
        );
        assert_eq!(
            rewrite_all(&with(&[frame(HEADERS, END_HEADERS, 1, &[0xbe])])),
            Err(FrameError::Hpack(HpackError::BadIndex(62)))
        );
        let mut flood = vec![frame(HEADERS, 0, 1, &[0x82])];
        flood.extend(std::iter::repeat_n(frame(CONTINUATION, 0, 1, &[0x82; MAX_FRAME_SIZE]), 4));
        assert_eq!(rewrite_all(&with(&flood)), Err(FrameError::BlockTooLarge));
    }

    #[test]
    fn padding_is_dropped_and_may_fill_the_payload() {
        // Pad length 1: one byte of fragment, one of padding.
        let input = [PREFACE.to_vec(), frame(HEADERS, PADDED | END_HEADERS, 1, &[1, 0x82, 0])].concat();
        let first = frames(&rewrite_all(&input).unwrap());
        assert_eq!(first[0].0.flags, END_HEADERS);
        assert_eq!(server_decode(&first[0].1), vec![Field::new(b":method", b"GET")]);
        // Padding as long as the rest of the payload: legal, an empty fragment (then a CONTINUATION).
        let input =
            [PREFACE.to_vec(), frame(HEADERS, PADDED, 1, &[2, 0, 0]), frame(CONTINUATION, END_HEADERS, 1, &[0x82])]
                .concat();
        let frames = frames(&rewrite_all(&input).unwrap());
        assert_eq!(frames.len(), 1);
        assert_eq!(server_decode(&frames[0].1), vec![Field::new(b":method", b"GET")]);
    }
}
