//! Bodies with no content: LOGOFF (2.2.7, 2.2.8), ECHO (2.2.28, 2.2.29),
//! CANCEL (2.2.30), all StructureSize 4 + Reserved; and the ERROR
//! response (2.2.2) any command may get instead of its own response.

use super::cursor::{Reader, Writer};
use super::header::HEADER_LEN;
use super::{expect_structure_size, WireError};

const EMPTY_STRUCTURE_SIZE: u16 = 4;
const ERROR_STRUCTURE_SIZE: u16 = 9;

macro_rules! empty_bodies {
    ($($(#[$doc:meta])* $name:ident => $what:expr;)*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Eq)]
            pub struct $name;

            impl $name {
                pub fn encode(&self, msg: &mut Vec<u8>) {
                    msg.put_u16(EMPTY_STRUCTURE_SIZE);
                    msg.put_u16(0); // Reserved
                }

                pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
                    let mut r = Reader::at(msg, HEADER_LEN)?;
                    expect_structure_size(&mut r, EMPTY_STRUCTURE_SIZE, $what)?;
                    r.skip(2, "reserved")?;
                    Ok($name)
                }
            }
        )*
    };
}

empty_bodies! {
    /// SMB2 LOGOFF request (2.2.7).
    LogoffRequest => "logoff request";
    /// SMB2 LOGOFF response (2.2.8).
    LogoffResponse => "logoff response";
    /// SMB2 ECHO request (2.2.28).
    EchoRequest => "echo request";
    /// SMB2 ECHO response (2.2.29).
    EchoResponse => "echo response";
    /// SMB2 CANCEL request (2.2.30); it has no response.
    CancelRequest => "cancel request";
}

/// SMB2 ERROR response (2.2.2). `error_data` holds ErrorByteCount bytes: for
/// 3.1.1 a list of error contexts (2.2.2.1), otherwise e.g. a symlink error
/// or the required buffer size for STATUS_BUFFER_TOO_SMALL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    pub error_context_count: u8,
    pub error_data: Vec<u8>,
}

impl ErrorResponse {
    pub fn encode(&self, msg: &mut Vec<u8>) {
        msg.put_u16(ERROR_STRUCTURE_SIZE);
        msg.put_u8(self.error_context_count);
        msg.put_u8(0); // Reserved
        msg.put_u32(self.error_data.len() as u32);
        if self.error_data.is_empty() {
            msg.put_u8(0); // ByteCount 0 still carries one ErrorData byte
        } else {
            msg.put_bytes(&self.error_data);
        }
    }

    /// Tolerates the single zero ErrorData byte being present or absent when
    /// ByteCount is 0, as servers differ there.
    pub fn decode(msg: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at(msg, HEADER_LEN)?;
        expect_structure_size(&mut r, ERROR_STRUCTURE_SIZE, "error response")?;
        let error_context_count = r.u8("error context count")?;
        r.skip(1, "reserved")?;
        let byte_count = r.u32("error byte count")? as usize;
        let error_data = r.take(byte_count, "error data")?.to_vec();
        Ok(ErrorResponse { error_context_count, error_data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Command, Header};

    fn with_header(command: Command) -> Vec<u8> {
        let mut msg = Vec::new();
        Header::new(command).encode(&mut msg);
        msg
    }

    #[test]
    fn empty_bodies_round_trip() {
        let mut msg = with_header(Command::Echo);
        EchoRequest.encode(&mut msg);
        assert_eq!(&msg[64..], &[0x04, 0x00, 0x00, 0x00]);
        assert_eq!(EchoRequest::decode(&msg).unwrap(), EchoRequest);
        assert_eq!(EchoResponse::decode(&msg).unwrap(), EchoResponse);
        assert_eq!(LogoffRequest::decode(&msg).unwrap(), LogoffRequest);
        assert_eq!(LogoffResponse::decode(&msg).unwrap(), LogoffResponse);
        assert_eq!(CancelRequest::decode(&msg).unwrap(), CancelRequest);
        for encoded in [
            {
                let mut m = with_header(Command::Logoff);
                LogoffResponse.encode(&mut m);
                m
            },
            {
                let mut m = with_header(Command::Cancel);
                CancelRequest.encode(&mut m);
                m
            },
        ] {
            assert_eq!(&encoded[64..], &[4, 0, 0, 0]);
        }
    }

    #[test]
    fn empty_bodies_reject_truncated_and_wrong_size() {
        let mut msg = with_header(Command::Logoff);
        LogoffRequest.encode(&mut msg);
        assert!(matches!(LogoffRequest::decode(&msg[..66]), Err(WireError::Truncated { .. })));
        assert!(EchoResponse::decode(&msg[..60]).is_err());
        msg[64] = 9;
        assert!(matches!(LogoffRequest::decode(&msg), Err(WireError::Invalid { .. })));
    }

    #[test]
    fn error_response_round_trip() {
        let e = ErrorResponse { error_context_count: 1, error_data: vec![4, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0] };
        let mut msg = with_header(Command::Read);
        e.encode(&mut msg);
        assert_eq!(ErrorResponse::decode(&msg).unwrap(), e);
        let empty = ErrorResponse { error_context_count: 0, error_data: vec![] };
        let mut msg = with_header(Command::Read);
        empty.encode(&mut msg);
        assert_eq!(msg.len(), 64 + 9);
        assert_eq!(ErrorResponse::decode(&msg).unwrap(), empty);
    }

    #[test]
    fn error_response_real_bytes_with_and_without_pad_byte() {
        // 2.2.2: StructureSize 9, ErrorContextCount 0, Reserved, ByteCount 0, one zero byte.
        let mut msg = with_header(Command::Create);
        msg.extend_from_slice(&[0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]);
        let expected = ErrorResponse { error_context_count: 0, error_data: vec![] };
        assert_eq!(ErrorResponse::decode(&msg).unwrap(), expected);
        assert_eq!(ErrorResponse::decode(&msg[..72]).unwrap(), expected);
        assert!(matches!(ErrorResponse::decode(&msg[..71]), Err(WireError::Truncated { .. })));

        // STATUS_BUFFER_TOO_SMALL carries the needed size as a 4-byte ErrorData.
        let mut msg = with_header(Command::QueryInfo);
        msg.extend_from_slice(&[0x09, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00]);
        assert_eq!(ErrorResponse::decode(&msg).unwrap().error_data, [0x00, 0x02, 0x00, 0x00]);
        // ByteCount larger than the message is an error, not an allocation.
        msg[68..72].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(ErrorResponse::decode(&msg), Err(WireError::Truncated { .. })));
    }
}
