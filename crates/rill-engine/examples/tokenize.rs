//! Debug tool: token ids of each line of stdin (JSON-escaped strings), with the tokenizer of a
//! GGUF, to compare with llama-server's `/tokenize`.
//! `cargo run -p rill-engine --example tokenize -- MODEL.gguf < lines.jsonl`
#![allow(clippy::unwrap_used)] // debug tool: a panic is the failure report
use std::io::BufRead;

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let g = rill_engine::gguf::GgufFile::open(std::path::Path::new(&path)).unwrap();
    let tok = rill_engine::Tokenizer::from_gguf(&g).unwrap();
    for line in std::io::stdin().lock().lines() {
        let text: String = serde_json::from_str(&line.unwrap()).unwrap();
        println!("{:?}", tok.encode(&text, false).unwrap());
    }
}
