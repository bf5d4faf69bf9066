//! Debug: prints rill's top-2 tokens and log-prob gap per position for a fixture, teacher-forced
//! on llama.cpp's tokens.
#![allow(clippy::unwrap_used)] // debug tool: a panic is the failure report
use rill_engine::*;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&args[1]).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let prompt = ids("prompt_tokens");
    let want = ids("greedy_tokens");
    let gaps: Vec<f64> = v["top1_top2_prob_gap"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let mut e = Engine::load(
        std::path::Path::new(&args[2]),
        &EngineConfig {
            threads: 1,
            kv_tokens: 4096,
            kernels: args.get(3).cloned(),
        },
    )
    .unwrap();
    e.add_sequence(SeqId(1)).unwrap();
    let mut logits = e
        .step(&[StepItem {
            seq: SeqId(1),
            tokens: &prompt,
            want_logits: true,
        }])
        .unwrap()
        .row(0)
        .to_vec();
    for (i, &w) in want.iter().enumerate().take(12) {
        let (_, top) = sampler::log_probs(&logits, w, 3);
        let lw = sampler::log_probs(&logits, w, 0).0;
        println!(
            "{i}: ref {w} (lp {lw:.3}) ref_gap {:.4} | rill top {:?} gap {:.4}",
            gaps[i],
            top.iter()
                .map(|(t, l)| (*t, (l * 1000.0).round() / 1000.0))
                .collect::<Vec<_>>(),
            top[0].1 - top[1].1
        );
        logits = e
            .step(&[StepItem {
                seq: SeqId(1),
                tokens: &[w],
                want_logits: true,
            }])
            .unwrap()
            .row(0)
            .to_vec();
    }
}
