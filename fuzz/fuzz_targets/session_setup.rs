//! SESSION_SETUP response and the SPNEGO / NTLM CHALLENGE token inside it (MS-SMB2 2.2.6, MS-SPNG, MS-NLMP 2.2.1.2).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smb3::auth::ntlm::{decode_av_pairs, ChallengeMessage};
use smb3::auth::spnego::{NegTokenInit, NegTokenResp};
use smb3::wire::session_setup::SessionSetupResponse;

fuzz_target!(|data: &[u8]| {
    let _ = SessionSetupResponse::decode(data);
    let _ = NegTokenInit::decode(data);
    let _ = NegTokenResp::decode(data);
    let _ = ChallengeMessage::decode(data);
    let _ = decode_av_pairs(data);
});
