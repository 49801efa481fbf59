//! The serialisable memory of the breakers (saved in checkpoints; resume must be bit-exact).

use serde::{Deserialize, Serialize};

/// A streak: consecutive steps one layer has held a condition, and the least extreme value over them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Streak {
    /// Consecutive steps held (0: not holding).
    pub len: usize,
    /// Least extreme value seen during the run (min overflow, min top share, min under-used count).
    pub weakest: f32,
}

impl Streak {
    pub(super) fn observe(&mut self, value: Option<f32>) {
        match value {
            Some(v) if self.len == 0 => *self = Streak { len: 1, weakest: v },
            Some(v) => *self = Streak { len: self.len + 1, weakest: self.weakest.min(v) },
            None => *self = Streak::default(),
        }
    }
}

/// Noise switched on by the under-use breaker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseWindow {
    /// First step at which it is switched off.
    pub until: u64,
    /// Noise to restore.
    pub restore: f32,
}

/// Memory of the dev-PPL breaker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PplState {
    /// Previous eval's perplexity (`f64::MAX` stands for a non-finite one).
    #[serde(serialize_with = "exact::ser_opt", deserialize_with = "exact::de_opt")]
    pub last: Option<f64>,
    /// Consecutive rising evals since the last reset.
    pub rising: usize,
    /// Step of the LR halving being watched (rising again on as many evals rolls back).
    pub halved_at: Option<u64>,
    /// The evals of the current rising streak, oldest first (for the reason).
    #[serde(serialize_with = "exact::ser_vec", deserialize_with = "exact::de_vec")]
    pub streak: Vec<f64>,
}

/// f64 state as its shortest round-trip text: serde_json's default float parser may be one ulp off,
/// which would make a restored state compare differently (resume must be bit-exact). Plain JSON
/// numbers are accepted when reading.
mod exact {
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Num(f64),
    }

    fn parse<E: Error>(r: Repr) -> Result<f64, E> {
        match r {
            Repr::Text(s) => s.parse().map_err(|_| E::custom(format!("not a number: {s:?}"))),
            Repr::Num(v) => Ok(v),
        }
    }

    pub fn ser_opt<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        v.map(|x| format!("{x:?}")).serialize(s)
    }

    pub fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<Repr>::deserialize(d)?.map(parse).transpose()
    }

    pub fn ser_vec<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().serialize(s)
    }

    pub fn de_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Vec::<Repr>::deserialize(d)?.into_iter().map(parse).collect()
    }
}

/// Serialisable memory of all breakers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BreakerState {
    /// Overflow run per layer.
    pub overflow: Vec<Streak>,
    /// Collapse run per layer.
    pub collapse: Vec<Streak>,
    /// Under-use run per layer.
    pub underuse: Vec<Streak>,
    /// Step each breaker last fired at (overflow, collapse, underuse).
    pub last_fired: [Option<u64>; 3],
    /// Active noise window.
    pub noise: Option<NoiseWindow>,
    /// Dev-PPL memory.
    pub ppl: PplState,
}
