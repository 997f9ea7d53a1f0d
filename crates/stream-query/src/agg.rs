//! Aggregate accumulators. Nulls are ignored by every aggregate except COUNT(*).
//!
//! STDEV/VAR are the sample statistics (null for fewer than 2 values), STDEVP/VARP the
//! population ones; AVG, STDEV* and VAR* give floats, SUM of whole numbers stays a whole number,
//! COUNT gives a whole number (0 for a group whose values are all null), other aggregates give
//! null when they saw no non-null value. TopOne() gives the whole first event in ORDER BY order
//! (ties: the earliest event); Percentile_Cont interpolates linearly between ranks.

use crate::error::EventError;
use crate::eval::{eval, show, Ctx};
use crate::plan::{AggFunc, AggSpec};
use crate::value::{order, Val};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeSet;

/// One event's contribution to one aggregate, evaluated when the event is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AggIn {
    pub v: Val,
    pub order: Vec<Val>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Acc {
    Count(i64),
    Distinct(BTreeSet<String>),
    Sum {
        int: Option<i64>,
        #[serde(with = "any_f64")]
        float: f64,
        n: u64,
    },
    Avg {
        #[serde(with = "any_f64")]
        sum: f64,
        n: u64,
    },
    Extreme(Option<Val>),
    Moments {
        n: u64,
        #[serde(with = "any_f64")]
        mean: f64,
        #[serde(with = "any_f64")]
        m2: f64,
    },
    Top(Option<(Vec<Val>, Val)>),
    Values(Vec<f64>),
    /// Collect (all values, in event order) and CollectTop (the best n by ORDER BY, ties in
    /// event order).
    Items(Vec<(Vec<Val>, Val)>),
}

/// f64 in checkpoints: sums can overflow to infinity, which JSON numbers cannot carry, so
/// non-finite values are written as the strings "inf", "-inf" and "nan".
mod any_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("nan")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum F {
        N(f64),
        S(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match F::deserialize(d)? {
            F::N(f) => Ok(f),
            F::S(s) => match s.as_str() {
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "nan" => Ok(f64::NAN),
                other => Err(serde::de::Error::custom(format!("not a number: {other}"))),
            },
        }
    }
}

fn numeric(f: AggFunc) -> bool {
    matches!(
        f,
        AggFunc::Avg
            | AggFunc::Sum
            | AggFunc::Stdev
            | AggFunc::Stdevp
            | AggFunc::Var
            | AggFunc::Varp
    )
}

/// Evaluate the aggregates' arguments for one event, checking types.
pub(crate) fn prepare(specs: &[AggSpec], c: &Ctx) -> Result<Vec<AggIn>, EventError> {
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        let wrong = |m: String| EventError::WrongType {
            expression: s.text.clone(),
            message: m,
        };
        let v = match (&s.arg, s.func) {
            (_, AggFunc::TopOne) | (None, AggFunc::Collect | AggFunc::CollectTop) => {
                Val::Record(c.row.clone())
            }
            (Some(a), _) => eval(a, c).map_err(wrong)?,
            (None, _) => Val::Null,
        };
        if numeric(s.func) && !v.is_null() && v.as_f64().is_none() {
            return Err(wrong(format!(
                "{} needs numbers, but {} is {}",
                s.text,
                s.arg.as_ref().map(show).unwrap_or_default(),
                v.describe()
            )));
        }
        let mut ord = Vec::with_capacity(s.order.len());
        for o in &s.order {
            ord.push(eval(&o.expr, c).map_err(wrong)?);
        }
        if matches!(s.func, AggFunc::PercentileCont | AggFunc::PercentileDisc) {
            if let Some(x) = ord.first() {
                if !x.is_null() && x.as_f64().is_none() {
                    return Err(wrong(format!(
                        "{} orders by numbers, got {}",
                        s.text,
                        x.describe()
                    )));
                }
            }
        }
        out.push(AggIn { v, order: ord });
    }
    Ok(out)
}

/// Overflowed results become null: JSON has no infinity.
fn finite(f: f64) -> Val {
    if f.is_finite() {
        Val::Float(f)
    } else {
        Val::Null
    }
}

fn cmp_order(a: &[Val], b: &[Val], spec: &AggSpec) -> Ordering {
    for ((x, y), o) in a.iter().zip(b.iter()).zip(spec.order.iter()) {
        let c = order(x, y);
        let c = if o.desc { c.reverse() } else { c };
        if c != Ordering::Equal {
            return c;
        }
    }
    Ordering::Equal
}

impl Acc {
    pub(crate) fn new(f: AggFunc) -> Acc {
        match f {
            AggFunc::Count | AggFunc::CountStar => Acc::Count(0),
            AggFunc::CountDistinct => Acc::Distinct(BTreeSet::new()),
            AggFunc::Sum => Acc::Sum {
                int: Some(0),
                float: 0.0,
                n: 0,
            },
            AggFunc::Avg => Acc::Avg { sum: 0.0, n: 0 },
            AggFunc::Min | AggFunc::Max => Acc::Extreme(None),
            AggFunc::Stdev | AggFunc::Stdevp | AggFunc::Var | AggFunc::Varp => Acc::Moments {
                n: 0,
                mean: 0.0,
                m2: 0.0,
            },
            AggFunc::TopOne => Acc::Top(None),
            AggFunc::PercentileCont | AggFunc::PercentileDisc => Acc::Values(Vec::new()),
            AggFunc::Collect | AggFunc::CollectTop => Acc::Items(Vec::new()),
        }
    }

    pub(crate) fn add(&mut self, x: &AggIn, spec: &AggSpec) {
        if spec.func == AggFunc::CountStar {
            if let Acc::Count(n) = self {
                *n += 1;
            }
            return;
        }
        if x.v.is_null()
            && !matches!(
                spec.func,
                AggFunc::TopOne
                    | AggFunc::PercentileCont
                    | AggFunc::PercentileDisc
                    | AggFunc::Collect
                    | AggFunc::CollectTop
            )
        {
            return;
        }
        match self {
            Acc::Count(n) => *n += 1,
            Acc::Distinct(s) => {
                s.insert(x.v.key());
            }
            Acc::Sum { int, float, n } => {
                *n += 1;
                let f = x.v.as_f64().unwrap_or(0.0);
                *float += f;
                *int = match (*int, &x.v) {
                    (Some(a), Val::Int(b)) => a.checked_add(*b),
                    _ => None,
                };
            }
            Acc::Avg { sum, n } => {
                *sum += x.v.as_f64().unwrap_or(0.0);
                *n += 1;
            }
            Acc::Extreme(cur) => {
                let better = match cur {
                    None => true,
                    Some(c) => {
                        let o = order(&x.v, c);
                        if spec.func == AggFunc::Min {
                            o == Ordering::Less
                        } else {
                            o == Ordering::Greater
                        }
                    }
                };
                if better {
                    *cur = Some(x.v.clone());
                }
            }
            Acc::Moments { n, mean, m2 } => {
                // Welford's online algorithm: numerically stable in one pass
                let v = x.v.as_f64().unwrap_or(0.0);
                *n += 1;
                let d = v - *mean;
                *mean += d / *n as f64;
                *m2 += d * (v - *mean);
            }
            Acc::Top(cur) => {
                let better = match cur {
                    None => true,
                    Some((k, _)) => cmp_order(&x.order, k, spec) == Ordering::Less,
                };
                if better {
                    *cur = Some((x.order.clone(), x.v.clone()));
                }
            }
            Acc::Values(v) => {
                if let Some(f) = x.order.first().and_then(Val::as_f64) {
                    v.push(f);
                }
            }
            Acc::Items(items) => {
                if spec.func == AggFunc::Collect {
                    items.push((Vec::new(), x.v.clone()));
                    return;
                }
                // keep the best `top` sorted; a tie goes after the earlier events
                let at = items
                    .partition_point(|(k, _)| cmp_order(k, &x.order, spec) != Ordering::Greater);
                if at < spec.top {
                    items.insert(at, (x.order.clone(), x.v.clone()));
                    items.truncate(spec.top);
                }
            }
        }
    }

    pub(crate) fn result(&self, spec: &AggSpec) -> Val {
        match self {
            Acc::Count(n) => Val::Int(*n),
            Acc::Distinct(s) => Val::Int(s.len() as i64),
            Acc::Sum { int, float, n } => {
                if *n == 0 {
                    Val::Null
                } else {
                    match int {
                        Some(i) => Val::Int(*i),
                        None => finite(*float),
                    }
                }
            }
            Acc::Avg { sum, n } => {
                if *n == 0 {
                    Val::Null
                } else {
                    finite(sum / *n as f64)
                }
            }
            Acc::Extreme(v) => v.clone().unwrap_or(Val::Null),
            Acc::Moments { n, m2, .. } => {
                let n = *n as f64;
                let var = match spec.func {
                    AggFunc::Stdev | AggFunc::Var => {
                        if n < 2.0 {
                            return Val::Null;
                        }
                        m2 / (n - 1.0)
                    }
                    _ => {
                        if n < 1.0 {
                            return Val::Null;
                        }
                        m2 / n
                    }
                };
                let var = var.max(0.0);
                match spec.func {
                    AggFunc::Stdev | AggFunc::Stdevp => finite(var.sqrt()),
                    _ => finite(var),
                }
            }
            Acc::Top(v) => v.as_ref().map(|x| x.1.clone()).unwrap_or(Val::Null),
            Acc::Items(items) => Val::Array(if spec.func == AggFunc::Collect {
                items.iter().map(|(_, v)| v.to_json()).collect()
            } else {
                items
                    .iter()
                    .enumerate()
                    .map(|(i, (_, v))| serde_json::json!({"rank": i + 1, "value": v.to_json()}))
                    .collect()
            }),
            Acc::Values(v) => {
                if v.is_empty() {
                    return Val::Null;
                }
                let mut s = v.clone();
                s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
                if spec.order.first().is_some_and(|o| o.desc) {
                    s.reverse();
                }
                if spec.func == AggFunc::PercentileDisc {
                    // the first value whose cumulative distribution reaches the fraction
                    let n = s.len();
                    let k = (spec.fraction * n as f64).ceil() as usize;
                    return finite(s[k.clamp(1, n) - 1]);
                }
                let rank = spec.fraction * (s.len() - 1) as f64;
                let lo = rank.floor() as usize;
                let hi = rank.ceil() as usize;
                let (a, b) = (s[lo.min(s.len() - 1)], s[hi.min(s.len() - 1)]);
                finite(a + (b - a) * (rank - lo as f64))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_sums_survive_a_checkpoint_and_give_null() {
        let acc = Acc::Avg {
            sum: f64::NEG_INFINITY,
            n: 2,
        };
        let text = serde_json::to_string(&acc).unwrap();
        let back: Acc = serde_json::from_str(&text).unwrap();
        assert_eq!(back, acc);
        let spec = AggSpec {
            func: AggFunc::Avg,
            arg: None,
            order: Vec::new(),
            fraction: 0.0,
            top: 0,
            text: String::new(),
        };
        assert_eq!(back.result(&spec), Val::Null);
    }
}
