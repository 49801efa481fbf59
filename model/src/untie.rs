//! Untying the LM head from the input embedding (start of phase p2): the head becomes its own
//! parameter `lm_head.weight`, a copy of the embedding, so the two can move apart from then on.

use crate::qwen3::Qwen3;

/// The model with an untied LM head: same outputs (the head starts as a copy of the embedding),
/// `tie_word_embeddings = false`, `lm_head.weight` stored like the embedding. An untied model
/// comes back unchanged.
pub fn untie_embeddings(model: &Qwen3) -> Qwen3 {
    if !model.config.tie_word_embeddings {
        return model.clone();
    }
    const EMBED: &str = "model.embed_tokens.weight";
    let mut config = model.config.clone();
    config.tie_word_embeddings = false;
    let flat = model.params.flat();
    let values = |name: &str| {
        let e = model
            .params
            .entry(if name == "lm_head.weight" { EMBED } else { name })
            .expect("every parameter of the layout exists");
        flat[e.offset..e.offset + e.numel()].to_vec()
    };
    let mut untied = Qwen3::from_init(config, model.moe.clone(), model.params.dtype(), |name, _| values(name));
    untied.router_bias = model.router_bias.clone();
    untied.file_dtypes = model.file_dtypes.clone();
    if let Some(d) = model.file_dtypes.iter().find(|(n, _)| n == EMBED).map(|(_, d)| *d) {
        untied.file_dtypes.push(("lm_head.weight".to_string(), d));
    }
    untied
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::TokenBatch;

    #[test]
    fn untied_model_has_the_same_logits_and_its_own_head() {
        let config = crate::presets::embedded("tiny-dense").unwrap().unwrap();
        assert!(config.tie_word_embeddings, "the tiny preset is tied");
        let tied = Qwen3::from_init(config, None, autograd::DType::F32, crate::init::qwen3_init(3, 0.02));
        let untied = untie_embeddings(&tied);
        assert!(!untied.config.tie_word_embeddings);
        assert_eq!(untied.num_params(), tied.num_params() + tied.config.vocab_size * tied.config.hidden_size);
        let head = untied.params.get("lm_head.weight").unwrap().to_vec();
        assert_eq!(head, untied.params.get("model.embed_tokens.weight").unwrap().to_vec());
        let batch = TokenBatch::new((0..24).map(|i| (i * 37 % 500) as u32).collect(), 2, 12).unwrap();
        assert_eq!(tied.logits(&batch).unwrap(), untied.logits(&batch).unwrap());
        assert!(untied.config_json().contains("\"tie_word_embeddings\": false"));
    }
}
