//! Small worlds for fast tests.
#![allow(dead_code)]

use data::corpus::{generate_corpus, CorpusConfig, Document};
use data::world::{generate, World, WorldConfig};
use data::world_dir::WorldSpec;

/// A world small enough for debug-mode tests.
pub fn small_config() -> WorldConfig {
    WorldConfig { diseases: 40, drugs: 80, symptoms: 60, lab_tests: 20, pathogens: 10, drug_classes: 24 }
}

pub fn small_world(seed: u64) -> World {
    generate(seed, &small_config()).unwrap()
}

pub fn small_corpus(world: &World, seed: u64, tokens: u64) -> Vec<Document> {
    let config = CorpusConfig { tokens, ..Default::default() };
    generate_corpus(world, seed, &config, &mut |_| {}).unwrap()
}

pub fn small_spec(seed: u64, tokens: u64) -> WorldSpec {
    let mut spec = WorldSpec { seed, world: small_config(), ..Default::default() };
    spec.corpus.tokens = tokens;
    spec.eval.fact_recall = 120;
    spec.eval.two_hop = 40;
    spec.eval.general = 60;
    spec
}
