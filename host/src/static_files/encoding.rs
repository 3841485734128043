//! Content negotiation for precompressed siblings (`file.br`, `file.gz`) from
//! `Accept-Encoding` (RFC 9110 §12.5.3).
//!
//! Each member is `coding [ ";" "q=" qvalue ]` (other parameters are ignored); `*` stands for
//! any coding not listed; `q=0` means "not acceptable"; `x-gzip` is `gzip` (§8.4.1.3). The
//! acceptable coding with the highest weight wins; Brotli beats gzip at equal weight (smaller);
//! `identity` listed with a higher weight than both keeps the file itself.
//! Without the field, or when nothing available is acceptable, the file itself is sent.

/// A content coding with a precompressed sibling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `br`, from `file.br`.
    Br,
    /// `gzip`, from `file.gz`.
    Gzip,
}

impl Coding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The sibling file's suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Coding::Br => ".br",
            Coding::Gzip => ".gz",
        }
    }
}

/// Picks the coding to send given the `Accept-Encoding` value and which siblings exist.
pub fn negotiate(accept: Option<&[u8]>, have_br: bool, have_gzip: bool) -> Option<Coding> {
    let accept = accept?;
    let (mut br, mut gzip, mut star, mut identity) = (None, None, None, None);
    for member in accept.split(|&b| b == b',') {
        let mut parts = member.split(|&b| b == b';');
        let coding = parts.next().unwrap_or_default().trim_ascii();
        if coding.is_empty() {
            continue;
        }
        let mut q = Some(1000);
        for param in parts {
            let param = param.trim_ascii();
            if param.len() >= 2 && param[..2].eq_ignore_ascii_case(b"q=") {
                q = qvalue(&param[2..]);
            }
        }
        let Some(q) = q else { continue };
        if coding.eq_ignore_ascii_case(b"br") {
            br = Some(q);
        } else if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
            gzip = Some(q);
        } else if coding == b"*" {
            star = Some(q);
        } else if coding.eq_ignore_ascii_case(b"identity") {
            identity = Some(q);
        }
    }
    let br = if have_br { br.or(star).unwrap_or(0) } else { 0 };
    let gzip = if have_gzip { gzip.or(star).unwrap_or(0) } else { 0 };
    // A client that weighs `identity` above every coding it accepts gets the file itself.
    let identity = identity.unwrap_or(0);
    match (br, gzip) {
        (0, 0) => None,
        (b, g) if b.max(g) < identity => None,
        (b, g) if b >= g => Some(Coding::Br),
        _ => Some(Coding::Gzip),
    }
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )` in thousandths; `None` if
/// malformed (the member is then ignored).
fn qvalue(v: &[u8]) -> Option<u32> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0;
    for (i, d) in frac.iter().enumerate() {
        thousandths += u32::from(d - b'0') * [100, 10, 1][i];
    }
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(v: &str) -> Option<Coding> {
        negotiate(Some(v.as_bytes()), true, true)
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(None, true, true), None);
        assert_eq!(pick("gzip"), Some(Coding::Gzip));
        assert_eq!(pick("gzip, deflate, br"), Some(Coding::Br));
        assert_eq!(pick("br;q=0.5, gzip;q=0.9"), Some(Coding::Gzip));
        assert_eq!(pick("br;q=0, gzip;q=0"), None);
        assert_eq!(pick("*"), Some(Coding::Br));
        assert_eq!(pick("*;q=0.1, br;q=0"), Some(Coding::Gzip));
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("identity, gzip;q=0.1"), None, "identity weighs more");
        assert_eq!(pick("br;q=0.5, identity"), None);
        assert_eq!(pick("gzip, identity;q=0.5"), Some(Coding::Gzip));
        assert_eq!(pick("X-GZIP"), Some(Coding::Gzip));
        assert_eq!(pick("br;q=2, gzip"), Some(Coding::Gzip), "malformed q ignores the member");
        assert_eq!(negotiate(Some(b"br, gzip"), false, true), Some(Coding::Gzip));
        assert_eq!(negotiate(Some(b"br"), false, true), None);
    }

    #[test]
    fn qvalues() {
        assert_eq!(qvalue(b"1"), Some(1000));
        assert_eq!(qvalue(b"1.000"), Some(1000));
        assert_eq!(qvalue(b"0.25"), Some(250));
        assert_eq!(qvalue(b"0"), Some(0));
        assert_eq!(qvalue(b"1.5"), None);
        assert_eq!(qvalue(b"0.1234"), None);
        assert_eq!(qvalue(b""), None);
    }
}
