//! The value types of the settings that are more than a number or a
//! path: durations written the human way, port lists the environment gives
//! as one number, and the settings with a fixed set of values (modes).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A list of ports, or one port alone: what the environment gives for a
/// one-item list (`PENALTYBOX_KERNEL__TRAP_PORTS=23` reads as a number).
pub(super) fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    numbers(
        d,
        "expected a port or a list of ports, e.g. [23, 3389]",
        |n| {
            u16::try_from(n)
                .ok()
                .filter(|port| *port > 0)
                .ok_or("is not a port (1..=65535)")
        },
    )
}

/// A list of prefix lengths, or one alone (`bans.widen.ipv6`; range
/// checked with the rest of the settings).
pub(super) fn prefix_lengths<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    numbers(
        d,
        "expected a prefix length or a list of them, e.g. [56, 48]",
        |n| {
            u8::try_from(n)
                .ok()
                .filter(|len| *len <= 128)
                .ok_or("is not a prefix length (0..=128)")
        },
    )
}

/// A list of numbers, or one alone, each made a `T` by `convert` (which
/// says what is wrong with one that is not).
fn numbers<'de, D, T>(
    d: D,
    expected: &str,
    convert: impl Fn(i64) -> Result<T, &'static str>,
) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    // The environment's list items arrive as text, the file's as numbers.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Number(i64),
        Text(String),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Number),
        Many(Vec<Number>),
    }
    let items = match OneOrMany::deserialize(d).map_err(|_| serde::de::Error::custom(expected))? {
        OneOrMany::One(item) => vec![item],
        OneOrMany::Many(items) => items,
    };
    items
        .into_iter()
        .map(|item| {
            let (text, number) = match item {
                Number::Number(n) => (n.to_string(), Some(n)),
                Number::Text(t) => (t.clone(), t.trim().parse::<i64>().ok()),
            };
            let why = "is not a number";
            number
                .ok_or(why)
                .and_then(&convert)
                .map_err(|why| serde::de::Error::custom(format!("{text} {why}")))
        })
        .collect()
}

/// A duration written the human way ("100ms", "15m", "24h").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write e.g. 100ms, 30s, 15m, 24h"
            ))
        })
    }
}

/// A setting with a fixed set of values (`bans.mode`, `kernel.drop_scope`,
/// `kernel.xdp_mode`). It is read as text so that a value outside the set
/// does not stop the whole read: [`Settings::problems`](super::Settings::problems)
/// names it beside every other problem (`config check` lists them all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice<T> {
    Known(T),
    Unknown(String),
}

/// The values of a [`Choice`] and their names in the settings.
pub trait Named: Copy + Default + PartialEq + 'static {
    const NAMES: &'static [(Self, &'static str)];

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(value, _)| *value == self)
            .map_or("", |(_, name)| name)
    }
}

impl<T: Named> Choice<T> {
    /// The value (settings that passed their check hold a known one; an
    /// unknown one reads as the default).
    pub fn get(&self) -> T {
        match self {
            Choice::Known(value) => *value,
            Choice::Unknown(_) => T::default(),
        }
    }

    /// "`key`: "x" is neither "a" nor "b"", for a value outside the set.
    pub fn problem(&self, key: &str) -> Option<String> {
        let Choice::Unknown(text) = self else {
            return None;
        };
        let names: Vec<String> = T::NAMES.iter().map(|(_, n)| format!("{n:?}")).collect();
        Some(match names.as_slice() {
            [a, b] => format!("{key}: {text:?} is neither {a} nor {b}"),
            _ => format!("{key}: {text:?} is none of {}", names.join(", ")),
        })
    }
}

impl<T: Named> Default for Choice<T> {
    fn default() -> Self {
        Choice::Known(T::default())
    }
}

impl<T: Named> From<T> for Choice<T> {
    fn from(value: T) -> Self {
        Choice::Known(value)
    }
}

impl<T: Named> Serialize for Choice<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Choice::Known(value) => s.serialize_str(value.name()),
            Choice::Unknown(text) => s.serialize_str(text),
        }
    }
}

impl<'de, T: Named> Deserialize<'de> for Choice<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(T::NAMES
            .iter()
            .find(|(_, name)| *name == text)
            .map_or(Choice::Unknown(text), |(value, _)| Choice::Known(*value)))
    }
}

/// `bans.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BanMode {
    #[default]
    Enforce,
    /// Decide, log and count every time-out; enforce none.
    Monitor,
}

impl Named for BanMode {
    const NAMES: &'static [(Self, &'static str)] =
        &[(BanMode::Enforce, "enforce"), (BanMode::Monitor, "monitor")];
}

/// `kernel.drop_scope`: what a time-out drops in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DropScope {
    /// TCP to the listen ports only (an admin behind the source's NAT
    /// keeps SSH).
    #[default]
    Service,
    /// Every packet of the source.
    All,
}

impl Named for DropScope {
    const NAMES: &'static [(Self, &'static str)] =
        &[(DropScope::Service, "service"), (DropScope::All, "all")];
}

/// `storage.on_damage`: what a start does with a damaged database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnDamage {
    /// Move aside what sled rebuilds without, else salvage what reads into
    /// a fresh database; keep the damaged files; serve.
    #[default]
    Repair,
    /// Refuse to start: a person decides.
    Refuse,
}

impl Named for OnDamage {
    const NAMES: &'static [(Self, &'static str)] =
        &[(OnDamage::Repair, "repair"), (OnDamage::Refuse, "refuse")];
}

impl From<OnDamage> for storage::OnDamage {
    fn from(value: OnDamage) -> Self {
        match value {
            OnDamage::Repair => storage::OnDamage::Repair,
            OnDamage::Refuse => storage::OnDamage::Refuse,
        }
    }
}

/// `kernel.xdp_mode` and `xdp attach --mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// Driver mode where the driver has it, else generic.
    #[default]
    Auto,
    /// Native XDP in the driver (fastest; not every driver has it).
    Driver,
    /// Generic XDP in the network stack (works everywhere).
    Skb,
}

impl Named for XdpMode {
    const NAMES: &'static [(Self, &'static str)] = &[
        (XdpMode::Auto, "auto"),
        (XdpMode::Driver, "driver"),
        (XdpMode::Skb, "skb"),
    ];
}

impl From<XdpMode> for xdp::AttachMode {
    fn from(mode: XdpMode) -> Self {
        match mode {
            XdpMode::Auto => xdp::AttachMode::Auto,
            XdpMode::Driver => xdp::AttachMode::Driver,
            XdpMode::Skb => xdp::AttachMode::Skb,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_read_any_text_and_name_what_they_do_not_know() {
        let mode: Choice<BanMode> = toml::Value::String("monitor".into()).try_into().unwrap();
        assert_eq!(mode.get(), BanMode::Monitor);
        let bad: Choice<DropScope> = toml::Value::String("everything".into()).try_into().unwrap();
        assert_eq!(
            bad.problem("kernel.drop_scope").unwrap(),
            "kernel.drop_scope: \"everything\" is neither \"service\" nor \"all\""
        );
        let bad: Choice<XdpMode> = toml::Value::String("fast".into()).try_into().unwrap();
        assert_eq!(
            bad.problem("kernel.xdp_mode").unwrap(),
            "kernel.xdp_mode: \"fast\" is none of \"auto\", \"driver\", \"skb\""
        );
        assert_eq!(
            toml::Value::try_from(Choice::Known(XdpMode::Skb)).unwrap(),
            toml::Value::String("skb".into())
        );
    }
}
