//! The request mix: which endpoint each request goes to, by weight.

use std::{fmt, str::FromStr};

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The endpoints a user exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Endpoint {
    #[serde(rename = "GET /data/{id}")]
    GetById,
    #[serde(rename = "GET /data")]
    List,
    #[serde(rename = "POST /data")]
    Post,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [Endpoint::GetById, Endpoint::List, Endpoint::Post];

    pub fn label(self) -> &'static str {
        match self {
            Endpoint::GetById => "GET /data/{id}",
            Endpoint::List => "GET /data",
            Endpoint::Post => "POST /data",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Weights, for example `get=80,list=10,post=10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 3],
}

impl Mix {
    pub fn weight(&self, endpoint: Endpoint) -> u32 {
        self.weights[endpoint.index()]
    }

    pub fn pick(&self, rng: &mut impl Rng) -> Endpoint {
        let total: u32 = self.weights.iter().sum();
        let mut roll = rng.random_range(0..total);
        for endpoint in Endpoint::ALL {
            let weight = self.weight(endpoint);
            if roll < weight {
                return endpoint;
            }
            roll -= weight;
        }
        unreachable!("the roll is below the total")
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut weights = [0u32; 3];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not NAME=WEIGHT"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("the weight of `{name}` is not a whole number"))?;
            let endpoint = match name.trim() {
                "get" => Endpoint::GetById,
                "list" => Endpoint::List,
                "post" => Endpoint::Post,
                other => return Err(format!("unknown endpoint `{other}` (use get, list, post)")),
            };
            weights[endpoint.index()] = weight;
        }
        if weights.iter().sum::<u32>() == 0 {
            return Err("at least one weight must be above zero".into());
        }
        Ok(Self { weights })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "get={},list={},post={}",
            self.weights[0], self.weights[1], self.weights[2]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_print() {
        let mix: Mix = "get=80,list=10,post=10".parse().unwrap();
        assert_eq!(mix.weight(Endpoint::GetById), 80);
        assert_eq!(mix.to_string(), "get=80,list=10,post=10");
        let only_posts: Mix = "post=1".parse().unwrap();
        assert_eq!(only_posts.weight(Endpoint::GetById), 0);
        assert!("get=0".parse::<Mix>().is_err());
        assert!("put=3".parse::<Mix>().is_err());
        assert!("get=x".parse::<Mix>().is_err());
        assert!("get".parse::<Mix>().is_err());
    }

    #[test]
    fn picks_follow_the_weights() {
        let mix: Mix = "get=80,list=10,post=10".parse().unwrap();
        let mut rng = rand::rng();
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[mix.pick(&mut rng).index()] += 1;
        }
        assert!((77_000..83_000).contains(&counts[0]), "{counts:?}");
        assert!((8_500..11_500).contains(&counts[1]), "{counts:?}");
        let only: Mix = "list=5".parse().unwrap();
        assert!((0..1000).all(|_| only.pick(&mut rng) == Endpoint::List));
    }
}
