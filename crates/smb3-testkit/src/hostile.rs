//! A malicious SMB2 server that speaks just enough of the protocol per test
//! case: a script sees each request the client sends and says what to send
//! back, byte for byte, when, and how fast. It proves that the client ends
//! every exchange within its deadlines with an error naming what was wrong,
//! whatever the server does (endless STATUS_PENDING, answers to ids never
//! sent, duplicates, impossible lengths, zero credits, a byte-per-second drip).
//!
//! Cases that need a real session (a bad signature, a wrong session id in a
//! transform header, a replayed encrypted frame, a stripped capability, a
//! stream of interim answers after logon, a nonce reused for another message
//! forged with [`crate::sealed`]) go through
//! [`crate::proxy::CorruptingProxy::rewrite_responses`] in front of the real
//! Samba instead.
//!
//! Plain threads and blocking sockets, like the proxy; stops when dropped.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use smb3::wire::header::{Header, FLAG_ASYNC_COMMAND, FLAG_SERVER_TO_REDIR, HEADER_LEN};
use smb3::wire::negotiate::NegotiateResponse;
use smb3::wire::simple::ErrorResponse;
use smb3::wire::{Command, Dialect, NtStatus};

const ACCEPT_POLL: Duration = Duration::from_millis(20);
/// Requests larger than this are not SMB2 requests this server expects.
const MAX_REQUEST: usize = 1 << 20;

/// A request as the script sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub header: Header,
    /// The whole message, header first.
    pub msg: Vec<u8>,
    /// How many requests came before this one on the connection.
    pub index: usize,
}

/// What the server does in answer to one request, in order.
#[derive(Debug, Clone)]
pub enum Act {
    /// One frame (the 4-byte length is added).
    Send(Vec<u8>),
    /// One frame, written a byte at a time with a pause after each.
    Drip { msg: Vec<u8>, every: Duration },
    /// The same frame again and again until the client hangs up.
    Repeat { msg: Vec<u8>, every: Duration },
    /// Raw bytes, no framing added (e.g. a frame header promising more than follows).
    Raw(Vec<u8>),
    /// Close the connection.
    Close,
}

/// The script: called for every request of every connection.
pub type Script = Arc<dyn Fn(&Incoming) -> Vec<Act> + Send + Sync>;

struct State {
    stopping: AtomicBool,
    requests: AtomicUsize,
    connections: Mutex<Vec<TcpStream>>,
}

/// The server, listening on 127.0.0.1 (a free port).
pub struct HostileServer {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl HostileServer {
    pub fn start(script: Script) -> io::Result<HostileServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            stopping: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
            connections: Mutex::default(),
        });
        let st = Arc::clone(&state);
        let acceptor = thread::Builder::new().name(format!("hostile-{}", addr.port())).spawn(move || {
            while !st.stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Ok(c) = conn.try_clone() {
                            st.connections.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                        }
                        let (st, script) = (Arc::clone(&st), Arc::clone(&script));
                        let _ = thread::Builder::new().name("hostile-conn".into()).spawn(move || {
                            if let Err(e) = serve(conn, &script, &st) {
                                tracing::debug!("hostile server connection: {e}");
                            }
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
                    Err(_) => thread::sleep(ACCEPT_POLL),
                }
            }
        })?;
        Ok(HostileServer { addr, state, acceptor: Some(acceptor) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far, over all connections.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        for c in self.state.connections.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, script: &Script, state: &State) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut index = 0;
    loop {
        let mut head = [0u8; 4];
        if conn.read_exact(&mut head).is_err() {
            return Ok(());
        }
        let len = (usize::from(head[1]) << 16) | (usize::from(head[2]) << 8) | usize::from(head[3]);
        if len > MAX_REQUEST {
            return Err(io::Error::other("request too large"));
        }
        let mut msg = vec![0u8; len];
        conn.read_exact(&mut msg)?;
        let Ok(header) = Header::decode(&msg) else { continue };
        state.requests.fetch_add(1, Ordering::SeqCst);
        for act in script(&Incoming { header, msg, index }) {
            match act {
                Act::Send(m) => write_frame(&mut conn, &m)?,
                Act::Raw(b) => conn.write_all(&b)?,
                Act::Drip { msg, every } => {
                    for b in frame(&msg) {
                        conn.write_all(&[b])?;
                        thread::sleep(every);
                    }
                }
                Act::Repeat { msg, every } => loop {
                    if state.stopping.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    write_frame(&mut conn, &msg)?;
                    thread::sleep(every);
                },
                Act::Close => {
                    let _ = conn.shutdown(Shutdown::Both);
                    return Ok(());
                }
            }
        }
        index += 1;
    }
}

fn frame(msg: &[u8]) -> Vec<u8> {
    let len = msg.len() as u32;
    let mut out = len.to_be_bytes().to_vec();
    out[0] = 0;
    out.extend_from_slice(msg);
    out
}

fn write_frame(conn: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    conn.write_all(&frame(msg))
}

/// The header of a response to `req`: same command, message id and session,
/// the server-to-client flag, `status` and `credits`.
pub fn response_header(req: &Header, status: NtStatus, credits: u16) -> Header {
    let mut h = Header::new(req.command);
    h.status = status;
    h.credits = credits;
    h.flags = FLAG_SERVER_TO_REDIR;
    h.message_id = req.message_id;
    h.session_id = req.session_id;
    h.tree_id = req.tree_id;
    h
}

/// A whole message: `h` then `body`.
pub fn message(h: &Header, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    h.encode(&mut out);
    out.extend_from_slice(body);
    out
}

/// An error response (MS-SMB2 2.2.2) to `req` with `status`.
pub fn error_reply(req: &Header, status: NtStatus, credits: u16) -> Vec<u8> {
    let mut body = Vec::new();
    ErrorResponse { error_context_count: 0, error_data: Vec::new() }.encode(&mut body);
    message(&response_header(req, status, credits), &body)
}

/// An interim STATUS_PENDING answer to `req` (MS-SMB2 3.3.4.2): async flag and an AsyncId.
pub fn interim_reply(req: &Header) -> Vec<u8> {
    let mut h = response_header(req, NtStatus::PENDING, 1);
    h.flags |= FLAG_ASYNC_COMMAND;
    h.async_id = 0x5A5A;
    let mut body = Vec::new();
    ErrorResponse { error_context_count: 0, error_data: Vec::new() }.encode(&mut body);
    message(&h, &body)
}

/// A plausible NEGOTIATE response choosing SMB 3.0.2 (no negotiate contexts
/// needed), signing enabled, with the given capabilities and credit grant.
pub fn negotiate_reply(req: &Header, capabilities: u32, credits: u16) -> Vec<u8> {
    let body = NegotiateResponse {
        security_mode: 0x0001,
        dialect: Dialect::Smb302,
        server_guid: *b"hostile-server!!",
        capabilities,
        max_transact_size: 1 << 20,
        max_read_size: 1 << 20,
        max_write_size: 1 << 20,
        system_time: 0,
        server_start_time: 0,
        security_buffer: Vec::new(),
        contexts: Vec::new(),
    };
    let mut b = Vec::new();
    body.encode(&mut b);
    message(&response_header(req, NtStatus::SUCCESS, credits), &b)
}

/// Byte offset, in a whole NEGOTIATE response message, of SecurityBufferOffset
/// (MS-SMB2 2.2.4: 56 bytes into the body); SecurityBufferLength follows.
pub const NEGOTIATE_SECURITY_BUFFER_OFFSET: usize = HEADER_LEN + 56;

/// True for the NEGOTIATE request.
pub fn is_negotiate(req: &Incoming) -> bool {
    req.header.command == Command::Negotiate
}
