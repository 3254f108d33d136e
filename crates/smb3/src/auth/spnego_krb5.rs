//! SPNEGO (RFC 4178) around the Kerberos mechanism: the NegTokenInit lists
//! the MS Kerberos OID first (as Windows does; servers list it first too)
//! and the real one second, and carries the AP-REQ as the optimistic mech
//! token for the first. The server's accept-completed NegTokenResp carries
//! the AP-REP, checked by [`gss_krb5::accept_reply`] (mutual
//! authentication); a mechListMIC it sends is verified, and one it asks for
//! (request-mic) is sent.

use super::ccache::Credential;
use super::gss_krb5::{self, ApReqContext, KRB5_OID, MS_KRB5_OID};
use super::kdc::KerberosError;
use super::spnego::{encode_mech_types, NegState, NegTokenInit, NegTokenResp};

/// The initiator side of one Kerberos logon through SPNEGO. Its Debug
/// shows no key.
pub struct KerberosSpnegoClient {
    context: ApReqContext,
    mech_types_der: Vec<u8>,
    key: Option<Vec<u8>>,
    acceptor_subkey: bool,
}

impl std::fmt::Debug for KerberosSpnegoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KerberosSpnegoClient")
            .field("context", &self.context)
            .field("authenticated", &self.key.is_some())
            .finish()
    }
}

/// Whether a NEGOTIATE response's NegTokenInit(2) lists Kerberos; an empty hint says nothing.
pub fn offers_kerberos(mech_types: &[Vec<u8>]) -> bool {
    mech_types.iter().any(|m| m == KRB5_OID || m == MS_KRB5_OID)
}

impl KerberosSpnegoClient {
    /// The InitialContextToken with the AP-REQ for `ticket`, and the client
    /// that checks the answer.
    pub fn start(ticket: &Credential) -> Result<(KerberosSpnegoClient, Vec<u8>), KerberosError> {
        let (ap_req, context) = gss_krb5::initiate(ticket, std::time::SystemTime::now())?;
        let mech_types = vec![MS_KRB5_OID.to_vec(), KRB5_OID.to_vec()];
        let token =
            NegTokenInit { mech_types: mech_types.clone(), mech_token: Some(ap_req), mech_list_mic: None }.encode();
        let client = KerberosSpnegoClient {
            context,
            mech_types_der: encode_mech_types(&mech_types),
            key: None,
            acceptor_subkey: false,
        };
        Ok((client, token))
    }

    /// Feeds the server's NegTokenResp. `Ok(None)`: authenticated (the key is
    /// set); `Ok(Some(token))`: send this (our mechListMIC) and expect success.
    pub fn step(&mut self, server_token: &[u8]) -> Result<Option<Vec<u8>>, KerberosError> {
        if server_token.is_empty() {
            return match self.key {
                Some(_) => Ok(None),
                None => Err(KerberosError::MutualAuthFailed("the server sent no AP-REP".into())),
            };
        }
        let resp = NegTokenResp::decode(server_token).map_err(|e| KerberosError::Malformed(e.to_string()))?;
        if let Some(mech) = &resp.supported_mech {
            if mech != MS_KRB5_OID && mech != KRB5_OID {
                return Err(KerberosError::MutualAuthFailed("the server chose another mechanism than Kerberos".into()));
            }
        }
        if let Some(token) = resp.response_token.as_deref().filter(|t| !t.is_empty()) {
            let key = gss_krb5::accept_reply(&self.context, token)?;
            self.acceptor_subkey = key != self.context_subkey();
            self.key = Some(key);
        }
        if resp.neg_state == Some(NegState::Reject) {
            return Err(KerberosError::MutualAuthFailed("the server rejected the Kerberos logon".into()));
        }
        let Some(key) = &self.key else {
            return Err(KerberosError::MutualAuthFailed("the server sent no AP-REP".into()));
        };
        if let Some(mic) = &resp.mech_list_mic {
            gss_krb5::verify_acceptor_mic(key, self.context.etype(), &self.mech_types_der, mic)?;
        }
        match resp.neg_state {
            Some(NegState::AcceptCompleted) | None => Ok(None),
            Some(NegState::AcceptIncomplete | NegState::RequestMic) => {
                let mic =
                    gss_krb5::initiator_mic(key, self.context.etype(), self.acceptor_subkey, &self.mech_types_der)?;
                Ok(Some(
                    NegTokenResp {
                        neg_state: None,
                        supported_mech: None,
                        response_token: None,
                        mech_list_mic: Some(mic),
                    }
                    .encode(),
                ))
            }
            Some(s) => Err(KerberosError::Malformed(format!("SPNEGO negState {s:?}"))),
        }
    }

    fn context_subkey(&self) -> Vec<u8> {
        self.context.initiator_subkey().to_vec()
    }

    /// The GSS context key once the server proved itself.
    pub fn session_key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
}
