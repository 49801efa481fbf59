//! Mixing the forms into a corpus of a given size, deterministically.

use super::form::{Ctx, Form};
use super::*;
use crate::chat::ChatTemplate;
use crate::error::{DataError, Result};
use crate::rng::sub_rng;
use crate::world::World;
use rand::seq::SliceRandom;
use std::collections::VecDeque;

/// Token estimate used for the budget before a tokenizer exists: one token per 4 bytes, which
/// is close to what the default 4096-entry BPE gives on this corpus (`data stats` on a pack
/// reports the exact count).
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

type Job = (&'static Form, usize);

/// An endless supply of jobs for one domain, refilled round by round.
struct Stream {
    domain: &'static str,
    share: f64,
    produced: u64,
    round: usize,
    jobs: VecDeque<Job>,
}

fn round_jobs(domain: &str, w: &World, round: usize) -> Vec<Job> {
    let mut jobs = Vec::new();
    match domain {
        DOMAIN_MEDICAL => {
            for d in 0..w.diseases.len() {
                jobs.push((&presentation::FORMS[(d + round) % presentation::FORMS.len()], d));
                jobs.push((&management::FORMS[(d * 3 + round) % management::FORMS.len()], d));
            }
            for x in 0..w.drugs.len() {
                jobs.push((&drugs::DRUG_FORMS[(x + round) % drugs::DRUG_FORMS.len()], x));
            }
            jobs.extend((0..w.drug_classes.len()).map(|c| (&drugs::CLASS_FORM, c)));
            jobs.extend((0..w.lab_tests.len()).map(|t| (&drugs::LAB_FORM, t)));
            jobs.extend((0..w.pathogens.len()).map(|p| (&drugs::PATHOGEN_FORM, p)));
        }
        DOMAIN_MEDICAL_CHAT => {
            let f = chat_forms::DISEASE_FORMS;
            jobs.extend((0..w.diseases.len()).map(|d| (&f[(d + round) % f.len()], d)));
            let f = chat_forms::DRUG_FORMS;
            jobs.extend((0..w.drugs.len()).map(|x| (&f[(x + round) % f.len()], x)));
        }
        _ => {
            let f = general::FORMS;
            jobs.extend((0..600).map(|j| (&f[j % f.len()], round * 600 + j)));
        }
    }
    jobs
}

/// Generates the corpus for `world`: same world, seed and config, same documents.
/// `progress(tokens_so_far)` is called after every document.
pub fn generate_corpus(
    world: &World,
    seed: u64,
    config: &CorpusConfig,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<Document>> {
    let known = [DOMAIN_MEDICAL, DOMAIN_MEDICAL_CHAT, DOMAIN_GENERAL];
    let mut streams = Vec::new();
    let total_share: f64 = config.shares.values().sum();
    for (name, &share) in &config.shares {
        let Some(domain) = known.iter().find(|k| **k == name) else {
            return Err(DataError::config("corpus shares", format!("unknown domain `{name}` (known: {known:?})")));
        };
        if !(share.is_finite() && share >= 0.0) {
            return Err(DataError::config("corpus shares", format!("share of `{name}` is {share}")));
        }
        if share > 0.0 {
            streams.push(Stream { domain, share: share / total_share, produced: 0, round: 0, jobs: VecDeque::new() });
        }
    }
    if streams.is_empty() {
        return Err(DataError::config("corpus shares", "no domain has a positive share"));
    }
    let chat = ChatTemplate::builtin();
    let mut ctx = Ctx { w: world, rng: sub_rng(seed, "corpus"), chat: &chat };
    let mut order_rng = sub_rng(seed, "corpus-order");
    let mut docs = Vec::new();
    let mut total = 0u64;
    while total < config.tokens {
        // The domain furthest behind its share goes next (ties: the first in name order).
        let s = (0..streams.len())
            .max_by(|&a, &b| {
                let deficit = |k: usize| streams[k].share * total as f64 - streams[k].produced as f64;
                deficit(a).total_cmp(&deficit(b)).then(b.cmp(&a))
            })
            .expect("at least one stream");
        let stream = &mut streams[s];
        if stream.jobs.is_empty() {
            let mut jobs = round_jobs(stream.domain, world, stream.round);
            jobs.shuffle(&mut order_rng);
            stream.jobs = jobs.into();
            stream.round += 1;
        }
        let (form, subject) = stream.jobs.pop_front().expect("refilled above");
        let r = (form.run)(&mut ctx, subject)?;
        let tokens = estimate_tokens(&r.text);
        stream.produced += tokens;
        total += tokens;
        docs.push(Document {
            id: format!("s{seed}-{:07}", docs.len()),
            domain: stream.domain.to_string(),
            topic: r.topic,
            form: form.name.to_string(),
            source: SOURCE.to_string(),
            license: LICENSE.to_string(),
            text: r.text,
            messages: r.messages,
        });
        progress(total);
    }
    Ok(docs)
}
