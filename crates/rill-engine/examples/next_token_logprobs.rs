//! Debug tool: top-5 next-token log-probs after a prompt given as a JSON list of token ids, to
//! compare with llama-server's `n_probs` output on the same ids:
//! `cargo run -p rill-engine --example next_token_logprobs -- "[1,198]" MODEL.gguf [scalar|avx2|avx512]`
#![allow(clippy::unwrap_used)] // debug tool: a panic is the failure report
use rill_engine::*;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let prompt: Vec<u32> = serde_json::from_str(&args[1]).unwrap();
    let mut e = Engine::load(
        std::path::Path::new(&args[2]),
        &EngineConfig {
            threads: 1,
            kv_tokens: 4096,
            kv_bytes: 0,
            kernels: args.get(3).cloned(),
        },
    )
    .unwrap();
    e.add_sequence(SeqId(1)).unwrap();
    let logits = if std::env::var("SEQ").is_ok() {
        let mut l = vec![];
        for t in &prompt {
            l = e
                .step(&[StepItem {
                    seq: SeqId(1),
                    tokens: &[*t],
                    want_logits: true,
                }])
                .unwrap()
                .row(0)
                .to_vec();
        }
        l
    } else {
        e.step(&[StepItem {
            seq: SeqId(1),
            tokens: &prompt,
            want_logits: true,
        }])
        .unwrap()
        .row(0)
        .to_vec()
    };
    let (_, top) = sampler::log_probs(&logits, 0, 5);
    println!(
        "{:?}",
        top.iter()
            .map(|(t, l)| (*t, (l * 1000.0).round() / 1000.0))
            .collect::<Vec<_>>()
    );
}
