//! Streaming detokenization with the real tokenizer: multi-byte text split across tokens
//! reassembles exactly, stop sequences never leak (even split across tokens), and text that
//! merely starts like a stop sequence is released in full.
#![allow(clippy::unwrap_used)] // test and debug code: a panic is the failure report

mod support;

use rill_engine::Detokenizer;

fn stream(engine: &rill_engine::Engine, text: &str, stops: &[&str]) -> (Vec<String>, String, bool) {
    let ids = engine.tokenizer.encode(text, false).unwrap();
    let mut d = Detokenizer::new(stops.iter().map(|s| s.to_string()).collect());
    let mut pieces = Vec::new();
    let mut stopped = false;
    for id in ids {
        let r = d.push(engine.tokenizer.token_bytes(id));
        pieces.push(r.text);
        if r.stopped.is_some() {
            stopped = true;
            break;
        }
    }
    pieces.push(d.flush());
    let all = pieces.concat();
    (pieces, all, stopped)
}

#[test]
fn multibyte_text_reassembles_exactly() {
    let engine = support::engine(1);
    for text in [
        "日本語のテキスト、そして中文。",
        "Emoji 🌅🎉👩‍👩‍👧 and flags 🇫🇷",
        "Accents: café, naïve, Ångström, ß, ø.",
    ] {
        let (pieces, all, _) = stream(&engine, text, &[]);
        assert_eq!(all, text);
        for p in &pieces {
            assert!(
                !p.contains('\u{FFFD}'),
                "a piece holds a broken character: {p:?}"
            );
        }
    }
}

#[test]
fn stop_sequences_never_leak() {
    let engine = support::engine(1);
    let (pieces, all, stopped) = stream(
        &engine,
        "The answer is 42.\nUser: next question",
        &["\nUser:"],
    );
    assert!(stopped);
    assert_eq!(all, "The answer is 42.");
    assert!(pieces.iter().all(|p| !p.contains("User")));
    // Stop string split across many tokens and mid-word.
    let (_, all, stopped) = stream(&engine, "abc<|END|>def", &["<|END|>"]);
    assert!(stopped);
    assert_eq!(all, "abc");
}

#[test]
fn near_miss_of_a_stop_sequence_is_released() {
    let engine = support::engine(1);
    let text = "The User is here, \nUse it well.";
    let (_, all, stopped) = stream(&engine, text, &["\nUser:"]);
    assert!(!stopped);
    assert_eq!(all, text);
}

#[test]
fn cut_character_at_end_becomes_replacement() {
    let mut d = Detokenizer::new(vec![]);
    assert_eq!(d.push("é".as_bytes()).text, "é");
    assert_eq!(d.push(&[0xF0, 0x9F]).text, "");
    assert_eq!(d.flush(), "\u{FFFD}");
}
