//! A duration as written in config files: Go-style (`720h`, `90s`, `1h30m`)
//! or humantime (`30days`). Printed back in the largest whole unit so a
//! default round-trips unchanged.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl From<Duration> for ConfigDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl FromStr for ConfigDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty duration".into());
        }
        humantime::parse_duration(t)
            .map(ConfigDuration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); use forms like 720h, 90s, 1h30m"))
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() != 0 {
            return write!(f, "{}ms", d.as_millis());
        }
        let s = d.as_secs();
        if s == 0 {
            write!(f, "0s")
        } else if s.is_multiple_of(3600) {
            write!(f, "{}h", s / 3600)
        } else if s.is_multiple_of(60) {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = String::deserialize(de)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (text, secs, back) in [
            ("720h", 720 * 3600, "720h"),
            ("90s", 90, "90s"),
            ("2m", 120, "2m"),
            ("1h30m", 5400, "90m"),
            ("30days", 30 * 86400, "720h"),
        ] {
            let d: ConfigDuration = text.parse().unwrap();
            assert_eq!(d.0, Duration::from_secs(secs), "{text}");
            assert_eq!(d.to_string(), back);
        }
        assert!("".parse::<ConfigDuration>().is_err());
        assert!("ten".parse::<ConfigDuration>().is_err());
        assert!("-5h".parse::<ConfigDuration>().is_err());
    }
}
