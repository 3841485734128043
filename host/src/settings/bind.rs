//! What `--bind` names: a TCP address (`127.0.0.1:8000`, `[::1]:8000`; port 0 picks a free
//! port), a host name and port (`localhost:8000`: its first IPv4 address, else its first,
//! resolved at start), `:PORT` (every IPv4 address, as Gunicorn's `-b :8000`), or a Unix
//! stream socket (`unix:PATH`, Gunicorn's spelling).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// One `--bind` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindSpec {
    /// A TCP listener on this address.
    Tcp(SocketAddr),
    /// A Unix stream socket at this path (relative to the working directory, or to the
    /// configuration file's directory when it comes from the file).
    Unix(PathBuf),
}

impl FromStr for BindSpec {
    type Err = String;

    fn from_str(v: &str) -> Result<BindSpec, String> {
        if let Some(path) = v.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path, e.g. unix:/run/portico.sock".to_owned());
            }
            return Ok(BindSpec::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = v.parse::<SocketAddr>() {
            return Ok(BindSpec::Tcp(addr));
        }
        let bad = || {
            format!(
                "{v:?} is none of IP:PORT (127.0.0.1:8000, [::1]:8000), HOST:PORT (localhost:8000), :PORT (every address) or unix:PATH"
            )
        };
        // `:8000`: every IPv4 address, as Gunicorn's `-b :8000`.
        if let Some(port) = v.strip_prefix(':') {
            return port.parse::<u16>().map(|p| BindSpec::Tcp(SocketAddr::from(([0, 0, 0, 0], p)))).map_err(|_| bad());
        }
        // `HOST:PORT`: the name's first IPv4 address (else its first), resolved once at start.
        let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
        port.parse::<u16>().map_err(|_| bad())?;
        if host.is_empty() || host.contains(['/', ' ']) {
            return Err(bad());
        }
        let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(v)
            .map_err(|e| format!("--bind {v:?}: cannot resolve {host:?}: {e}"))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .map(BindSpec::Tcp)
            .ok_or_else(|| format!("--bind {v:?}: {host:?} has no address"))
    }
}

impl fmt::Display for BindSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindSpec::Tcp(addr) => write!(f, "{addr}"),
            BindSpec::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Serialize for BindSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `--unix-socket-mode`: permission bits in octal (`0660`, `660`, `0o660`).
pub fn parse_mode(v: &str) -> Result<u32, String> {
    let digits = v.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{v:?} is not an octal file mode (0000 to 0777), e.g. 0660")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!("127.0.0.1:80".parse::<BindSpec>().unwrap(), BindSpec::Tcp("127.0.0.1:80".parse().unwrap()));
        assert_eq!("unix:/run/p.sock".parse::<BindSpec>().unwrap(), BindSpec::Unix("/run/p.sock".into()));
        assert_eq!("unix:/run/p.sock".parse::<BindSpec>().unwrap().to_string(), "unix:/run/p.sock");
        assert!("unix:".parse::<BindSpec>().is_err());
        assert!("localhost".parse::<BindSpec>().unwrap_err().contains("unix:PATH"));
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("0999").is_err() && parse_mode("01777").is_err());
    }
}
