//! `--metrics-address`: where the metrics endpoint listens, checked when the
//! flag is parsed so that a typo fails the start with a useful message.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// Where to serve metrics: `:29744` (every IPv4 interface), `127.0.0.1:9808`,
/// `[::]:9808`, `localhost:9808`.
///
/// ```
/// use smb3_csi::metrics::MetricsAddress;
/// assert_eq!(MetricsAddress::parse(":29744").unwrap().socket_addr().to_string(), "0.0.0.0:29744");
/// assert_eq!(MetricsAddress::parse("[::1]:9808").unwrap().socket_addr().to_string(), "[::1]:9808");
/// assert!(MetricsAddress::parse("9808").is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddress(SocketAddr);

/// Why a `--metrics-address` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics address {address:?}: {why}; expected [HOST]:PORT, e.g. :29744 or 127.0.0.1:9808")]
pub struct MetricsAddressError {
    address: String,
    why: &'static str,
}

impl MetricsAddress {
    pub fn parse(address: &str) -> Result<MetricsAddress, MetricsAddressError> {
        let error = |why| MetricsAddressError { address: address.to_string(), why };
        let trimmed = address.trim();
        let (host, port) = trimmed.rsplit_once(':').ok_or_else(|| error("no port"))?;
        let port: u16 = port.parse().map_err(|_| error("the port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(error("port 0 would pick a random port nobody can scrape"));
        }
        let ip = match host {
            "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            _ => {
                let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
                match literal {
                    Some(v6) => v6.parse().map_err(|_| error("not an IPv6 address inside the brackets"))?,
                    None if host.contains(':') => return Err(error("an IPv6 address must be in brackets")),
                    None => host.parse().map_err(|_| error("the host must be an IP address or localhost"))?,
                }
            }
        };
        Ok(MetricsAddress(SocketAddr::new(ip, port)))
    }

    pub fn socket_addr(&self) -> SocketAddr {
        self.0
    }
}

impl FromStr for MetricsAddress {
    type Err = MetricsAddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MetricsAddress::parse(s)
    }
}

impl fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let ok = |s: &str| MetricsAddress::parse(s).unwrap().to_string();
        assert_eq!(ok(":29744"), "0.0.0.0:29744");
        assert_eq!(ok("127.0.0.1:9808"), "127.0.0.1:9808");
        assert_eq!(ok("localhost:9808"), "127.0.0.1:9808");
        assert_eq!(ok("[::]:1"), "[::]:1");
        assert_eq!(ok(" 10.0.0.1:80 "), "10.0.0.1:80");
        for bad in ["", "9808", ":", ":0", ":65536", ":x", "::1:80", "[::1:80", "example.com:80", "1.2.3:80"] {
            let err = MetricsAddress::parse(bad).unwrap_err().to_string();
            assert!(err.contains("expected [HOST]:PORT"), "{bad:?}: {err}");
        }
    }
}
