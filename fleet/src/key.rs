//! One key per prefix. NATS keys allow `[-/_=.a-zA-Z0-9]`, so an IPv4 CIDR
//! is its own key (`198.18.0.0/15`) and an IPv6 one writes `:` as `_`
//! (`2001_db8__/64`): readable in `nats kv ls`, and reversible.

use model::Cidr;

/// Longest key we produce or accept (a full IPv6 CIDR is 43 bytes).
pub const MAX_KEY_LEN: usize = 64;

pub fn key_of(prefix: &Cidr) -> String {
    prefix.to_string().replace(':', "_")
}

/// The prefix a key names; `None` for a key that is not one of ours.
pub fn prefix_of(key: &str) -> Option<Cidr> {
    if key.len() > MAX_KEY_LEN || key.contains(':') {
        return None;
    }
    let prefix: Cidr = key.replace('_', ":").parse().ok()?;
    // Only the canonical spelling: one prefix, one key.
    (key_of(&prefix) == key).then_some(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_are_readable_and_key_safe() {
        let v4: Cidr = "198.18.0.0/15".parse().unwrap();
        assert_eq!(key_of(&v4), "198.18.0.0/15");
        let v6: Cidr = "2001:db8::/64".parse().unwrap();
        assert_eq!(key_of(&v6), "2001_db8__/64");
        assert_eq!(prefix_of("2001_db8__/64"), Some(v6));
        assert_eq!(prefix_of("198.18.0.0/15"), Some(v4));
        for foreign in ["", "x", "198.18.0.1/15", "2001:db8::/64", "1.2.3.4/33"] {
            assert_eq!(prefix_of(foreign), None, "{foreign:?}");
        }
    }

    proptest! {
        #[test]
        fn every_prefix_round_trips(v4: [u8; 4], v6: [u8; 16], len4 in 0u8..=32, len6 in 0u8..=128) {
            for (addr, len) in [
                (std::net::IpAddr::from(v4), len4),
                (std::net::IpAddr::from(v6), len6),
            ] {
                let prefix = Cidr::new(addr, len).unwrap();
                let key = key_of(&prefix);
                prop_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)));
                prop_assert!(!key.starts_with('.') && !key.ends_with('.'));
                prop_assert_eq!(prefix_of(&key), Some(prefix));
            }
        }
    }
}
