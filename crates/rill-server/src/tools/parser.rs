//! Splits a tool-calling answer, as it streams, into content and tool-call pieces: text
//! before (and between, and after) calls is content; a call yields its name once the name is
//! complete, then its arguments in fragments exactly as generated (the bytes the model wrote,
//! never re-serialized). A possible start of [`CALL_OPEN`] at the end of a fragment is held
//! back until the next fragment decides it; whitespace between calls is dropped. Text that
//! turns out not to be a well-formed call head stays content (the grammar makes that
//! impossible once a call has begun; without one, nothing is lost).

use super::{CALL_CLOSE, CALL_OPEN};

/// A piece of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text for the user.
    Content(String),
    /// A call begins: its index in the answer, its id and the function's name.
    Start {
        /// 0 for the first call of the answer.
        index: usize,
        /// `call_` and 24 hex digits.
        id: String,
        /// The function.
        name: String,
    },
    /// More of a call's arguments (JSON text as generated).
    Arguments {
        /// The call's index.
        index: usize,
        /// The new text.
        text: String,
    },
}

/// A call as parsed so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    /// `call_` and 24 hex digits.
    pub id: String,
    /// The function.
    pub name: String,
    /// The arguments' JSON text.
    pub arguments: String,
    /// The call's closing tag arrived.
    pub complete: bool,
}

/// Fixed text expected next, compared without whitespace (the grammar fixes its spacing;
/// a template-driven model may vary it).
struct Expect {
    want: Vec<char>,
    pos: usize,
}

impl Expect {
    fn new(text: &str) -> Self {
        Self {
            want: text.chars().filter(|c| !c.is_whitespace()).collect(),
            pos: 0,
        }
    }

    /// Some(true): complete; Some(false): so far so good; None: mismatch.
    fn feed(&mut self, c: char) -> Option<bool> {
        if c.is_whitespace() {
            return Some(false);
        }
        if self.want.get(self.pos) != Some(&c) {
            return None;
        }
        self.pos += 1;
        Some(self.pos == self.want.len())
    }
}

enum State {
    /// Content; `held` is a prefix of [`CALL_OPEN`]; after a call, leading whitespace waits
    /// in `lead`.
    Content {
        held: String,
        lead: String,
        after_call: bool,
    },
    /// `{"name": "` after the marker.
    Head(Expect),
    /// The name, up to its closing quote.
    Name(String),
    /// `, "arguments": `.
    Mid(Expect),
    /// The arguments JSON: nesting depth, inside a string, after a backslash, begun.
    Args {
        depth: u32,
        in_str: bool,
        esc: bool,
        begun: bool,
    },
    /// `}` and the closing tag.
    Tail(Expect),
}

/// The streaming splitter of one answer.
pub struct CallParser {
    state: State,
    /// Text of the call being read, while it could still turn out to be content.
    raw: String,
    calls: Vec<ParsedCall>,
    content: String,
    out: Vec<Piece>,
}

impl Default for CallParser {
    fn default() -> Self {
        Self::new()
    }
}

impl CallParser {
    /// A parser at the start of an answer.
    pub fn new() -> Self {
        Self {
            state: State::Content {
                held: String::new(),
                lead: String::new(),
                after_call: false,
            },
            raw: String::new(),
            calls: Vec::new(),
            content: String::new(),
            out: Vec::new(),
        }
    }

    /// The pieces `text` (the next fragment of the answer) completes.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        for c in text.chars() {
            self.step(c);
        }
        std::mem::take(&mut self.out)
    }

    /// The answer ended: what was held back (a partial marker, an unfinished call head) is
    /// content after all.
    pub fn finish(&mut self) -> Vec<Piece> {
        let state = std::mem::replace(
            &mut self.state,
            State::Content {
                held: String::new(),
                lead: String::new(),
                after_call: false,
            },
        );
        match state {
            State::Content { held, lead, .. } => {
                if !held.is_empty() {
                    self.emit_content(&lead);
                    self.emit_content(&held);
                }
            }
            State::Head(_) | State::Name(_) => {
                let raw = std::mem::take(&mut self.raw);
                self.emit_content(&raw);
            }
            State::Mid(_) | State::Args { .. } | State::Tail(_) => {}
        }
        std::mem::take(&mut self.out)
    }

    /// The calls so far.
    pub fn calls(&self) -> &[ParsedCall] {
        &self.calls
    }

    /// Calls whose closing tag arrived.
    pub fn completed(&self) -> usize {
        self.calls.iter().filter(|c| c.complete).count()
    }

    /// All content so far.
    pub fn content(&self) -> &str {
        &self.content
    }

    fn emit_content(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        self.content.push_str(s);
        match self.out.last_mut() {
            Some(Piece::Content(t)) => t.push_str(s),
            _ => self.out.push(Piece::Content(s.to_string())),
        }
    }

    fn emit_arguments(&mut self, c: char) {
        let index = self.calls.len() - 1;
        if let Some(call) = self.calls.last_mut() {
            call.arguments.push(c);
        }
        match self.out.last_mut() {
            Some(Piece::Arguments { index: i, text }) if *i == index => text.push(c),
            _ => self.out.push(Piece::Arguments {
                index,
                text: c.to_string(),
            }),
        }
    }

    /// Not a call after all: what was read of it is content.
    fn abandon(&mut self) {
        let raw = std::mem::take(&mut self.raw);
        self.state = State::Content {
            held: String::new(),
            lead: String::new(),
            after_call: false,
        };
        self.emit_content(&raw);
    }

    fn step(&mut self, c: char) {
        match &mut self.state {
            State::Content {
                held,
                lead,
                after_call,
            } => {
                if *after_call && held.is_empty() && c.is_whitespace() {
                    lead.push(c);
                    return;
                }
                held.push(c);
                if held == CALL_OPEN {
                    self.raw = std::mem::take(held);
                    self.state = State::Head(Expect::new("{\"name\": \""));
                    return;
                }
                if CALL_OPEN.starts_with(held.as_str()) {
                    return;
                }
                let mut text = std::mem::take(lead);
                *after_call = false;
                while !held.is_empty() && !CALL_OPEN.starts_with(held.as_str()) {
                    text.push(held.remove(0));
                }
                self.emit_content(&text);
            }
            State::Head(e) => {
                self.raw.push(c);
                match e.feed(c) {
                    Some(true) => self.state = State::Name(String::new()),
                    Some(false) => {}
                    None => self.abandon(),
                }
            }
            State::Name(name) => {
                self.raw.push(c);
                if c == '"' && !name.is_empty() {
                    let name = std::mem::take(name);
                    let id = format!("call_{:024x}", rand::random::<u128>() & ((1u128 << 96) - 1));
                    self.raw.clear();
                    self.out.push(Piece::Start {
                        index: self.calls.len(),
                        id: id.clone(),
                        name: name.clone(),
                    });
                    self.calls.push(ParsedCall {
                        id,
                        name,
                        arguments: String::new(),
                        complete: false,
                    });
                    self.state = State::Mid(Expect::new(", \"arguments\": "));
                } else if name.len() < 64 && (c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                    name.push(c);
                } else {
                    self.abandon();
                }
            }
            State::Mid(e) => {
                if e.feed(c) == Some(true) {
                    self.state = State::Args {
                        depth: 0,
                        in_str: false,
                        esc: false,
                        begun: false,
                    };
                }
            }
            State::Args {
                depth,
                in_str,
                esc,
                begun,
            } => {
                if !*begun && c.is_whitespace() {
                    return;
                }
                *begun = true;
                let mut done = false;
                if *in_str {
                    if *esc {
                        *esc = false;
                    } else if c == '\\' {
                        *esc = true;
                    } else if c == '"' {
                        *in_str = false;
                    }
                } else {
                    match c {
                        '"' => *in_str = true,
                        '{' | '[' => *depth += 1,
                        '}' | ']' => {
                            *depth = depth.saturating_sub(1);
                            done = *depth == 0;
                        }
                        _ => {}
                    }
                }
                self.emit_arguments(c);
                if done {
                    self.state = State::Tail(Expect::new(&format!("}}{CALL_CLOSE}")));
                }
            }
            State::Tail(e) => {
                if e.feed(c) == Some(true) {
                    if let Some(call) = self.calls.last_mut() {
                        call.complete = true;
                    }
                    self.state = State::Content {
                        held: String::new(),
                        lead: String::new(),
                        after_call: true,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris \\\"}\\\" [x]\", \"n\": [1, {\"a\": 2}]}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";

    /// Feeds `text` in fragments of `n` characters; returns the merged pieces.
    fn split(text: &str, n: usize) -> (Vec<Piece>, CallParser) {
        let mut p = CallParser::new();
        let chars: Vec<char> = text.chars().collect();
        let mut pieces = Vec::new();
        for chunk in chars.chunks(n) {
            pieces.extend(p.push(&chunk.iter().collect::<String>()));
        }
        pieces.extend(p.finish());
        (pieces, p)
    }

    #[test]
    fn calls_come_out_the_same_for_every_fragmentation() {
        for n in [1, 2, 3, 5, 7, 11, 1000] {
            let (pieces, p) = split(TWO, n);
            assert_eq!(p.content(), "Let me check.\n", "fragments of {n}");
            assert_eq!(p.completed(), 2);
            let calls = p.calls();
            assert_eq!(calls[0].name, "get_weather");
            assert_eq!(
                calls[0].arguments,
                "{\"city\": \"Paris \\\"}\\\" [x]\", \"n\": [1, {\"a\": 2}]}"
            );
            assert_eq!(
                (calls[1].name.as_str(), calls[1].arguments.as_str()),
                ("get_time", "{}")
            );
            // The arguments pieces concatenate to each call's arguments, after its start.
            let mut args = [String::new(), String::new()];
            let mut started = [false, false];
            for piece in &pieces {
                match piece {
                    Piece::Start { index, .. } => started[*index] = true,
                    Piece::Arguments { index, text } => {
                        assert!(started[*index]);
                        args[*index].push_str(text);
                    }
                    Piece::Content(_) => {}
                }
            }
            assert_eq!(args[0], calls[0].arguments);
            assert_eq!(args[1], calls[1].arguments);
        }
    }

    #[test]
    fn text_that_is_not_a_call_stays_content() {
        for text in [
            "a < b and <tool_ and <tool_call",
            "<tool_call>not json</tool_call> done",
            "x <<tool_call>{\"nom\": 1}",
        ] {
            for n in [1, 4, 100] {
                let (_, p) = split(text, n);
                assert_eq!(p.content(), text, "fragments of {n}");
                assert!(p.calls().is_empty());
            }
        }
    }

    #[test]
    fn a_cut_call_is_incomplete_and_text_after_calls_is_content() {
        let (_, p) = split("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": ", 3);
        assert_eq!(p.calls().len(), 1);
        assert!(!p.calls()[0].complete);
        assert_eq!(p.calls()[0].arguments, "{\"a\": ");
        let (_, p) = split(
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n\nDone.",
            2,
        );
        assert_eq!(p.completed(), 1);
        assert_eq!(p.content(), "\n\nDone.");
    }
}
