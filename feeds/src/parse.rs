//! A feed's text: one CIDR (or address) a line, with `;` and `#` comments
//! (Spamhaus DROP: `1.10.16.0/20 ; SBL256894`; FireHOL netsets: `# ...`
//! headers, then bare prefixes; a CrowdSec export: bare addresses).
//!
//! Sans-IO and bounded: it reads bytes already fetched (at most the fetch's
//! size limit), stops counting entries past `max_entries` (the feed is
//! refused whole: never half-applied), and keeps the first few bad lines
//! to name in the log. A bad line never stops the rest.

use model::Cidr;

/// Bad lines kept to name (the rest are counted).
pub const BAD_LINES_KEPT: usize = 5;

/// A feed entry no wider than this (IPv4 /8, IPv6 /16): a wider one would
/// time out a provider and its customers, and is a bad line (FireHOL
/// level 1's `224.0.0.0/3`, a list that says `0.0.0.0/0`).
pub const WIDEST_IPV4: u8 = 8;
pub const WIDEST_IPV6: u8 = 16;

/// What a feed lists: its entries in order, deduplicated.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub entries: Vec<Cidr>,
    /// Lines that held something that is not an entry.
    pub bad_count: usize,
    /// The first [`BAD_LINES_KEPT`] of them.
    pub bad: Vec<BadLine>,
}

/// A line that held something that is not an entry: its number (from 1)
/// and why, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub reason: String,
}

/// More entries than the feed may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {max} entries")]
pub struct TooMany {
    pub max: usize,
}

/// Parses a feed's bytes. `Err` when it lists more than `max_entries`
/// (counted before deduplication: a list is judged by what it says).
pub fn parse(text: &[u8], max_entries: usize) -> Result<Parsed, TooMany> {
    let mut parsed = Parsed::default();
    for (index, line) in text.split(|b| *b == b'\n').enumerate() {
        let content = match line.iter().position(|b| *b == b'#' || *b == b';') {
            Some(comment) => &line[..comment],
            None => line,
        };
        let Some(token) = content
            .split(|b| b.is_ascii_whitespace())
            .find(|token| !token.is_empty())
        else {
            continue;
        };
        match entry(token) {
            Ok(cidr) => {
                if parsed.entries.len() == max_entries {
                    return Err(TooMany { max: max_entries });
                }
                parsed.entries.push(cidr);
            }
            Err(reason) => {
                parsed.bad_count += 1;
                if parsed.bad.len() < BAD_LINES_KEPT {
                    parsed.bad.push(BadLine {
                        line: index + 1,
                        reason,
                    });
                }
            }
        }
    }
    parsed.entries.sort_unstable();
    parsed.entries.dedup();
    Ok(parsed)
}

fn entry(token: &[u8]) -> Result<Cidr, String> {
    const SHOWN: usize = 48;
    let Ok(text) = std::str::from_utf8(token) else {
        return Err("not text".into());
    };
    let shown: String = text.chars().take(SHOWN).collect();
    let cidr = Cidr::parse_exact(text).map_err(|error| match error {
        model::CidrError::HostBits { .. } => error.to_string(),
        _ => format!("{shown:?} is not an address or prefix"),
    })?;
    let widest = if cidr.addr().is_ipv4() {
        WIDEST_IPV4
    } else {
        WIDEST_IPV6
    };
    if cidr.len() < widest {
        return Err(format!(
            "{cidr} is wider than /{widest}: a provider and its customers, not a blocklist entry"
        ));
    }
    Ok(cidr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(texts: &[&str]) -> Vec<Cidr> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn spamhaus_firehol_and_bare_addresses_parse() {
        let text = b"; Spamhaus DROP List 2026/12/05 - (c) 2026 The Spamhaus Project\n\
            ; Last-Modified: Sat, 05 Dec 2026 12:00:00 GMT\n\
            198.18.0.0/20 ; SBL256894\n\
            \n\
            # FireHOL level 1\n\
            198.19.0.0/16\n\
            \t2001:db8::/32   # a comment\r\n\
            198.18.200.7\n\
            198.19.0.0/16\n";
        let parsed = parse(text, 100).unwrap();
        assert_eq!(
            parsed.entries,
            cidrs(&[
                "198.18.0.0/20",
                "198.18.200.7/32",
                "198.19.0.0/16",
                "2001:db8::/32"
            ])
        );
        assert_eq!(parsed.bad_count, 0);
    }

    #[test]
    fn bad_lines_are_counted_named_and_never_stop_the_rest() {
        let text = b"198.18.0.0/24\nnot-an-ip\n198.18.1.7/24\n0.0.0.0/0\n\xff\xfe\n198.18.2.0/24\n";
        let parsed = parse(text, 100).unwrap();
        assert_eq!(parsed.entries, cidrs(&["198.18.0.0/24", "198.18.2.0/24"]));
        assert_eq!(parsed.bad_count, 4);
        let lines: Vec<usize> = parsed.bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, [2, 3, 4, 5]);
        assert_eq!(
            parsed.bad[0].reason,
            "\"not-an-ip\" is not an address or prefix"
        );
        assert!(
            parsed.bad[1].reason.contains("has host bits set"),
            "{:?}",
            parsed.bad[1]
        );
        assert!(
            parsed.bad[2].reason.contains("wider than /8"),
            "{:?}",
            parsed.bad[2]
        );
        assert_eq!(parsed.bad[3].reason, "not text");
    }

    #[test]
    fn a_feed_over_its_bound_is_refused_whole() {
        let text = b"198.18.0.1\n198.18.0.2\n198.18.0.3\n";
        assert_eq!(parse(text, 2), Err(TooMany { max: 2 }));
        assert_eq!(parse(text, 3).unwrap().entries.len(), 3);
        assert_eq!(parse(b"", 3).unwrap(), Parsed::default());
    }

    proptest::proptest! {
        /// Any bytes: no panic, entries sorted and unique, counts bounded.
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            if let Ok(parsed) = parse(&bytes, 64) {
                proptest::prop_assert!(parsed.entries.windows(2).all(|w| w[0] < w[1]));
                proptest::prop_assert!(parsed.bad.len() <= BAD_LINES_KEPT.min(parsed.bad_count));
            }
        }
    }
}
