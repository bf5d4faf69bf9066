//! The engine loop: the one thread that owns the [`Backend`] (for rill's CPU engine: the model,
//! KV block pool and compute pool). Every iteration it takes in control messages, drops cancelled and failed streams,
//! admits waiting requests while the controller and the memory monitor allow, plans one step
//! (every running sequence's decode token plus prefill chunks within the controller's budget,
//! preempting the newest sequences if the KV pool cannot hold the step, and speculative draft
//! rows where the cost model says they pay), runs it, samples and verifies, detokenizes and
//! hands tokens to each request's outbox. It never blocks on a consumer.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rill_engine::{Detokenizer, Sampler, SeqId, StepItem, Tokenizer, BLOCK_TOKENS};

use crate::backend::Backend;

use crate::config::SchedulerConfig;
use crate::controller::{attended, BatchController, StepSample};
use crate::handle::{Control, Shared, Submission};
use crate::memory::{PressureLevel, PressureMonitor};
use crate::queue::WaitQueue;
use crate::request::{ErrorCode, Event, FinishReason, RequestId};
use crate::sequence::{ConstraintSlot, Sequence, SpecState, Trigger};
use crate::speculative::{plan_drafts, Acceptance, DraftCandidate, NgramIndex, SpecMode};
use crate::stats::SchedulerStats;

/// One sequence's share of a planned step.
struct Planned {
    id: RequestId,
    start: usize,
    /// Tokens of the sequence's context in the step (the draft comes on top).
    len: usize,
    /// Speculative tokens after the decode token, to verify.
    draft: Vec<u32>,
    /// Whether the step samples for this sequence (its last context token is in it).
    sample: bool,
}

impl Planned {
    fn logits(&self) -> usize {
        if self.sample {
            1 + self.draft.len()
        } else {
            0
        }
    }
}

/// What ends a sequence after a step.
enum Outcome {
    Finish(FinishReason, Option<String>),
    Fail(ErrorCode, String),
}

pub(crate) struct EngineLoop<B: Backend> {
    engine: B,
    /// Compute constraint masks on a thread of their own during the forward pass: only when
    /// the machine has a core the step leaves idle. Measured on 2 cores with a 2-thread
    /// engine, the per-step thread cost decode 10-18% (ITL 4.5-4.8 ms against 4.0-4.2 ms
    /// unconstrained) while inline masks cost 1-3%: llguidance's masks for JSON schemas and
    /// tool calls take microseconds, and a third thread only preempts a compute worker.
    masks_beside_step: bool,
    tokenizer: Arc<Tokenizer>,
    cfg: SchedulerConfig,
    rx: Receiver<Control>,
    rx_open: bool,
    shared: Arc<Shared>,
    seqs: HashMap<RequestId, Sequence>,
    /// Running sequences in admission order (the newest last).
    running: Vec<RequestId>,
    queue: WaitQueue,
    controller: BatchController,
    memory: PressureMonitor,
    stats: SchedulerStats,
    next_seq: u64,
    arrivals: u64,
    admissions: u64,
    shutdown_at: Option<Instant>,
    completions: VecDeque<Instant>,
    /// Start of the last step that carried decode rows (streams wait from one to the next).
    last_decode_step: Option<Instant>,
    /// Draft acceptance over all sequences: where a new sequence's estimate starts.
    spec_prior: Acceptance,
}

impl<B: Backend> EngineLoop<B> {
    pub(crate) fn new(
        engine: B,
        cfg: SchedulerConfig,
        rx: Receiver<Control>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            masks_beside_step: std::thread::available_parallelism()
                .is_ok_and(|n| n.get() > engine.compute_threads()),
            tokenizer: engine.tokenizer().clone(),
            controller: BatchController::new(cfg.controller()),
            memory: PressureMonitor::new(cfg.memory),
            stats: SchedulerStats {
                kv: engine.kv_stats(),
                ..SchedulerStats::default()
            },
            engine,
            cfg,
            rx,
            rx_open: true,
            shared,
            seqs: HashMap::new(),
            running: Vec::new(),
            queue: WaitQueue::default(),
            next_seq: 1,
            arrivals: 0,
            admissions: 0,
            shutdown_at: None,
            completions: VecDeque::new(),
            last_decode_step: None,
            spec_prior: Acceptance::server_wide(),
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            if !self.intake() {
                break;
            }
            // A panic while serving must not take the server down: the sequences of the failed
            // iteration end with `internal` and the loop goes on.
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                self.reap();
                self.admit();
                self.step();
            }));
            if outcome.is_err() {
                tracing::error!("engine loop iteration panicked; failing running sequences");
                for id in self.running.clone() {
                    self.end(
                        id,
                        Outcome::Fail(ErrorCode::Internal, "internal error in the engine".into()),
                    );
                }
            }
            self.publish();
        }
        self.end_all_for_shutdown();
        self.publish();
    }

    /// Ends every request, running or waiting, with `server_shutdown`.
    fn end_all_for_shutdown(&mut self) {
        let ids: Vec<RequestId> = self.seqs.keys().copied().collect();
        for id in ids {
            self.end(
                id,
                Outcome::Fail(
                    ErrorCode::ServerShutdown,
                    "the server is shutting down".into(),
                ),
            );
        }
    }

    fn idle(&self) -> bool {
        self.running.is_empty() && self.queue.is_empty()
    }

    /// Takes in control messages, blocking while there is nothing to do. False: exit.
    fn intake(&mut self) -> bool {
        if self.idle() {
            if self.shutdown_at.is_some() || !self.rx_open {
                return false;
            }
            self.publish();
            match self.rx.recv() {
                Ok(msg) => self.control(msg),
                Err(_) => return false,
            }
        }
        while self.rx_open {
            match self.rx.try_recv() {
                Ok(msg) => self.control(msg),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.rx_open = false,
            }
        }
        true
    }

    fn control(&mut self, msg: Control) {
        match msg {
            Control::Submit(s) => self.enqueue(*s),
            Control::Cancel(id) => {
                if self.seqs.contains_key(&id) {
                    self.end(id, Outcome::Finish(FinishReason::Cancelled, None));
                }
            }
            Control::Shutdown { grace } => {
                let at = Instant::now() + grace;
                self.shutdown_at = Some(self.shutdown_at.map_or(at, |t| t.min(at)));
            }
        }
    }

    fn enqueue(&mut self, s: Submission) {
        let Submission {
            id,
            request,
            outbox,
            submitted,
        } = s;
        let mut sampler = Sampler::new(request.sampling);
        sampler.accept(&request.prompt);
        let constraint = request.constraint.map(|c| ConstraintSlot {
            state: *c.state,
            row: Vec::new(),
            awaiting: c.trigger.filter(|t| !t.is_empty()).map(|t| Trigger {
                text: t.into_bytes(),
                seen: Vec::new(),
            }),
        });
        let spec =
            (self.cfg.spec.mode == SpecMode::Ngram && request.speculative).then(|| SpecState {
                index: NgramIndex::new(self.cfg.spec.ngram_min, self.cfg.spec.ngram_max),
                acceptance: Acceptance::starting_from(&self.spec_prior),
                drafted: 0,
                accepted: 0,
                last_accepted: 0,
            });
        let seq = Sequence {
            seq: self.new_seq_id(),
            prompt_len: request.prompt.len(),
            context: request.prompt,
            computed: 0,
            max_tokens: request.max_tokens,
            priority: request.priority,
            arrival: self.arrivals,
            sampler,
            detok: Detokenizer::new(request.stop),
            outbox,
            submitted,
            admitted: None,
            started_order: 0,
            last_token_at: None,
            first_token_at: None,
            gaps: Vec::new(),
            preemptions: 0,
            cached_tokens: 0,
            spec,
            constraint,
        };
        self.arrivals += 1;
        self.queue.push(seq.priority, seq.arrival, id);
        self.seqs.insert(id, seq);
    }

    fn new_seq_id(&mut self) -> SeqId {
        self.next_seq += 1;
        SeqId(self.next_seq)
    }

    /// Drops streams whose consumer went away or fell too far behind, and everything once the
    /// shutdown grace period is over.
    fn reap(&mut self) {
        let now = Instant::now();
        if self.shutdown_at.is_some_and(|t| now >= t) {
            self.end_all_for_shutdown();
            return;
        }
        let mut gone = Vec::new();
        let mut slow = Vec::new();
        for (&id, s) in self.seqs.iter_mut() {
            if s.outbox.is_closed() {
                gone.push(id);
                continue;
            }
            s.outbox.flush();
            let (pending, since) = s.outbox.backlog();
            if pending > self.cfg.max_pending_tokens
                || since.is_some_and(|t| now.duration_since(t) > self.cfg.max_consumer_stall)
            {
                slow.push(id);
            }
        }
        for id in gone {
            self.end(id, Outcome::Finish(FinishReason::Cancelled, None));
        }
        for id in slow {
            self.end(
                id,
                Outcome::Fail(
                    ErrorCode::SlowConsumer,
                    "the client did not read its stream fast enough".into(),
                ),
            );
        }
    }

    /// Moves waiting requests into the running batch while the controller's limit, the memory
    /// monitor and the KV pool allow (strict FCFS within a priority: the head blocks the rest).
    fn admit(&mut self) {
        let kv = self.engine.kv_stats();
        let pressure = self.memory.level(&kv);
        self.stats.pressure = pressure;
        if pressure < PressureLevel::High {
            let limit = self.controller.limits().max_running;
            while self.running.len() < limit {
                let Some(id) = self.queue.front() else { break };
                if !self.fits(id) {
                    break;
                }
                self.queue.pop_front();
                self.start(id);
            }
        }
        for (i, id) in self.queue.iter().enumerate() {
            if let Some(s) = self.seqs.get(&id) {
                s.outbox.set_position(Some(i + 1));
            }
        }
    }

    /// Whether the whole (re)computation of `id` fits the KV pool next to what running
    /// prefills still need, keeping a small watermark for decode growth.
    fn fits(&self, id: RequestId) -> bool {
        let Some(s) = self.seqs.get(&id) else {
            return true;
        };
        let kv = self.engine.kv_stats();
        let need = s.context.len().div_ceil(BLOCK_TOKENS);
        let reserved: usize = self
            .running
            .iter()
            .filter_map(|r| self.seqs.get(r))
            .filter(|r| r.pending() > 1)
            .map(|r| self.engine.blocks_needed(r.seq, r.pending()))
            .sum();
        let watermark = (kv.total_blocks / 100).max(1);
        let available = kv.available_blocks();
        need + reserved + watermark <= available || (self.running.is_empty() && need <= available)
    }

    fn start(&mut self, id: RequestId) {
        let Some(s) = self.seqs.get_mut(&id) else {
            return;
        };
        if let Err(e) = self.engine.add_sequence(s.seq) {
            let msg = e.to_string();
            self.end(id, Outcome::Fail(ErrorCode::Internal, msg));
            return;
        }
        let cached = if self.cfg.prefix_cache {
            self.engine.attach_prefix(s.seq, &s.context).unwrap_or(0)
        } else {
            0
        };
        s.computed = cached;
        self.stats.prefix_hit_tokens += cached as u64;
        self.admissions += 1;
        s.started_order = self.admissions;
        s.outbox.set_position(None);
        if s.admitted.is_none() {
            let now = Instant::now();
            s.admitted = Some(now);
            s.cached_tokens = cached.min(s.prompt_len);
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            self.stats.admitted += 1;
            s.outbox.send(Event::Started {
                queue_time: now.saturating_duration_since(s.submitted),
                cached_tokens: s.cached_tokens,
            });
        }
        self.running.push(id);
    }

    /// Frees a running sequence's KV blocks and sends it back to the queue to be recomputed.
    fn preempt(&mut self, id: RequestId) {
        let new_id = self.new_seq_id();
        let Some(s) = self.seqs.get_mut(&id) else {
            return;
        };
        self.engine.free_sequence(s.seq);
        s.seq = new_id;
        s.computed = 0;
        s.preemptions += 1;
        self.stats.preemptions += 1;
        self.running.retain(|&r| r != id);
        if s.preemptions > self.cfg.max_preemptions {
            let msg = format!(
                "preempted {} times for lack of memory; the server is overloaded",
                s.preemptions
            );
            self.end(id, Outcome::Fail(ErrorCode::PreemptedTooOften, msg));
        } else {
            tracing::debug!(request = id, "preempted");
            self.queue.push(s.priority, s.arrival, id);
        }
    }

    fn preempt_newest(&mut self) -> bool {
        match self.running.last().copied() {
            Some(id) => {
                self.preempt(id);
                true
            }
            None => false,
        }
    }

    /// Plans and runs one step, then samples and delivers.
    fn step(&mut self) {
        if self.running.is_empty() {
            return;
        }
        if self.stats.pressure == PressureLevel::Critical && self.running.len() > 1 {
            self.preempt_newest();
        }
        // Decode tokens first: every running stream gets its token, preempting the newest
        // sequences if the pool cannot hold them.
        let (decode, decode_blocks) = loop {
            let decode: Vec<RequestId> = self
                .running
                .iter()
                .copied()
                .filter(|id| self.seqs.get(id).is_some_and(|s| s.pending() == 1))
                .collect();
            let blocks: usize = decode
                .iter()
                .filter_map(|id| self.seqs.get(id))
                .map(|s| self.engine.blocks_needed(s.seq, 1))
                .sum();
            if blocks <= self.engine.kv_stats().available_blocks() || !self.preempt_newest() {
                break (decode, blocks);
            }
        };
        let mut plan: Vec<Planned> = Vec::with_capacity(self.running.len());
        for &id in &decode {
            if let Some(s) = self.seqs.get(&id) {
                plan.push(Planned {
                    id,
                    start: s.computed,
                    len: 1,
                    draft: Vec::new(),
                    sample: true,
                });
            }
        }
        // Then prefill chunks, oldest first, in the time the decode rows leave (the controller's
        // cost model) and the blocks the pool has.
        let decode_attended: f64 = decode
            .iter()
            .filter_map(|id| self.seqs.get(id))
            .map(|s| (s.computed + 1) as f64)
            .sum();
        let c = &self.controller;
        let (min_chunk, max_chunk) = (self.cfg.min_prefill_chunk, self.cfg.max_prefill_chunk);
        let unbounded = !self.cfg.adaptive || decode.is_empty();
        let mut remaining = c.budget_ms() - c.predict_ms(decode.len(), decode_attended);
        let mut prefill_tokens = 0;
        let mut attended_total = decode_attended;
        let mut blocks_left = self
            .engine
            .kv_stats()
            .available_blocks()
            .saturating_sub(decode_blocks);
        for &id in &self.running {
            if prefill_tokens >= max_chunk {
                break;
            }
            let Some(s) = self.seqs.get(&id) else {
                continue;
            };
            if s.pending() <= 1 {
                continue;
            }
            let start = s.computed;
            let mut n = if unbounded {
                max_chunk
            } else {
                c.chunk_for(remaining, start)
            };
            if prefill_tokens == 0 {
                n = n.max(min_chunk); // prompts always progress
            }
            let held = self.engine.seq_len(s.seq).unwrap_or(0);
            let room_in_last = held.div_ceil(BLOCK_TOKENS) * BLOCK_TOKENS - held;
            let fit = room_in_last + blocks_left * BLOCK_TOKENS;
            let n = n.min(max_chunk - prefill_tokens).min(s.pending()).min(fit);
            if n == 0 {
                break;
            }
            blocks_left -= self.engine.blocks_needed(s.seq, n);
            remaining -= c.chunk_ms(n, start);
            prefill_tokens += n;
            attended_total += attended(start, n);
            plan.push(Planned {
                id,
                start,
                len: n,
                draft: Vec::new(),
                sample: start + n == s.context.len(),
            });
        }
        if plan.is_empty() {
            return;
        }
        let planned_blocks = self
            .engine
            .kv_stats()
            .available_blocks()
            .saturating_sub(blocks_left);
        let step_ms = c.predict_ms(decode.len() + prefill_tokens, attended_total);
        let (draft_rows, draft_attended) =
            self.add_drafts(&mut plan[..decode.len()], step_ms, planned_blocks);
        let sample = StepSample {
            decode_rows: decode.len(),
            draft_rows,
            prefill_tokens,
            attended: attended_total + draft_attended,
            duration_ms: 0.0,
            interval_ms: None,
        };
        let outcomes = self.run_step(&plan, sample);
        for (id, outcome) in outcomes {
            self.end(id, outcome);
        }
    }

    /// Gives the decode rows in `plan` speculative drafts where they pay: each speculating
    /// sequence offers what its n-gram index proposes (within its token and context limits),
    /// the controller's cost model picks the lengths ([`plan_drafts`], within the step budget
    /// when adaptive), and drafts take only free KV blocks (never evicting the prefix cache, so
    /// a rejected draft leaves the pool as plain decoding would). `step_ms` is the step's
    /// predicted time without drafts and `planned_blocks` the blocks it already takes. Returns
    /// the draft rows and the positions they attend.
    fn add_drafts(
        &mut self,
        decode: &mut [Planned],
        step_ms: f64,
        planned_blocks: usize,
    ) -> (usize, f64) {
        if self.cfg.spec.mode == SpecMode::Off || decode.is_empty() {
            return (0, 0.0);
        }
        let n_ctx = self.engine.context_length();
        let mut candidates = Vec::new();
        let mut offered_by = Vec::new();
        for (i, p) in decode.iter_mut().enumerate() {
            let Some(s) = self.seqs.get_mut(&p.id) else {
                continue;
            };
            // A step yields at most draft + 1 tokens, and the KV holds the context plus draft.
            let room = s
                .max_tokens
                .saturating_sub(s.generated() + 1)
                .min(n_ctx.saturating_sub(s.context.len()))
                .min(self.cfg.spec.max_draft);
            let Some(spec) = s.spec.as_mut() else {
                continue;
            };
            if room > 0 {
                spec.index.draft(&s.context, room, &mut p.draft);
            }
            // A constrained sequence drafts only what its constraint allows (verification
            // masks each position anyway; this keeps doomed rows out of the step).
            if let Some(c) = s.constraint.as_mut().filter(|c| c.active()) {
                let valid = c.state.valid_prefix(&p.draft).unwrap_or(0);
                p.draft.truncate(valid);
            }
            if p.draft.is_empty() {
                spec.acceptance.idle();
                continue;
            }
            candidates.push(DraftCandidate {
                attended: s.computed + 1,
                rate: spec.acceptance.rate(),
                offered: p.draft.len(),
            });
            offered_by.push(i);
        }
        if candidates.is_empty() {
            return (0, 0.0);
        }
        let budget = self
            .controller
            .adaptive()
            .then(|| self.controller.budget_ms());
        let lengths = plan_drafts(
            self.controller.step_cost(),
            decode.len() as f64,
            step_ms,
            budget,
            &candidates,
        );
        let mut free = self
            .engine
            .kv_stats()
            .free_blocks
            .saturating_sub(planned_blocks);
        let (mut rows, mut attended_total) = (0, 0.0);
        for (&i, mut k) in offered_by.iter().zip(lengths) {
            let p = &mut decode[i];
            let Some(s) = self.seqs.get_mut(&p.id) else {
                continue;
            };
            let base = self.engine.blocks_needed(s.seq, 1);
            let extra = |k: usize| self.engine.blocks_needed(s.seq, 1 + k) - base;
            while k > 0 && extra(k) > free {
                k -= 1;
            }
            free -= extra(k);
            p.draft.truncate(k);
            if k == 0 {
                if let Some(spec) = s.spec.as_mut() {
                    spec.acceptance.idle();
                }
                continue;
            }
            rows += k;
            attended_total += attended(s.computed + 1, k);
        }
        (rows, attended_total)
    }

    fn run_step(&mut self, plan: &[Planned], sample: StepSample) -> Vec<(RequestId, Outcome)> {
        let mut outcomes = Vec::new();
        // A drafting row's tokens: its decode token, then the draft.
        let drafted: Vec<Vec<u32>> = plan
            .iter()
            .map(|p| match self.seqs.get(&p.id) {
                Some(s) if !p.draft.is_empty() => {
                    let mut t = s.context[p.start..p.start + p.len].to_vec();
                    t.extend_from_slice(&p.draft);
                    t
                }
                _ => Vec::new(),
            })
            .collect();
        // The masks of constrained sequences that sample in this step: on another thread while
        // the forward pass runs when a core is spare (they depend only on tokens already
        // committed), else before it (see `masks_beside_step`).
        let mut constrained: Vec<(RequestId, ConstraintSlot)> = plan
            .iter()
            .filter(|p| p.sample)
            .filter_map(|p| {
                let slot = &mut self.seqs.get_mut(&p.id)?.constraint;
                let c = slot.take_if(|c| c.active())?;
                Some((p.id, c))
            })
            .collect();
        let items: Vec<StepItem<'_>> = plan
            .iter()
            .zip(&drafted)
            .filter_map(|(p, d)| {
                let s = self.seqs.get(&p.id)?;
                Some(StepItem {
                    seq: s.seq,
                    tokens: if p.draft.is_empty() {
                        &s.context[p.start..p.start + p.len]
                    } else {
                        d
                    },
                    logits: p.logits(),
                })
            })
            .collect();
        let t0 = Instant::now();
        let interval_ms = match self.last_decode_step.take() {
            Some(prev) if sample.decode_rows > 0 => {
                Some(t0.duration_since(prev).as_secs_f64() * 1e3)
            }
            _ => None,
        };
        if sample.decode_rows > 0 {
            self.last_decode_step = Some(t0);
        }
        let engine = &mut self.engine;
        let (stepped, constrained) = if !self.masks_beside_step {
            for (_, c) in &mut constrained {
                // An error here resurfaces (and fails the sequence) when sampling.
                let _ = c.state.mask();
            }
            (engine.step(&items), constrained)
        } else {
            std::thread::scope(|scope| {
                let masks = (!constrained.is_empty()).then(|| {
                    scope.spawn(move || {
                        for (_, c) in &mut constrained {
                            // An error here resurfaces (and fails the sequence) when sampling.
                            let _ = c.state.mask();
                        }
                        constrained
                    })
                });
                let stepped = engine.step(&items);
                let constrained = match masks {
                    Some(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                    None => Vec::new(),
                };
                (stepped, constrained)
            })
        };
        for (id, c) in constrained {
            if let Some(s) = self.seqs.get_mut(&id) {
                s.constraint = Some(c);
            }
        }
        let logits = match stepped {
            Ok(l) => l,
            Err(e) => {
                // Planning keeps steps valid, so this is a bug: fail the step's sequences.
                tracing::error!(error = %e, "engine step failed");
                return plan
                    .iter()
                    .map(|p| (p.id, Outcome::Fail(ErrorCode::Internal, e.to_string())))
                    .collect();
            }
        };
        let duration = t0.elapsed();
        let now = Instant::now();
        let mut row = 0;
        let mut rollback = Vec::new();
        for p in plan {
            let Some(s) = self.seqs.get_mut(&p.id) else {
                continue;
            };
            if p.start < s.prompt_len {
                self.stats.prefill_tokens += p.len as u64;
            }
            let rows = p.logits();
            if rows == 0 {
                s.computed += p.len;
                continue;
            }
            let (verdict, pushed) =
                sample_rows(s, p, &logits, row, now, &self.tokenizer, &mut self.stats);
            if let Some(spec) = s.spec.as_ref().filter(|_| !p.draft.is_empty()) {
                self.spec_prior.observe(p.draft.len(), spec.last_accepted);
            }
            row += rows;
            if pushed < rows {
                rollback.push((p.id, s.seq, s.computed, verdict));
            } else if let Some(o) = verdict {
                outcomes.push((p.id, o));
            }
        }
        // Draft tokens past what was kept leave the KV cache (their blocks and prefix entries),
        // also when the sequence ends here: the pool is left as plain decoding would leave it.
        for (id, seq, len, verdict) in rollback {
            let verdict = match self.engine.truncate_sequence(seq, len) {
                Ok(()) => verdict,
                Err(e) => verdict.or(Some(Outcome::Fail(ErrorCode::Internal, e.to_string()))),
            };
            if let Some(o) = verdict {
                outcomes.push((id, o));
            }
        }
        let duration_ms = duration.as_secs_f64() * 1e3;
        tracing::trace!(
            decode_rows = sample.decode_rows,
            draft_rows = sample.draft_rows,
            prefill_tokens = sample.prefill_tokens,
            attended = sample.attended,
            duration_ms,
            interval_ms,
            headroom = self.controller.state().headroom,
            bias = self.controller.state().bias,
            fixed_ms = self.controller.state().fixed_ms,
            per_row_ms = self.controller.state().per_row_ms,
            "step"
        );
        self.controller.observe(StepSample {
            duration_ms,
            interval_ms,
            ..sample
        });
        self.stats.steps += 1;
        self.stats.last_step_ms = duration_ms;
        self.stats.last_decode_rows = sample.decode_rows;
        self.stats.last_prefill_tokens = sample.prefill_tokens;
        self.stats.last_draft_rows = sample.draft_rows;
        outcomes
    }

    /// Ends a request: frees its blocks and sends its terminal event.
    fn end(&mut self, id: RequestId, outcome: Outcome) {
        let Some(mut s) = self.seqs.remove(&id) else {
            return;
        };
        self.running.retain(|&r| r != id);
        self.queue.remove(id);
        self.engine.free_sequence(s.seq);
        if s.admitted.is_none() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
        // The published counts drop before the terminal event goes out: a client that has its
        // end never sees itself still running.
        {
            let mut shared = self.shared.stats();
            shared.running = self.running.len();
            shared.waiting = self.queue.len();
        }
        let now = Instant::now();
        match outcome {
            Outcome::Finish(reason, stop) => {
                let rest = s.detok.flush();
                if !rest.is_empty() && reason != FinishReason::Cancelled {
                    s.outbox.send(Event::Tokens {
                        tokens: Vec::new(),
                        text: rest,
                        sampled_at: now,
                    });
                }
                s.outbox.finish(Event::Finished {
                    reason,
                    stop,
                    usage: s.usage(),
                    timings: s.timings(now),
                });
                self.stats.count_finish(reason);
            }
            Outcome::Fail(code, message) => {
                tracing::warn!(request = id, code = code.as_str(), %message, "request failed");
                s.outbox.fail(Event::Error {
                    code,
                    message,
                    usage: s.usage(),
                });
                self.stats.count_error(code);
            }
        }
        self.completions.push_back(now);
        while self.completions.len() > 32
            || self
                .completions
                .front()
                .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.completions.pop_front();
        }
    }

    fn completion_rate(&self) -> f64 {
        match (self.completions.front(), self.completions.back()) {
            (Some(a), Some(b)) if self.completions.len() >= 2 => {
                let span = b.duration_since(*a).as_secs_f64();
                if span > 0.0 {
                    (self.completions.len() - 1) as f64 / span
                } else {
                    0.0
                }
            }
            _ => 0.0,
        }
    }

    /// Publishes the stats snapshot.
    fn publish(&mut self) {
        self.stats.running = self.running.len();
        self.stats.waiting = self.queue.len();
        self.stats.controller = self.controller.state();
        self.stats.kv = self.engine.kv_stats();
        self.stats.rss_bytes = self.memory.rss_bytes();
        self.stats.completion_rate = self.completion_rate();
        let mut shared = self.shared.stats();
        let (overload, invalid) = (shared.rejected_overload, shared.rejected_invalid);
        *shared = self.stats.clone();
        shared.rejected_overload = overload;
        shared.rejected_invalid = invalid;
    }
}

/// Samples a planned row's logits in order, as plain decoding would one step at a time, and
/// verifies its draft: each sample is kept, a draft token survives only while it equals the
/// sample at its position, and the first mismatch or ending token stops the row (the
/// sample there replaces the draft). Delivers the kept tokens as one event and moves the
/// sequence's computed length to what plain decoding would hold. Returns the outcome if
/// the sequence ended and how many tokens were kept.
fn sample_rows(
    s: &mut Sequence,
    p: &Planned,
    logits: &rill_engine::StepLogits<'_>,
    first_row: usize,
    now: Instant,
    tokenizer: &Tokenizer,
    stats: &mut SchedulerStats,
) -> (Option<Outcome>, usize) {
    s.computed = p.start + p.len - 1;
    let mut outcome = None;
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut pushed = 0;
    let mut accepted = 0;
    for j in 0..p.logits() {
        let l = logits.row(first_row + j);
        if !l.iter().all(|x| x.is_finite()) {
            outcome = Some(Outcome::Fail(
                ErrorCode::NumericalError,
                "the model produced non-finite logits for this sequence".into(),
            ));
            break;
        }
        let tok = match s.constraint.as_mut().filter(|c| c.active()) {
            Some(c) => {
                c.row.clear();
                c.row.extend_from_slice(l);
                if let Err(e) = c.state.apply_to_logits(&mut c.row) {
                    outcome = Some(constraint_failure(e));
                    break;
                }
                s.sampler.sample(&c.row)
            }
            None => s.sampler.sample(l),
        };
        let id = tok.id;
        if let Some(c) = s.constraint.as_mut().filter(|c| c.active()) {
            if let Err(e) = c.state.commit(id) {
                outcome = Some(constraint_failure(e));
                break;
            }
        }
        s.sampler.accept(&[id]);
        s.context.push(id);
        s.computed += 1;
        pushed += 1;
        stats.generated_tokens += 1;
        let matches_draft = p.draft.get(j) == Some(&id);
        accepted += usize::from(matches_draft);
        if tokenizer.is_stop(id) && !s.sampler.params().ignore_eos {
            outcome = Some(Outcome::Finish(FinishReason::Stop, None));
            break;
        }
        if let Some(c) = s.constraint.as_mut().filter(|c| !c.active()) {
            if let Err(e) = c.observe(tokenizer.token_bytes(id)) {
                outcome = Some(constraint_failure(e));
                break;
            }
        }
        let rel = s.detok.push(tokenizer.token_bytes(id));
        tokens.push(tok);
        text.push_str(&rel.text);
        if let Some(stop) = rel.stopped {
            outcome = Some(Outcome::Finish(FinishReason::Stop, Some(stop)));
            break;
        }
        if s.constraint.as_ref().is_some_and(|c| c.state.is_finished()) {
            // The output is complete: only a stop token could follow.
            outcome = Some(Outcome::Finish(FinishReason::Stop, None));
            break;
        }
        if s.generated() >= s.max_tokens {
            outcome = Some(Outcome::Finish(FinishReason::Length, None));
            break;
        }
        if !matches_draft {
            break;
        }
    }
    if pushed > 0 {
        // A burst of n tokens counts n gaps of an n-th of the wait each.
        match s.last_token_at {
            Some(prev) => {
                let gap = now.saturating_duration_since(prev).as_secs_f32() * 1e3;
                let each = gap / pushed as f32;
                s.gaps.extend(std::iter::repeat_n(each, pushed));
            }
            None => {
                s.first_token_at = Some(now);
                s.gaps.extend(std::iter::repeat_n(0.0, pushed - 1));
            }
        }
        s.last_token_at = Some(now);
    }
    if !tokens.is_empty() {
        s.outbox.send(Event::Tokens {
            tokens,
            text,
            sampled_at: now,
        });
    }
    if !p.draft.is_empty() {
        if let Some(spec) = s.spec.as_mut() {
            spec.acceptance.observe(p.draft.len(), accepted);
            spec.last_accepted = accepted;
            spec.drafted += p.draft.len() as u64;
            spec.accepted += accepted as u64;
        }
        stats.count_draft(p.draft.len(), accepted);
    }
    (outcome, pushed)
}

/// A constrained sequence that cannot go on: the matcher failed, or the model's row allowed
/// nothing the constraint allows.
fn constraint_failure(e: rill_engine::ConstraintError) -> Outcome {
    Outcome::Fail(
        ErrorCode::Internal,
        format!("the output constraint could not be followed: {e}"),
    )
}
