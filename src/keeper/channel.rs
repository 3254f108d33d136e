//! Frames of [`super::codec`] over a unix stream socket, with a descriptor beside the frames that carry one
//! (SCM_RIGHTS on the frame's first byte). Blocking, with a timeout on every read: the keeper and the plugin
//! talk in short request/answer exchanges.
//!
//! rustix's safe `recvmsg` hands received descriptors out as `OwnedFd`; nix's gives raw integers, which
//! would need `unsafe` to own.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendFlags};

use super::codec::{self, CodecError, Message, HEADER_LEN};

/// How long a read waits for the peer's next bytes.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the peer closed the connection in the middle of a message")]
    Eof,
    #[error("{0:?} must carry a descriptor and came without one")]
    MissingFd(Message),
    #[error("{0:?} came with a descriptor it must not carry")]
    UnexpectedFd(Message),
    #[error("peer uid {uid} is not root")]
    NotRoot { uid: u32 },
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> ChannelError {
    move |source| ChannelError::Io { op, source }
}

/// A connection carrying keeper-protocol frames.
pub struct Channel {
    stream: UnixStream,
}

impl Channel {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Channel, ChannelError> {
        let stream = UnixStream::connect(path).map_err(io("connecting"))?;
        Channel::new(stream)
    }

    /// Wraps an accepted or connected stream (sets the read timeout).
    pub fn new(stream: UnixStream) -> Result<Channel, ChannelError> {
        stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(io("setting the read timeout"))?;
        Ok(Channel { stream })
    }

    /// Changes how long a read waits (a handover waits for the old plugin to drain and detach).
    pub fn set_read_timeout(&self, timeout: Duration) -> Result<(), ChannelError> {
        self.stream.set_read_timeout(Some(timeout)).map_err(io("setting the read timeout"))
    }

    /// Refuses a peer that is not root (SO_PEERCRED): only the node plugin may hand descriptors in or out.
    pub fn require_root_peer(&self) -> Result<(), ChannelError> {
        let cred = nix::sys::socket::getsockopt(&self.stream, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(|errno| ChannelError::Io { op: "SO_PEERCRED", source: errno.into() })?;
        if cred.uid() != 0 {
            return Err(ChannelError::NotRoot { uid: cred.uid() });
        }
        Ok(())
    }

    /// Sends `message`, with `fd` when it carries one.
    pub fn send(&mut self, message: &Message, fd: Option<BorrowedFd<'_>>) -> Result<(), ChannelError> {
        match (message.carries_fd(), fd.is_some()) {
            (true, false) => return Err(ChannelError::MissingFd(message.clone())),
            (false, true) => return Err(ChannelError::UnexpectedFd(message.clone())),
            _ => {}
        }
        let frame = codec::encode(message)?;
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut sent = 0;
        while sent < frame.len() {
            let mut control = SendAncillaryBuffer::new(&mut space);
            // The descriptor rides on the first byte only.
            if sent == 0 && !fds.is_empty() {
                control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
            }
            let n = rustix::net::sendmsg(
                self.stream.as_fd(),
                &[IoSlice::new(&frame[sent..])],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(|e| ChannelError::Io { op: "sending", source: e.into() })?;
            sent += n;
        }
        Ok(())
    }

    /// The next message and its descriptor; `None` when the peer closed the connection between messages.
    pub fn recv(&mut self) -> Result<Option<(Message, Option<OwnedFd>)>, ChannelError> {
        let mut fd = None;
        let mut head = [0u8; HEADER_LEN];
        if !self.fill(&mut head, &mut fd, true)? {
            return Ok(None);
        }
        let header = codec::decode_header(&head)?;
        let mut body = vec![0u8; header.body_len];
        self.fill(&mut body, &mut fd, false)?;
        let message = codec::decode_body(header, &body)?;
        match (message.carries_fd(), fd.is_some()) {
            (true, false) => Err(ChannelError::MissingFd(message)),
            (false, true) => Err(ChannelError::UnexpectedFd(message)),
            _ => Ok(Some((message, fd))),
        }
    }

    /// Reads exactly `buf.len()` bytes, keeping the first descriptor that arrives (extra ones are closed).
    /// `false` when the peer closed before the first byte and `eof_ok`.
    fn fill(&mut self, buf: &mut [u8], fd: &mut Option<OwnedFd>, eof_ok: bool) -> Result<bool, ChannelError> {
        let mut got = 0;
        while got < buf.len() {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let n = rustix::net::recvmsg(
                self.stream.as_fd(),
                &mut [IoSliceMut::new(&mut buf[got..])],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(|e| ChannelError::Io { op: "receiving", source: e.into() })?
            .bytes;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = message {
                    for received in fds {
                        if fd.is_none() {
                            *fd = Some(received);
                        }
                    }
                }
            }
            if n == 0 {
                if got == 0 && eof_ok {
                    return Ok(false);
                }
                return Err(ChannelError::Eof);
            }
            got += n;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    fn pair() -> (Channel, Channel) {
        let (a, b) = UnixStream::pair().unwrap();
        (Channel::new(a).unwrap(), Channel::new(b).unwrap())
    }

    #[test]
    fn a_descriptor_crosses_with_its_message_and_stays_the_same_file() {
        let (mut a, mut b) = pair();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"held").unwrap();
        let register = Message::Register { key: "/m".into(), record: b"r".to_vec() };
        a.send(&register, Some(file.as_fd())).unwrap();
        a.send(&Message::Ping, None).unwrap();
        let (got, fd) = b.recv().unwrap().unwrap();
        assert_eq!(got, register);
        let mut same = std::fs::File::from(fd.unwrap());
        same.rewind().unwrap();
        let mut text = String::new();
        same.read_to_string(&mut text).unwrap();
        assert_eq!(text, "held");
        assert_eq!(b.recv().unwrap().unwrap().0, Message::Ping);
        drop(a);
        assert!(b.recv().unwrap().is_none(), "a close between messages is a clean end");
    }

    #[test]
    fn descriptor_rules_are_enforced_both_ways() {
        let (mut a, mut b) = pair();
        let file = tempfile::tempfile().unwrap();
        let entry = Message::Entry { key: "/m".into(), record: vec![] };
        assert!(matches!(a.send(&entry, None), Err(ChannelError::MissingFd(_))));
        assert!(matches!(a.send(&Message::Ping, Some(file.as_fd())), Err(ChannelError::UnexpectedFd(_))));
        // A raw frame that should carry one but does not.
        a.stream.write_all(&codec::encode(&entry).unwrap()).unwrap();
        assert!(matches!(b.recv(), Err(ChannelError::MissingFd(_))));
    }

    #[test]
    fn garbage_and_a_cut_frame_are_errors() {
        let (mut a, mut b) = pair();
        a.stream.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        assert!(matches!(b.recv(), Err(ChannelError::Codec(CodecError::BadMagic(_)))));
        let (mut a, mut b) = pair();
        let frame = codec::encode(&Message::Forget { key: "/abc".into() }).unwrap();
        a.stream.write_all(&frame[..frame.len() - 1]).unwrap();
        drop(a);
        assert!(matches!(b.recv(), Err(ChannelError::Eof)));
    }

    #[test]
    fn root_peer_check() {
        let (a, _b) = pair();
        let root = nix::unistd::geteuid().is_root();
        assert_eq!(a.require_root_peer().is_ok(), root);
    }
}
