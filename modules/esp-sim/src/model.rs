//! Payload generation without IO: the seed's payload, the fleet's body-temperature model, time
//! formats and payload faults. Everything random comes from a per-device ChaCha stream derived
//! from the run's seed, and nothing here looks at the network, so a seeded run with a fixed
//! `start_time` produces the same bytes every time.

use chrono::{DateTime, Local, Timelike, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::settings::{Faults, Mode, TimeFormat};

/// Which fault, if any, a message carries (as written to the sent log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    MalformedJson,
    MissingField,
    MistypedField,
    OutOfRange,
    ClockSkew,
}

/// Random stream ids inside one device (ChaCha streams, so they never overlap).
const STREAM_MODEL: u64 = 0;
const STREAM_FAULTS: u64 = 1;
/// Used by the device task for connection chaos and reconnect jitter; never for payloads.
pub(crate) const STREAM_CHAOS: u64 = 2;

/// A device's random stream `stream` under run seed `seed`.
pub(crate) fn device_rng(seed: u64, device: u32, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream((u64::from(device) << 8) | stream);
    r
}

/// Format `t` as `timecreated`.
pub fn format_time(t: DateTime<Utc>, f: TimeFormat) -> String {
    match f {
        TimeFormat::Rfc3339 => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        TimeFormat::DotnetInvariant => t
            .with_timezone(&Local)
            .format("%m/%d/%Y %H:%M:%S")
            .to_string(),
        TimeFormat::DotnetEnUs => {
            let l = t.with_timezone(&Local);
            // `M/d/yyyy h:mm:ss tt`: no leading zeros on month, day and 12-hour clock hour.
            format!("{}", l.format("%-m/%-d/%Y %-I:%M:%S %p"))
        }
    }
}

/// One generated message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// 0-based sequence number of this device's message.
    pub seq: u64,
    pub payload: String,
    pub fault: Option<Fault>,
}

/// An ongoing fever episode.
#[derive(Debug, Clone)]
struct Episode {
    /// Seconds since the episode started (simulated).
    elapsed_s: f64,
    duration_s: f64,
    peak: f64,
}

/// One patient: their normal temperature, daily rhythm, and any fever.
#[derive(Debug, Clone)]
pub struct Patient {
    /// Mean normal temperature, C (36.4..=36.9).
    baseline: f64,
    /// Half the day's swing, C (0.15..=0.3); lowest near 04:00, highest near 16:00 (UTC hour).
    amplitude: f64,
    fever: Option<Episode>,
}

const RISE_S: f64 = 3600.0;
const FALL_S: f64 = 2.0 * 3600.0;

impl Patient {
    fn new(rng: &mut ChaCha8Rng) -> Patient {
        Patient {
            baseline: rng.gen_range(36.4..=36.9),
            amplitude: rng.gen_range(0.15..=0.3),
            fever: None,
        }
    }

    /// Normal temperature at `t` without noise or fever: within 36.1..=37.2.
    fn normal_at(&self, t: DateTime<Utc>) -> f64 {
        let hour =
            f64::from(t.hour()) + f64::from(t.minute()) / 60.0 + f64::from(t.second()) / 3600.0;
        // cos peaks at 16:00 and bottoms at 04:00.
        self.baseline + self.amplitude * (std::f64::consts::TAU * (hour - 16.0) / 24.0).cos()
    }

    /// Advance by `dt_s` simulated seconds and return the temperature at `t`, one decimal.
    fn step(
        &mut self,
        rng: &mut ChaCha8Rng,
        t: DateTime<Utc>,
        dt_s: f64,
        fever_per_day: f64,
    ) -> f64 {
        let normal = self.normal_at(t);
        // Always draw the same numbers so the stream does not depend on the fever state.
        let start_u: f64 = rng.gen();
        let peak: f64 = rng.gen_range(38.5..=40.0);
        let duration_s: f64 = rng.gen_range(6.0 * 3600.0..=48.0 * 3600.0);
        let noise = gaussian(rng) * 0.05;
        let mut fever_add = 0.0;
        match self.fever.as_mut() {
            Some(ep) => {
                ep.elapsed_s += dt_s;
                if ep.elapsed_s >= ep.duration_s {
                    self.fever = None;
                } else {
                    let e = ep.elapsed_s;
                    let env = if e < RISE_S {
                        e / RISE_S
                    } else if e > ep.duration_s - FALL_S {
                        ((ep.duration_s - e) / FALL_S).max(0.0)
                    } else {
                        1.0
                    };
                    fever_add = (ep.peak - normal).max(0.0) * env;
                }
            }
            None => {
                let p = 1.0 - (-fever_per_day * dt_s / 86_400.0).exp();
                if start_u < p {
                    self.fever = Some(Episode {
                        elapsed_s: 0.0,
                        duration_s: duration_s.max(FALL_S + RISE_S),
                        peak,
                    });
                }
            }
        }
        let v = if fever_add > 0.0 {
            normal + fever_add + noise
        } else {
            (normal + noise).clamp(36.1, 37.2)
        };
        (v * 10.0).round() / 10.0
    }

    /// Whether a fever episode is running.
    pub fn in_fever(&self) -> bool {
        self.fever.is_some()
    }
}

/// A standard normal deviate (Box-Muller; rand 0.8 has no normal distribution without rand_distr).
fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Generates one device's messages.
#[derive(Debug)]
pub struct Generator {
    mode: Mode,
    device_id: String,
    model_rng: ChaCha8Rng,
    fault_rng: ChaCha8Rng,
    patient: Patient,
    seq: u64,
}

impl Generator {
    pub fn new(mode: Mode, seed: u64, device: u32, device_id: String) -> Generator {
        let mut model_rng = device_rng(seed, device, STREAM_MODEL);
        let patient = Patient::new(&mut model_rng);
        Generator {
            mode,
            device_id,
            model_rng,
            fault_rng: device_rng(seed, device, STREAM_FAULTS),
            patient,
            seq: 0,
        }
    }

    pub fn patient(&self) -> &Patient {
        &self.patient
    }

    /// The next message, stamped `t` (simulated or wall clock), `dt_s` after the previous one.
    pub fn next(
        &mut self,
        t: DateTime<Utc>,
        dt_s: f64,
        time_format: TimeFormat,
        fever_per_day: f64,
        faults: &Faults,
    ) -> Message {
        let seq = self.seq;
        self.seq += 1;
        // The value: seed mode is the seed's `r.Next(35, 42)`; fleet is the patient model.
        let (temp_text, temp_num) = match self.mode {
            Mode::Seed => {
                let v: i64 = self.model_rng.gen_range(35..42);
                (v.to_string(), v as f64)
            }
            _ => {
                let v = self
                    .patient
                    .step(&mut self.model_rng, t, dt_s, fever_per_day);
                (format!("{v:.1}"), v)
            }
        };
        let _ = temp_num;
        // Draw the fault decision and its details every time (stable stream).
        let u: f64 = self.fault_rng.gen();
        let which: bool = self.fault_rng.gen();
        let cut: f64 = self.fault_rng.gen();
        let skew_s = self.fault_rng.gen_range(1.0..=faults.max_skew_s.max(1.0));
        let wild: f64 = if self.fault_rng.gen() {
            self.fault_rng.gen_range(-40.0..24.0)
        } else {
            self.fault_rng.gen_range(46.0..120.0)
        };
        let thresholds = [
            (faults.malformed_json, Fault::MalformedJson),
            (faults.missing_field, Fault::MissingField),
            (faults.mistyped_field, Fault::MistypedField),
            (faults.out_of_range, Fault::OutOfRange),
            (faults.clock_skew, Fault::ClockSkew),
        ];
        let mut acc = 0.0;
        let mut fault = None;
        for (rate, f) in thresholds {
            acc += rate;
            if u < acc {
                fault = Some(f);
                break;
            }
        }
        let stamp = if fault == Some(Fault::ClockSkew) {
            t - chrono::Duration::milliseconds((skew_s * 1000.0) as i64)
        } else {
            t
        };
        let time_text = format_time(stamp, time_format);
        let time_json = json_string(&time_text);
        let temp_text = match fault {
            Some(Fault::OutOfRange) => match self.mode {
                Mode::Seed => format!("{}", wild.round() as i64),
                _ => format!("{wild:.1}"),
            },
            _ => temp_text,
        };
        let payload = match (self.mode, fault) {
            (_, Some(Fault::MissingField)) => self.render(
                if which { None } else { Some(&temp_text) },
                if which { Some(&time_json) } else { None },
                seq,
            ),
            (_, Some(Fault::MistypedField)) => {
                if which {
                    self.render(Some(&json_string(&temp_text)), Some(&time_json), seq)
                } else {
                    self.render(Some(&temp_text), Some(&stamp.timestamp().to_string()), seq)
                }
            }
            _ => self.render(Some(&temp_text), Some(&time_json), seq),
        };
        let payload = if fault == Some(Fault::MalformedJson) {
            // Cut somewhere inside, never at the end, so the result is never valid JSON.
            let len = payload.len();
            let at =
                1 + ((cut * (len.saturating_sub(2)) as f64) as usize).min(len.saturating_sub(2));
            payload[..at].to_string()
        } else {
            payload
        };
        Message {
            seq,
            payload,
            fault,
        }
    }

    /// The JSON text. Seed mode copies the seed's spacing exactly: `{"temp":38, "timecreated":"..."}`.
    fn render(&self, temp: Option<&str>, time: Option<&str>, seq: u64) -> String {
        match self.mode {
            Mode::Seed => match (temp, time) {
                (Some(t), Some(c)) => format!("{{\"temp\":{t}, \"timecreated\":{c}}}"),
                (Some(t), None) => format!("{{\"temp\":{t}}}"),
                (None, Some(c)) => format!("{{\"timecreated\":{c}}}"),
                (None, None) => "{}".into(),
            },
            _ => {
                let mut s = format!("{{\"deviceId\":{}", json_string(&self.device_id));
                if let Some(t) = temp {
                    s.push_str(",\"temp\":");
                    s.push_str(t);
                }
                if let Some(c) = time {
                    s.push_str(",\"timecreated\":");
                    s.push_str(c);
                }
                s.push_str(&format!(",\"seq\":{seq}}}"));
                s
            }
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 8, 5, 3)
            .single()
            .unwrap_or_default()
    }

    #[test]
    fn time_formats() {
        let t = Utc
            .with_ymd_and_hms(2026, 3, 4, 15, 6, 7)
            .single()
            .unwrap_or_default();
        assert_eq!(
            format_time(t, TimeFormat::Rfc3339),
            "2026-03-04T15:06:07.000Z"
        );
        // Local-time formats: compare against the local rendering of the same instant.
        let l = t.with_timezone(&Local);
        let inv = format_time(t, TimeFormat::DotnetInvariant);
        assert_eq!(inv.len(), "03/04/2026 15:06:07".len());
        assert_eq!(inv, l.format("%m/%d/%Y %H:%M:%S").to_string());
        let us = format_time(t, TimeFormat::DotnetEnUs);
        assert!(us.ends_with(" PM") || us.ends_with(" AM"), "{us}");
        assert!(!us.starts_with('0'), "{us}");
    }

    #[test]
    fn seed_payload_shape() {
        let mut g = Generator::new(Mode::Seed, 7, 0, "esp-sim".into());
        let f = Faults::default();
        for _ in 0..200 {
            let m = g.next(t0(), 2.0, TimeFormat::Rfc3339, 0.0, &f);
            assert!(m.payload.starts_with("{\"temp\":"));
            assert!(m
                .payload
                .contains(", \"timecreated\":\"2026-11-24T08:05:03.000Z\"}"));
            let v: serde_json::Value = serde_json::from_str(&m.payload).unwrap_or_default();
            let temp = v["temp"].as_i64().unwrap_or(0);
            assert!((35..=41).contains(&temp), "{temp}");
        }
    }

    #[test]
    fn same_seed_same_messages_different_seed_different() {
        let f = Faults {
            clock_skew: 0.1,
            malformed_json: 0.1,
            ..Faults::default()
        };
        let run = |seed| {
            let mut g = Generator::new(Mode::Fleet, seed, 3, "d3".into());
            (0..500)
                .map(|k| {
                    g.next(
                        t0() + chrono::Duration::seconds(k * 2),
                        2.0,
                        TimeFormat::Rfc3339,
                        1.0,
                        &f,
                    )
                    .payload
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn normal_temperatures_stay_in_range_and_fevers_reach_38_5() {
        let f = Faults::default();
        let mut max_seen: f64 = 0.0;
        for dev in 0..20 {
            let mut g = Generator::new(Mode::Fleet, 11, dev, format!("d{dev}"));
            // two simulated days, one message every 60 s, 2 fevers a day on average
            for k in 0..2880 {
                let in_fever_before = g.patient().in_fever();
                let m = g.next(
                    t0() + chrono::Duration::seconds(k * 60),
                    60.0,
                    TimeFormat::Rfc3339,
                    2.0,
                    &f,
                );
                let v: serde_json::Value = serde_json::from_str(&m.payload).unwrap_or_default();
                let temp = v["temp"].as_f64().unwrap_or(0.0);
                if !in_fever_before && !g.patient().in_fever() {
                    assert!((36.1..=37.2).contains(&temp), "{temp}");
                }
                assert!((36.0..=40.5).contains(&temp), "{temp}");
                // one decimal
                let text = v["temp"].to_string();
                assert_eq!(text.split('.').nth(1).map(str::len), Some(1), "{text}");
                max_seen = max_seen.max(temp);
            }
        }
        assert!(max_seen >= 38.5, "no fever reached 38.5 C: {max_seen}");
    }

    #[test]
    fn each_fault_looks_like_its_name() {
        let cases = [
            (
                Faults {
                    malformed_json: 1.0,
                    ..Faults::default()
                },
                Fault::MalformedJson,
            ),
            (
                Faults {
                    missing_field: 1.0,
                    ..Faults::default()
                },
                Fault::MissingField,
            ),
            (
                Faults {
                    mistyped_field: 1.0,
                    ..Faults::default()
                },
                Fault::MistypedField,
            ),
            (
                Faults {
                    out_of_range: 1.0,
                    ..Faults::default()
                },
                Fault::OutOfRange,
            ),
            (
                Faults {
                    clock_skew: 1.0,
                    max_skew_s: 120.0,
                    ..Faults::default()
                },
                Fault::ClockSkew,
            ),
        ];
        for mode in [Mode::Seed, Mode::Fleet] {
            for (f, want) in &cases {
                let mut g = Generator::new(mode, 5, 0, "d0".into());
                for _ in 0..100 {
                    let m = g.next(t0(), 2.0, TimeFormat::Rfc3339, 0.0, f);
                    assert_eq!(m.fault, Some(*want));
                    let parsed = serde_json::from_str::<serde_json::Value>(&m.payload);
                    match want {
                        Fault::MalformedJson => assert!(parsed.is_err(), "{}", m.payload),
                        Fault::MissingField => {
                            let v = parsed.unwrap_or_default();
                            assert!(
                                v.get("temp").is_none() != v.get("timecreated").is_none(),
                                "{v}"
                            );
                        }
                        Fault::MistypedField => {
                            let v = parsed.unwrap_or_default();
                            assert!(v["temp"].is_string() || v["timecreated"].is_number(), "{v}");
                        }
                        Fault::OutOfRange => {
                            let t = parsed.unwrap_or_default()["temp"].as_f64().unwrap_or(37.0);
                            assert!(!(25.0..=45.0).contains(&t), "{t}");
                        }
                        Fault::ClockSkew => {
                            let v = parsed.unwrap_or_default();
                            let s = v["timecreated"].as_str().unwrap_or("").to_string();
                            let at = DateTime::parse_from_rfc3339(&s)
                                .map(|d| d.with_timezone(&Utc))
                                .unwrap_or(t0());
                            let late = (t0() - at).num_milliseconds();
                            assert!((1000..=120_000).contains(&late), "{late}");
                        }
                    }
                }
            }
        }
    }
}
