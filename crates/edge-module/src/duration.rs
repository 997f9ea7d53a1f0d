//! Typed durations for settings: a field is a [`std::time::Duration`] in Rust and keeps its unit in its
//! JSON name and number (`"tick_ms": 1000`, `"keep_alive_s": 30`, `"grace_s": 2.5`), so files, variables, flags and twins
//! read as before while the code never multiplies milliseconds by hand.
//!
//! ```
//! use std::time::Duration;
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct S {
//!     #[serde(with = "edge_module::duration::millis")]
//!     tick_ms: Duration,
//!     #[serde(with = "edge_module::duration::seconds")]
//!     grace_s: Duration,
//! }
//! let s: S = serde_json::from_str(r#"{"tick_ms": 250, "grace_s": 1.5}"#).unwrap();
//! assert_eq!(s.tick_ms, Duration::from_millis(250));
//! assert_eq!(s.grace_s, Duration::from_millis(1500));
//! assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"tick_ms":250,"grace_s":1.5}"#);
//! ```

/// A whole number of milliseconds.
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A whole number of seconds.
pub mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// A number of seconds, fractions allowed; negative, infinite and NaN values are refused.
pub mod seconds {
    use std::time::Duration;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(|_| {
            D::Error::custom(format!(
                "{v} is not a duration: give a number of seconds, 0 or more"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        #[serde(with = "super::millis")]
        a_ms: Duration,
        #[serde(with = "super::seconds")]
        b_s: Duration,
        #[serde(with = "super::secs", default)]
        c_s: Duration,
    }

    #[test]
    fn round_trip_and_refusals() {
        let s: S = serde_json::from_str(r#"{"a_ms": 5, "b_s": 2}"#).unwrap();
        assert_eq!(
            s,
            S {
                a_ms: Duration::from_millis(5),
                b_s: Duration::from_secs(2),
                c_s: Duration::ZERO,
            }
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json, serde_json::json!({"a_ms": 5, "b_s": 2.0, "c_s": 0}));
        let back: S = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        for bad in [
            r#"{"a_ms": -1, "b_s": 1}"#,
            r#"{"a_ms": 1.5, "b_s": 1}"#,
            r#"{"a_ms": 1, "b_s": -0.5}"#,
            r#"{"a_ms": 1, "b_s": "1s"}"#,
            r#"{"a_ms": 1, "b_s": 1, "c_s": 0.5}"#,
        ] {
            assert!(serde_json::from_str::<S>(bad).is_err(), "{bad}");
        }
        let e = serde_json::from_str::<S>(r#"{"a_ms": 1, "b_s": -3}"#).unwrap_err();
        assert!(e.to_string().contains("0 or more"), "{e}");
    }
}
