//! Constrained decoding on real vocabularies (the default model's, and Gemma 3's): random
//! walks through the masks (a seeded random choice among the allowed tokens, a harsher sampler
//! than any model) must end in text that matches the constraint; bad schemas, grammars and
//! regexes are typed errors; rollback restores masks bit for bit. `mask_time_per_token` prints
//! the cost of a mask (asserting nothing about it):
//! `cargo test -p rill-engine --test constraint -- --nocapture --test-threads=1 mask_time`.
#![allow(clippy::unwrap_used)] // test and debug code: a panic is the failure report

mod support;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rill_engine::gguf::GgufFile;
use rill_engine::{Constraint, ConstraintEnv, ConstraintError, ConstraintState, Tokenizer};
use serde_json::{json, Value};

/// A model's tokenizer and its constraint environment.
struct Vocab {
    tok: Arc<Tokenizer>,
    env: ConstraintEnv,
}

fn load(path: &std::path::Path) -> Vocab {
    let g = GgufFile::open(path).unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&g).unwrap());
    let t0 = Instant::now();
    let env = ConstraintEnv::new(Arc::clone(&tok)).unwrap();
    println!(
        "ConstraintEnv::new: {:.1} ms for {} tokens ({})",
        t0.elapsed().as_secs_f64() * 1e3,
        env.vocab_size(),
        path.display()
    );
    Vocab { tok, env }
}

/// The default model's (SmolLM2: byte-level BPE, 49k tokens).
fn smollm() -> &'static Vocab {
    static V: OnceLock<Vocab> = OnceLock::new();
    V.get_or_init(|| load(&support::model_path()))
}

/// Gemma 3's (SentencePiece with byte fallback, 262k tokens).
fn gemma() -> &'static Vocab {
    static V: OnceLock<Vocab> = OnceLock::new();
    V.get_or_init(|| {
        let spec = rill_store::ModelSpec::by_name("gemma3-270m").unwrap();
        load(&rill_store::ensure_model(spec, rill_store::Progress::Quiet).unwrap())
    })
}

fn env() -> &'static ConstraintEnv {
    &smollm().env
}

fn tokenizer() -> Arc<Tokenizer> {
    Arc::clone(&smollm().tok)
}

/// Object with a string, a bounded integer, an enum and an array of strings.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "color": {"enum": ["red", "green", "blue"]},
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 12},
                "minItems": 1,
                "maxItems": 3
            }
        },
        "required": ["name", "age", "color", "tags"],
        "additionalProperties": false
    })
}

/// The JSON Schema subset `person_schema` uses; `Err` names the first violation.
fn validate(v: &Value, s: &Value, path: &str) -> Result<(), String> {
    let fail = |m: String| Err(format!("{path}: {m} (value {v})"));
    if let Some(options) = s.get("enum").and_then(Value::as_array) {
        if !options.contains(v) {
            return fail("not in enum".into());
        }
    }
    match s.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(o) = v.as_object() else {
                return fail("not an object".into());
            };
            let props = s["properties"].as_object().unwrap();
            for r in s["required"].as_array().into_iter().flatten() {
                if !o.contains_key(r.as_str().unwrap()) {
                    return fail(format!("missing required {r}"));
                }
            }
            for (k, x) in o {
                match props.get(k) {
                    Some(ps) => validate(x, ps, &format!("{path}.{k}"))?,
                    None if s["additionalProperties"] == json!(false) => {
                        return fail(format!("additional property {k}"))
                    }
                    None => {}
                }
            }
        }
        Some("string") => {
            let Some(t) = v.as_str() else {
                return fail("not a string".into());
            };
            let n = t.chars().count() as u64;
            if s.get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
            {
                return fail("shorter than minLength".into());
            }
            if s.get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
            {
                return fail("longer than maxLength".into());
            }
        }
        Some("integer") => {
            let Some(i) = v.as_i64() else {
                return fail("not an integer".into());
            };
            if s.get("minimum")
                .and_then(Value::as_i64)
                .is_some_and(|m| i < m)
            {
                return fail("below minimum".into());
            }
            if s.get("maximum")
                .and_then(Value::as_i64)
                .is_some_and(|m| i > m)
            {
                return fail("above maximum".into());
            }
        }
        Some("array") => {
            let Some(a) = v.as_array() else {
                return fail("not an array".into());
            };
            let n = a.len() as u64;
            if s.get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
            {
                return fail("fewer than minItems".into());
            }
            if s.get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
            {
                return fail("more than maxItems".into());
            }
            for (i, x) in a.iter().enumerate() {
                validate(x, &s["items"], &format!("{path}[{i}]"))?;
            }
        }
        Some(other) => panic!("validator does not know type {other}"),
        None => {}
    }
    Ok(())
}

/// Allowed token ids of a mask (below the vocabulary size).
fn allowed(mask: &[u32], vocab: usize, out: &mut Vec<u32>) {
    out.clear();
    for (w, &bits) in mask.iter().enumerate() {
        let mut b = bits;
        while b != 0 {
            let t = w * 32 + b.trailing_zeros() as usize;
            if t < vocab {
                out.push(t as u32);
            }
            b &= b - 1;
        }
    }
}

/// How a walk picks among the allowed tokens.
#[derive(Clone, Copy, PartialEq)]
enum Pick {
    /// Uniformly: JSON's flexible whitespace then fills most of the text.
    Uniform,
    /// Nine times in ten uniformly among the allowed tokens that are not all whitespace (when
    /// there are any): text closer to what a model writes, and masks inside strings (where
    /// most of the vocabulary is allowed) get their share of the timing.
    MostlyText,
}

fn is_blank(v: &Vocab, t: u32) -> bool {
    v.tok.token_bytes(t).iter().all(|b| b.is_ascii_whitespace())
}

/// Up to `max` steps through the masks, each a random choice among the allowed tokens, ending
/// early at a stop token. Returns the tokens (stop token included) and pushes the time of each
/// mask computation and how many tokens it allowed to `times`.
fn steps(
    v: &Vocab,
    state: &mut ConstraintState,
    rng: &mut StdRng,
    pick: Pick,
    max: usize,
    times: &mut Vec<(Duration, usize)>,
) -> Vec<u32> {
    let vocab = v.env.vocab_size();
    let mut ids = Vec::new();
    let mut choices = Vec::new();
    let mut text = Vec::new();
    for _ in 0..max {
        let t0 = Instant::now();
        let mask = state.mask().unwrap();
        let dt = t0.elapsed();
        allowed(mask, vocab, &mut choices);
        times.push((dt, choices.len()));
        assert!(!choices.is_empty(), "empty mask after {ids:?}");
        text.clear();
        text.extend(choices.iter().copied().filter(|&t| !is_blank(v, t)));
        let from = if pick == Pick::MostlyText && !text.is_empty() && rng.gen_bool(0.9) {
            &text
        } else {
            &choices
        };
        let t = from[rng.gen_range(0..from.len())];
        state.commit(t).unwrap();
        ids.push(t);
        if v.env.stop_ids().contains(&t) {
            assert!(state.ended_with_stop() && state.is_finished());
            break;
        }
    }
    ids
}

/// [`steps`] that must end with a stop token within `max` tokens.
fn walk(
    v: &Vocab,
    state: &mut ConstraintState,
    rng: &mut StdRng,
    pick: Pick,
    max: usize,
    times: &mut Vec<(Duration, usize)>,
) -> Vec<u32> {
    let ids = steps(v, state, rng, pick, max, times);
    if !ids.last().is_some_and(|t| v.env.stop_ids().contains(t)) {
        panic!("no stop token after {max} tokens: {:?}", v.tok.decode(&ids));
    }
    ids
}

/// The text of `ids` without the stop token, which must be valid UTF-8.
fn text(v: &Vocab, ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids
        .iter()
        .filter(|&&t| !v.env.stop_ids().contains(&t))
        .flat_map(|&t| v.tok.token_bytes(t).to_vec())
        .collect();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn json_schema_random_walks_validate() {
    let schema = person_schema();
    let c = Constraint::JsonSchema {
        schema: schema.clone(),
        strict: true,
    };
    let mut times = Vec::new();
    for seed in 0..8 {
        let pick = if seed < 2 {
            Pick::Uniform
        } else {
            Pick::MostlyText
        };
        let mut state = env().compile(&c).unwrap();
        let ids = walk(
            smollm(),
            &mut state,
            &mut StdRng::seed_from_u64(seed),
            pick,
            5000,
            &mut times,
        );
        let out = text(smollm(), &ids);
        let v: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("seed {seed}: {e} in {out:?}"));
        validate(&v, &schema, "$").unwrap_or_else(|e| panic!("seed {seed}: {e} in {out:?}"));
        if pick == Pick::MostlyText {
            println!("seed {seed}: {} tokens: {out:?}", ids.len());
        }
    }
}

#[test]
fn json_object_gives_an_object() {
    let mut times = Vec::new();
    for seed in 0..3 {
        let mut state = env().compile(&Constraint::JsonObject).unwrap();
        let ids = walk(
            smollm(),
            &mut state,
            &mut StdRng::seed_from_u64(seed),
            Pick::Uniform,
            20_000,
            &mut times,
        );
        let out = text(smollm(), &ids);
        // Syntax only: a uniform walk may write numbers beyond f64 (valid JSON, which
        // serde_json's `Value` refuses; `IgnoredAny` checks the syntax without converting).
        serde_json::from_str::<serde::de::IgnoredAny>(&out)
            .unwrap_or_else(|e| panic!("{e} in {out:?}"));
        assert!(out.starts_with('{') && out.ends_with('}'), "{out:?}");
    }
}

#[test]
fn regex_walks_match_in_full() {
    let patterns = [
        r"[a-z]{2,8}@[a-z]{2,8}\.(com|org|net)",
        r"-?(0|[1-9][0-9]{0,5})",
        r"\d{4}-\d{2}-\d{2}( [0-2]\d:[0-5]\d)?",
        r"(yes|no|maybe), because [A-Za-z ]{1,30}\.",
    ];
    let mut times = Vec::new();
    for pattern in patterns {
        let full = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
        let c = Constraint::Regex(pattern.into());
        for seed in 0..6 {
            let mut state = env().compile(&c).unwrap();
            let out = text(
                smollm(),
                &walk(
                    smollm(),
                    &mut state,
                    &mut StdRng::seed_from_u64(seed),
                    Pick::Uniform,
                    200,
                    &mut times,
                ),
            );
            assert!(full.is_match(&out), "{pattern} seed {seed}: {out:?}");
            if seed == 0 {
                println!("{pattern}: {out:?}");
            }
        }
    }
}

/// The same on Gemma 3's SentencePiece vocabulary (byte tokens beside their characters, a
/// quarter million tokens): schema walks validate, regex walks match, `<start_of_turn>` is
/// never text.
#[test]
fn gemma_vocabulary_backs_constraints() {
    let v = gemma();
    let schema = person_schema();
    let c = Constraint::JsonSchema {
        schema: schema.clone(),
        strict: true,
    };
    let mut times = Vec::new();
    for seed in 0..3 {
        let mut state = v.env.compile(&c).unwrap();
        let rng = &mut StdRng::seed_from_u64(seed);
        let out = text(
            v,
            &walk(v, &mut state, rng, Pick::MostlyText, 5000, &mut times),
        );
        let j: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("seed {seed}: {e} in {out:?}"));
        validate(&j, &schema, "$").unwrap_or_else(|e| panic!("seed {seed}: {e} in {out:?}"));
        println!("gemma seed {seed}: {out:?}");
    }
    let pattern = r"(yes|no|maybe), because [A-Za-z ]{1,30}\.";
    let full = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
    for seed in 0..3 {
        let mut state = v.env.compile(&Constraint::Regex(pattern.into())).unwrap();
        let rng = &mut StdRng::seed_from_u64(seed);
        let out = text(v, &walk(v, &mut state, rng, Pick::Uniform, 200, &mut times));
        assert!(full.is_match(&out), "{out:?}");
    }
    // Forced bytes are tokenized by rill's encoder (no space prefix to get in the way).
    for frag in ["{\"name\":\"", "\", \"age\": ", "maybe, because"] {
        let ids = v.tok.encode(frag, false).unwrap();
        assert_eq!(v.tok.decode(&ids), frag, "{ids:?}");
    }
    let sot = v.tok.encode("<start_of_turn>", false).unwrap();
    assert_eq!(sot.len(), 1);
    assert!(v.tok.is_control(sot[0]));
    let mut any = v.env.compile(&Constraint::Regex(".*".into())).unwrap();
    assert!(!any.is_allowed(sot[0]).unwrap());
    let mut wide: Vec<Duration> = times.iter().filter(|t| t.1 > 1000).map(|t| t.0).collect();
    wide.sort();
    if !wide.is_empty() {
        println!(
            "gemma: {} masks allowing >1000 tokens: p50 {:.0} us",
            wide.len(),
            percentile(&wide, 0.5)
        );
    }
}

#[test]
fn lark_grammar_walks_stay_in_the_language() {
    let grammar = r#"
        start: answer (", " answer)*
        answer: "yes" | "no" | NUMBER
        NUMBER: /[0-9]{1,3}/
    "#;
    let item = regex::Regex::new(r"^(yes|no|[0-9]{1,3})$").unwrap();
    let mut times = Vec::new();
    for seed in 0..6 {
        let mut state = env().compile(&Constraint::Lark(grammar.into())).unwrap();
        let out = text(
            smollm(),
            &walk(
                smollm(),
                &mut state,
                &mut StdRng::seed_from_u64(seed),
                Pick::Uniform,
                500,
                &mut times,
            ),
        );
        assert!(out.split(", ").all(|a| item.is_match(a)), "{out:?}");
    }
}

#[test]
fn bad_schemas_grammars_and_regexes_are_typed_errors() {
    let e = env();
    let schema = |schema: Value, strict: bool| Constraint::JsonSchema { schema, strict };
    let cases = [
        (schema(json!({"type": "strng"}), true), "schema"),
        (
            schema(json!({"type": "object", "properties": {"a": 5}}), true),
            "schema",
        ),
        (
            schema(json!({"type": "integer", "minimum": 5, "maximum": 1}), true),
            "schema",
        ),
        (
            schema(json!({"type": "string", "format": "no-such-format"}), true),
            "schema",
        ),
        (Constraint::Lark("start: undefined_rule".into()), "grammar"),
        (Constraint::Lark("start: \"a\" |\n  ) (".into()), "grammar"),
        (Constraint::Lark(String::new()), "grammar"),
        (Constraint::Regex("(ab".into()), "regex"),
        (Constraint::Regex("a{3,1}".into()), "regex"),
    ];
    for (c, kind) in cases {
        let err = match e.compile(&c) {
            Ok(_) => panic!("{c:?} compiled"),
            Err(err) => err,
        };
        let ok = match kind {
            "schema" => matches!(err, ConstraintError::InvalidSchema(_)),
            "grammar" => matches!(err, ConstraintError::InvalidGrammar(_)),
            _ => matches!(err, ConstraintError::InvalidRegex(_)),
        };
        assert!(ok, "{c:?} gave {err:?}");
        println!("{c:?}\n  -> {err}");
    }
    // What strict rejects, non-strict ignores with a warning.
    let mut loose = e
        .compile(&schema(
            json!({"type": "string", "format": "no-such-format"}),
            false,
        ))
        .unwrap();
    let w = loose.warnings();
    assert!(w.iter().any(|w| w.contains("no-such-format")), "{w:?}");
}

#[test]
fn rollback_restores_masks_exactly() {
    let c = Constraint::JsonSchema {
        schema: person_schema(),
        strict: true,
    };
    let vocab = env().vocab_size();
    for seed in 0..3 {
        // One walk to the end, the mask before every token kept.
        let mut state = env().compile(&c).unwrap();
        let mut rng = StdRng::seed_from_u64(100 + seed);
        let mut masks: Vec<Vec<u32>> = Vec::new();
        let mut ids = Vec::new();
        let mut choices = Vec::new();
        loop {
            let m = state.mask().unwrap().to_vec();
            allowed(&m, vocab, &mut choices);
            let t = choices[rng.gen_range(0..choices.len())];
            masks.push(m);
            state.commit(t).unwrap();
            ids.push(t);
            if env().stop_ids().contains(&t) {
                break;
            }
            assert!(ids.len() < 4000);
        }
        let n = ids.len();
        assert_eq!(state.committed(), n);
        // Past the end only stop tokens are allowed, and more of them are accepted.
        let stops = env().stop_ids().to_vec();
        let mut after = Vec::new();
        allowed(state.mask().unwrap(), vocab, &mut after);
        assert_eq!(after, {
            let mut s = stops.clone();
            s.sort();
            s
        });
        state.commit(stops[0]).unwrap();
        assert_eq!(state.committed(), n + 1);
        state.rollback(1).unwrap();
        // Roll back to points along the walk (the end, inside strings, the start) and compare;
        // then replay the tokens and compare every mask again.
        let mut points: Vec<usize> = vec![1, 2, 5, n / 2, n - 1, n];
        points.retain(|&k| k <= n);
        for k in points {
            state.rollback(k).unwrap();
            assert_eq!(state.committed(), n - k);
            assert!(!state.ended_with_stop());
            assert_eq!(
                state.mask().unwrap(),
                &masks[n - k][..],
                "seed {seed}: mask after rolling back {k} of {n}"
            );
            for (i, &t) in ids[n - k..].iter().enumerate() {
                assert_eq!(state.mask().unwrap(), &masks[n - k + i][..]);
                state.commit(t).unwrap();
            }
            assert!(state.is_finished() && state.ended_with_stop());
        }
        assert_eq!(
            state.rollback(n + 1),
            Err(ConstraintError::RollbackTooFar {
                requested: n + 1,
                committed: n
            })
        );
        // Speculative tokens: the whole walk validates and is consumed at once.
        state.rollback(n).unwrap();
        assert_eq!(state.valid_prefix(&ids).unwrap(), n);
        state.consume(&ids).unwrap();
        assert!(state.is_finished() && state.ended_with_stop());
        state.rollback(n).unwrap();
        assert_eq!(state.mask().unwrap(), &masks[0][..]);
    }
}

#[test]
fn rejected_tokens_change_nothing() {
    let e = env();
    let tok = tokenizer();
    let c = Constraint::Regex(r"ab[0-9]+".into());
    let mut state = e.compile(&c).unwrap();
    let good = tok.encode("ab12", false).unwrap();
    let mut draft = good.clone();
    draft.extend(tok.encode("x", false).unwrap());
    assert_eq!(state.valid_prefix(&draft).unwrap(), good.len());
    let first = state.mask().unwrap().to_vec();
    // A rejected batch (all or nothing) and a rejected single token leave the state as it was.
    match state.consume(&draft) {
        Err(ConstraintError::TokenRejected { position, .. }) => assert_eq!(position, good.len()),
        other => panic!("{other:?}"),
    }
    assert_eq!(state.committed(), 0);
    let x = tok.encode("x", false).unwrap()[0];
    assert!(!state.is_allowed(x).unwrap());
    assert!(matches!(
        state.commit(x),
        Err(ConstraintError::TokenRejected { .. })
    ));
    assert!(matches!(
        state.commit(e.vocab_size() as u32),
        Err(ConstraintError::TokenRejected { .. })
    ));
    assert_eq!(state.mask().unwrap(), &first[..]);
    // A control token is never text: `<|im_start|>` is not allowed even where any text is.
    let mut any = e.compile(&Constraint::Regex(".*".into())).unwrap();
    let im_start = tok.encode("<|im_start|>", false).unwrap();
    assert_eq!(im_start.len(), 1);
    assert!(tok.is_control(im_start[0]));
    assert!(!any.is_allowed(im_start[0]).unwrap());
    // The good tokens, then a stop token where the regex accepts.
    state.consume(&good).unwrap();
    assert!(state.eos_allowed().unwrap());
    assert!(!state.is_finished());
    state.commit(e.stop_ids()[0]).unwrap();
    assert!(state.is_finished() && state.ended_with_stop());
    assert!(state.error().is_none());
}

#[test]
fn apply_to_logits_masks_disallowed_tokens() {
    let e = env();
    let mut state = e
        .compile(&Constraint::JsonSchema {
            schema: person_schema(),
            strict: true,
        })
        .unwrap();
    let mut choices = Vec::new();
    allowed(state.mask().unwrap(), e.vocab_size(), &mut choices);
    let mut logits = vec![0.5f32; e.vocab_size()];
    state.apply_to_logits(&mut logits).unwrap();
    let finite: Vec<u32> = (0..logits.len() as u32)
        .filter(|&t| logits[t as usize].is_finite())
        .collect();
    assert_eq!(finite, choices);
    assert!(finite.iter().all(|&t| logits[t as usize] == 0.5));
    // A row narrower than the vocabulary is fine too.
    let mut short = vec![0.0f32; 100];
    state.apply_to_logits(&mut short).unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

#[test]
fn mask_time_per_token() {
    let e = env();
    let cases = [
        (
            "json schema",
            Constraint::JsonSchema {
                schema: person_schema(),
                strict: true,
            },
        ),
        (
            "json schema, unbounded strings",
            Constraint::JsonSchema {
                schema: json!({
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "notes": {"type": "array", "items": {"type": "string"}}
                    },
                    "required": ["name", "notes"]
                }),
                strict: true,
            },
        ),
        (
            "lark",
            Constraint::Lark(
                "start: answer (\", \" answer)*\nanswer: \"yes\" | \"no\" | /[0-9]{1,3}/".into(),
            ),
        ),
        (
            "regex",
            Constraint::Regex(r"(yes|no|maybe), because [A-Za-z ]{1,30}\.".into()),
        ),
    ];
    for (name, c) in cases {
        let mut times = Vec::new();
        let mut compile = Vec::new();
        let mut first = Vec::new();
        let mut seed = 0;
        // A few hundred tokens per constraint (walks of at most 200, so that unbounded
        // strings do not take them all); the first mask of each walk is reported apart (it
        // builds the lexer's first states).
        while times.len() < 400 {
            let t0 = Instant::now();
            let mut state = e.compile(&c).unwrap();
            compile.push(t0.elapsed());
            let mut t = Vec::new();
            steps(
                smollm(),
                &mut state,
                &mut StdRng::seed_from_u64(seed),
                Pick::MostlyText,
                200,
                &mut t,
            );
            first.push(t[0].0);
            times.extend_from_slice(&t[1..]);
            seed += 1;
        }
        let mut all: Vec<Duration> = times.iter().map(|t| t.0).collect();
        let mut wide: Vec<Duration> = times.iter().filter(|t| t.1 > 1000).map(|t| t.0).collect();
        all.sort();
        wide.sort();
        compile.sort();
        first.sort();
        let wide_p = |p| {
            if wide.is_empty() {
                0.0
            } else {
                percentile(&wide, p)
            }
        };
        println!(
            "{name}: mask p50 {:.0} us, p99 {:.0} us, max {:.0} us over {} tokens ({} walks); \
             {} masks allowing >1000 tokens: p50 {:.0} us, p99 {:.0} us; \
             first mask p50 {:.0} us; compile p50 {:.0} us",
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            percentile(&all, 1.0),
            all.len(),
            seed,
            wide.len(),
            wide_p(0.5),
            wide_p(0.99),
            percentile(&first, 0.5),
            percentile(&compile, 0.5),
        );
    }
}
