//! What the load generator sends: prompt sets (built-in mixes or a JSONL file) and arrival
//! patterns (closed loop, or Poisson at a request rate).

use std::path::Path;

use serde_json::Value;

use crate::BenchError;

/// One prompt: plain text (sent as a user message, or as `prompt` to /v1/completions) or a
/// whole chat `messages` array.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Plain text.
    Text(String),
    /// A JSON array of chat messages (`{"role", "content"}` objects), sent as-is.
    Messages(Value),
}

const QUESTIONS: [&str; 8] = [
    "Write a haiku about the sea.",
    "What is 17 times 23? Explain the steps.",
    "Explain photosynthesis to a child.",
    "List five colours and one thing of each colour.",
    "Translate 'good morning, how are you?' into German and French.",
    "Why is the sky blue?",
    "Give me three names for a bakery and a motto for each.",
    "Describe a lighthouse at night.",
];

const FILLER: &str = "The river flows past old stone bridges, carrying leaves and stories from \
    the hills to the harbour, where fishermen mend their nets and talk about the weather. ";

/// A prompt that differs from every other from its first words, so no server can reuse a
/// cached prefix between requests (beyond the chat template's own header); `shared` puts the
/// context first instead, like a common system prompt.
fn with_context(i: usize, repeats: usize, shared: bool) -> Prompt {
    let q = QUESTIONS[i % QUESTIONS.len()];
    match (repeats, shared) {
        (0, _) => Prompt::Text(format!("Request {i}: {q}")),
        (_, false) => Prompt::Text(format!("Request {i}. {}\n\n{q}", FILLER.repeat(repeats))),
        (_, true) => Prompt::Text(format!("{}\n\nRequest {i}: {q}", FILLER.repeat(repeats))),
    }
}

/// Paragraphs the `grounded` set asks the model to copy: the input-grounded work (summaries,
/// document QA, edits) where an answer repeats its input and prompt-lookup drafting pays.
const PARAGRAPHS: [&str; 8] = [
    "The river runs through the old town, past the mill and the church, and under the stone \
     bridge that the Romans built. In spring the water rises and floods the meadows, and the \
     children watch the ducks from the bank while their parents sell bread at the market.",
    "To install the package, download the archive from the release page, unpack it into a \
     folder of your choice, and add that folder to your PATH. Then open a new terminal and run \
     the version command to check that the installation worked.",
    "The committee met on Tuesday to discuss the budget for next year. After a long debate, the \
     members agreed to increase spending on public libraries by ten percent and to delay the \
     renovation of the town hall until the following spring.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide \
     to make glucose and oxygen. It takes place in the chloroplasts, which contain a green \
     pigment called chlorophyll that absorbs light energy.",
    "Our store is open from nine in the morning until six in the evening on weekdays, and from \
     ten until four on Saturdays. We are closed on Sundays and public holidays. Orders placed \
     online are shipped within two working days.",
    "The lighthouse stands on a rocky island at the mouth of the bay. Every night its lamp turns \
     slowly, sending a beam of light across the dark water, and the ships that pass far out at \
     sea use it to find their way safely into the harbour.",
    "Preheat the oven to two hundred degrees. Mix the flour, sugar and butter in a large bowl \
     until the mixture looks like breadcrumbs, then add the eggs and milk and stir until smooth. \
     Pour the batter into a tin and bake for thirty minutes.",
    "The train to the coast leaves the central station every hour, on the hour, from platform \
     four. The journey takes about ninety minutes, and tickets can be bought at the machines in \
     the main hall or from the conductor on board.",
];

/// Open-ended prompts: the answer grows from the prompt, not from copying it.
const OPEN: [&str; 8] = [
    "Here is a short story about a dragon who is afraid of the dark:\n\n",
    "The best way to spend a rainy afternoon is",
    "Dear diary, today something strange happened at school.",
    "Ten ideas for a birthday party for a seven-year-old:\n1.",
    "Once upon a time, in a village at the edge of a great forest,",
    "My favourite season is autumn because",
    "The robot opened its eyes for the first time and",
    "A letter to my future self:\n\nDear me,",
];

/// A copy task whose answer has begun copying: a ChatML chat turn (the template of SmolLM2,
/// Qwen and others) asking for the paragraph verbatim, with the assistant turn prefilled with
/// its first three words, sent raw to `/v1/completions`. Small models copy far more reliably
/// this way than when asked in a plain chat turn (SmolLM2-135M: ~5% of 4-grams) or after a bare
/// `Original:`/`Copy:` pair (~40%).
fn copy_prompt(i: usize) -> Prompt {
    let p = PARAGRAPHS[i % PARAGRAPHS.len()];
    let start: Vec<&str> = p.split_whitespace().take(3).collect();
    Prompt::Text(format!(
        "<|im_start|>user\nRepeat this text exactly:\n{p}<|im_end|>\n<|im_start|>assistant\n{}",
        start.join(" ")
    ))
}

/// A built-in prompt set: `short` (~20 tokens), `long` (~1,000 tokens), `mixed` (7 short :
/// 2 medium ~250 tokens : 1 long, in a fixed order), all distinct from their first token; or
/// `shared` (the mixed lengths, but medium and long ones start with the same ~1,000-token
/// context, which servers with prefix caching can reuse); `grounded` (8 copy tasks in ChatML, for
/// `--endpoint completions`: the answers repeat a given paragraph) or `open` (8 open-ended
/// completions), the two sides of speculative decoding.
pub fn builtin(name: &str) -> Result<Vec<Prompt>, BenchError> {
    let mixed = |shared: bool| -> Vec<Prompt> {
        (0..20)
            .map(|i| match i % 10 {
                3 | 7 => with_context(i, 9, shared),
                9 => with_context(i, 36, shared),
                _ => with_context(i, 0, shared),
            })
            .collect()
    };
    let v = match name {
        "short" => (0..16).map(|i| with_context(i, 0, false)).collect(),
        "long" => (0..16).map(|i| with_context(i, 36, false)).collect(),
        "mixed" => mixed(false),
        "shared" => mixed(true),
        "grounded" => (0..PARAGRAPHS.len()).map(copy_prompt).collect(),
        "open" => OPEN.iter().map(|s| Prompt::Text(s.to_string())).collect(),
        other => {
            return Err(BenchError::Usage(format!(
                "unknown prompt set `{other}` (short, long, mixed, shared, grounded, open, or a \
                 .jsonl file)"
            )))
        }
    };
    Ok(v)
}

/// Prompts from a JSONL file: one object per line with `prompt` (a string) or `messages`.
pub fn load_jsonl(path: &Path) -> Result<Vec<Prompt>, BenchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BenchError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| {
            BenchError::Usage(format!("{}:{}: not JSON: {e}", path.display(), n + 1))
        })?;
        if let Some(p) = v.get("prompt").and_then(Value::as_str) {
            out.push(Prompt::Text(p.to_string()));
        } else if let Some(m) = v.get("messages").filter(|m| m.is_array()) {
            out.push(Prompt::Messages(m.clone()));
        } else {
            return Err(BenchError::Usage(format!(
                "{}:{}: expected {{\"prompt\": ...}} or {{\"messages\": [...]}}",
                path.display(),
                n + 1
            )));
        }
    }
    if out.is_empty() {
        return Err(BenchError::Usage(format!(
            "{} has no prompts",
            path.display()
        )));
    }
    Ok(out)
}

/// A prompt set by name or path.
pub fn prompts(spec: &str) -> Result<Vec<Prompt>, BenchError> {
    if spec.ends_with(".jsonl") || Path::new(spec).is_file() {
        load_jsonl(Path::new(spec))
    } else {
        builtin(spec)
    }
}

/// When requests start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// Each of N clients sends its next request when the previous one ends.
    Closed,
    /// Requests arrive at this mean rate per second (exponential gaps), at most N in flight.
    Poisson {
        /// Mean arrivals per second (> 0).
        rate: f64,
    },
}
