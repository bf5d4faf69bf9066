//! The paged KV cache: logical blocks of [`BLOCK_TOKENS`] tokens, each backed by one *page* per
//! layer (that layer's keys and values of the block's tokens, in the cache's [`KvType`], stored
//! by [`KvStore`]), a block table per sequence, and the prefix cache.
//!
//! Blocks are reference-counted. Every block a sequence fills completely is registered in the
//! prefix cache under a chained hash of all tokens up to its end (so a block is only ever reused
//! behind the exact same prefix); the cache holds one reference of its own. A new sequence whose
//! prompt starts with cached blocks attaches them instead of recomputing them
//! ([`KvCache::attach_prefix`]). A cached block nobody else holds is *evictable*: it still counts
//! as available and is reclaimed least-recently-used first when the free pages run out. Shared
//! blocks are never written: a sequence only appends past its length, and truncating into a
//! shared block copies it first.
//!
//! Sliding-window layers (Gemma 3's local layers) keep only what a future query can see: once a
//! sequence has moved more than its window (plus [`ROLLBACK_SLACK`] tokens) past a block, the
//! block's pages of the windowed layers go back to the pool while its global-layer pages stay.
//! A block shared by several sequences keeps them until none of their windows covers it; a
//! sequence that ends leaves them to the prefix cache (reclaimed with the block). A prefix is
//! attached only as far as the window before the attach point still has its pages.
//!
//! Budgets count *block equivalents* (one page per layer): a model without windows counts
//! exactly in blocks, and the pages a window frees make room for other blocks.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use crate::error::{EngineError, Result};
pub use crate::kv_store::{AttendQuery, KvRotation, KvStore, KvType};
use crate::quant::Kernels;

/// Tokens per KV block.
pub const BLOCK_TOKENS: usize = 16;

/// Tokens a sliding-window sequence can still be truncated by (speculative rollback): the
/// windowed layers keep this many keys beyond the window.
pub const ROLLBACK_SLACK: usize = BLOCK_TOKENS;

/// A sequence of the KV cache (a request's context), named by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// A logical block of [`BLOCK_TOKENS`] token slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockId(pub u32);

/// A page that was released (a windowed layer's page of a block out of every window).
const NO_PAGE: u32 = u32::MAX;

/// Pool usage, for schedulers and metrics. Block counts are block equivalents: pages / layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvStats {
    /// Block equivalents in the pool.
    pub total_blocks: usize,
    /// Free pages, in block equivalents.
    pub free_blocks: usize,
    /// Pages held only by the prefix cache (reclaimable on demand), in block equivalents.
    pub evictable_blocks: usize,
    /// Blocks registered in the prefix cache (shared or evictable).
    pub cached_blocks: usize,
    /// Tokens per block ([`BLOCK_TOKENS`]).
    pub block_tokens: usize,
    /// Bytes of one block equivalent (a page per layer).
    pub bytes_per_block: usize,
    /// The element format of keys and values.
    pub kv_type: KvType,
    /// Live sequences.
    pub sequences: usize,
    /// Cumulative blocks reused from the prefix cache instead of being recomputed.
    pub prefix_hit_blocks: u64,
    /// Cumulative cached blocks reclaimed for other use.
    pub evictions: u64,
    /// Pages in the pool (one layer's block each) and how many are free.
    pub total_pages: usize,
    /// Pages free now (not counting evictable ones).
    pub free_pages: usize,
    /// Cumulative windowed-layer pages returned because every window had moved past them.
    pub window_pages_released: u64,
}

impl KvStats {
    /// Blocks a new allocation can use: free plus evictable.
    pub fn available_blocks(&self) -> usize {
        self.free_blocks + self.evictable_blocks
    }

    /// Blocks held by live sequences.
    pub fn used_blocks(&self) -> usize {
        self.total_blocks - self.available_blocks()
    }
}

/// Geometry and format of the cache.
#[derive(Debug, Clone, Copy)]
pub struct KvLayout {
    /// Transformer layers (one page each per block).
    pub n_layers: usize,
    /// n_kv_heads * head_dim
    pub kv_dim: usize,
    /// Elements per KV head.
    pub head_dim: usize,
    /// The element format of keys and values.
    pub kv_type: KvType,
}

impl KvLayout {
    /// Bytes of one block across all layers, keys and values.
    pub fn bytes_per_block(&self) -> usize {
        self.n_layers * self.bytes_per_page()
    }

    /// Bytes of one layer's block, keys and values.
    pub fn bytes_per_page(&self) -> usize {
        2 * BLOCK_TOKENS * self.kv_type.row_bytes(self.kv_dim)
    }

    /// Tokens of KV that `bytes` hold (whole blocks).
    pub fn tokens_in(&self, bytes: usize) -> usize {
        bytes / self.bytes_per_block() * BLOCK_TOKENS
    }
}

/// Chain hash of the empty prefix.
const ROOT_HASH: u64 = 0x9e37_79b9_7f4a_7c15;

fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: deterministic across runs; entries are verified on lookup, so a
    // collision can only cost a cache miss, never a wrong reuse.
    let mut h = std::hash::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[derive(Debug, Default)]
struct SeqState {
    blocks: Vec<BlockId>,
    /// Every token of the sequence (attached prefix included): what a truncated sequence
    /// registers again once its partial block fills.
    tokens: Vec<u32>,
    /// Chain hash after each full block (`tokens.len() / BLOCK_TOKENS` of them).
    hashes: Vec<u64>,
    /// First block index this sequence's window still covers (it counts in `window_holders`
    /// of blocks from here on). 0 without windowed layers.
    window_from: usize,
}

impl SeqState {
    fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Chain hash after the last full block.
    fn hash(&self) -> u64 {
        self.hashes.last().copied().unwrap_or(ROOT_HASH)
    }
}

#[derive(Debug)]
struct CachedBlock {
    block: BlockId,
    parent: u64,
    tokens: [u32; BLOCK_TOKENS],
}

/// The block pool, the sequences' block tables and the prefix cache (see the module doc).
pub struct KvCache {
    /// Geometry and format.
    pub layout: KvLayout,
    /// Keys and values of every page, `BLOCK_TOKENS` token slots each.
    store: KvStore,
    /// Layers with a sliding window (their pages can be released).
    windowed: Vec<usize>,
    /// The windowed layers' window (the largest, if they differ); None: every layer global.
    window: Option<usize>,
    /// Per logical block: references (sequences, plus one while cached).
    refcount: Vec<u32>,
    /// `pages[b * n_layers + l]`: the page of layer `l` of block `b`, or `NO_PAGE`.
    pages: Vec<u32>,
    /// Per block: live sequences whose window still covers it.
    window_holders: Vec<u32>,
    free_block_ids: Vec<BlockId>,
    free_pages: Vec<u32>,
    total_pages: usize,
    /// Pages of the blocks in `lru` (held by the prefix cache alone).
    evictable_pages: usize,
    seqs: HashMap<SeqId, SeqState>,
    /// Prefix cache: chain hash -> block.
    prefix: HashMap<u64, CachedBlock>,
    /// The chain hash a block is cached under.
    block_hash: Vec<Option<u64>>,
    /// Evictable blocks by last use: (tick, block).
    lru: BTreeSet<(u64, u32)>,
    last_use: Vec<u64>,
    tick: u64,
    prefix_hit_blocks: u64,
    evictions: u64,
    window_pages_released: u64,
}

impl KvCache {
    /// A pool of `total_blocks` block equivalents (a page per layer each). `windows[l]` is layer
    /// `l`'s sliding window (None: it attends to everything). The layout's head dim must suit
    /// its KV type ([`KvType::check_head_dim`]).
    pub fn new(layout: KvLayout, windows: &[Option<usize>], total_blocks: usize) -> Result<Self> {
        layout.kv_type.check_head_dim(layout.head_dim)?;
        if windows.len() != layout.n_layers {
            return Err(EngineError::InvalidInput(format!(
                "{} layer windows for {} layers",
                windows.len(),
                layout.n_layers
            )));
        }
        let total_pages = total_blocks * layout.n_layers;
        if total_pages >= NO_PAGE as usize {
            return Err(EngineError::InvalidInput(format!(
                "a KV cache of {total_pages} pages is too large"
            )));
        }
        let windowed = (0..layout.n_layers)
            .filter(|&l| windows[l].is_some())
            .collect();
        Ok(Self {
            layout,
            store: KvStore::new(
                layout.kv_type,
                layout.kv_dim,
                layout.head_dim,
                total_pages * BLOCK_TOKENS,
            ),
            windowed,
            window: windows.iter().flatten().copied().max(),
            refcount: Vec::new(),
            pages: Vec::new(),
            window_holders: Vec::new(),
            free_block_ids: Vec::new(),
            // Pop from the end: hand out low pages first.
            free_pages: (0..total_pages as u32).rev().collect(),
            total_pages,
            evictable_pages: 0,
            seqs: HashMap::new(),
            prefix: HashMap::new(),
            block_hash: Vec::new(),
            lru: BTreeSet::new(),
            last_use: Vec::new(),
            tick: 0,
            prefix_hit_blocks: 0,
            evictions: 0,
            window_pages_released: 0,
        })
    }

    /// Pool usage now.
    pub fn stats(&self) -> KvStats {
        let l = self.layout.n_layers.max(1);
        let available = self.available_pages() / l;
        let free = self.free_pages.len() / l;
        KvStats {
            total_blocks: self.total_pages / l,
            free_blocks: free,
            evictable_blocks: available - free,
            cached_blocks: self.prefix.len(),
            block_tokens: BLOCK_TOKENS,
            bytes_per_block: self.layout.bytes_per_block(),
            kv_type: self.layout.kv_type,
            sequences: self.seqs.len(),
            prefix_hit_blocks: self.prefix_hit_blocks,
            evictions: self.evictions,
            total_pages: self.total_pages,
            free_pages: self.free_pages.len(),
            window_pages_released: self.window_pages_released,
        }
    }

    fn available_pages(&self) -> usize {
        self.free_pages.len() + self.evictable_pages
    }

    /// The first block a sequence of `len` tokens still needs in its windowed layers: the one
    /// holding key position `len - window - ROLLBACK_SLACK + 1` (the earliest a query at
    /// `len` or later can see after a rollback of up to `ROLLBACK_SLACK` tokens).
    fn first_windowed_block(&self, len: usize) -> usize {
        match self.window {
            Some(w) => (len + 1).saturating_sub(w + ROLLBACK_SLACK) / BLOCK_TOKENS,
            None => 0,
        }
    }

    /// The first block a query at `len` can see in the windowed layers (no rollback slack):
    /// what an attached prefix or a truncated sequence must still hold.
    fn first_needed_block(&self, len: usize) -> usize {
        match self.window {
            Some(w) => (len + 1).saturating_sub(w) / BLOCK_TOKENS,
            None => 0,
        }
    }

    fn page_index(&self, b: BlockId, layer: usize) -> usize {
        b.0 as usize * self.layout.n_layers + layer
    }

    /// Pages block `b` holds.
    fn present_pages(&self, b: BlockId) -> usize {
        let i = self.page_index(b, 0);
        self.pages[i..i + self.layout.n_layers]
            .iter()
            .filter(|&&p| p != NO_PAGE)
            .count()
    }

    /// Whether block `b` still has its windowed layers' pages.
    fn has_window_pages(&self, b: BlockId) -> bool {
        self.windowed
            .iter()
            .all(|&l| self.pages[self.page_index(b, l)] != NO_PAGE)
    }

    /// Starts an empty sequence ([`EngineError::DuplicateSequence`] if `id` exists).
    pub fn add_sequence(&mut self, id: SeqId) -> Result<()> {
        if self.seqs.contains_key(&id) {
            return Err(EngineError::DuplicateSequence(id.0));
        }
        self.seqs.insert(id, SeqState::default());
        Ok(())
    }

    /// Drops a sequence and releases its blocks. Unknown ids are ignored (idempotent).
    pub fn free_sequence(&mut self, id: SeqId) {
        if let Some(s) = self.seqs.remove(&id) {
            if self.window.is_some() {
                // The blocks keep their windowed pages for the prefix cache.
                for b in &s.blocks[s.window_from.min(s.blocks.len())..] {
                    self.window_holders[b.0 as usize] -= 1;
                }
            }
            for b in s.blocks {
                self.release(b);
            }
        }
    }

    /// Attaches the longest cached prefix of `tokens` to an empty sequence, leaving at least one
    /// token to compute (its logits are needed), and only as far as the window before the end
    /// of the prefix still has its pages. Returns the number of tokens reused.
    pub fn attach_prefix(&mut self, id: SeqId, tokens: &[u32]) -> Result<usize> {
        let s = self
            .seqs
            .get(&id)
            .ok_or(EngineError::UnknownSequence(id.0))?;
        if s.len() != 0 {
            return Err(EngineError::InvalidInput(format!(
                "sequence {} is not empty; a prefix attaches only to a new sequence",
                id.0
            )));
        }
        let max_blocks = tokens.len().saturating_sub(1) / BLOCK_TOKENS;
        let mut hash = ROOT_HASH;
        let mut found = Vec::new();
        for chunk in tokens.chunks_exact(BLOCK_TOKENS).take(max_blocks) {
            let h = chain_hash(hash, chunk);
            match self.prefix.get(&h) {
                Some(c) if c.parent == hash && c.tokens[..] == *chunk => found.push((c.block, h)),
                _ => break,
            }
            hash = h;
        }
        // Shorten until the windowed layers hold every block the next query can see.
        while let Some(n) = (!found.is_empty()).then_some(found.len()) {
            let from = self.first_needed_block(n * BLOCK_TOKENS);
            if found[from..].iter().all(|&(b, _)| self.has_window_pages(b)) {
                break;
            }
            found.pop();
        }
        // Touch leaf first so that parents carry the newer tick and outlive their children.
        for &(b, _) in found.iter().rev() {
            self.retain(b);
        }
        let len = found.len() * BLOCK_TOKENS;
        // Cover the rollback slack too where those blocks still have their pages.
        let mut window_from = self.first_windowed_block(len);
        while window_from < self.first_needed_block(len)
            && !self.has_window_pages(found[window_from].0)
        {
            window_from += 1;
        }
        if self.window.is_some() {
            for &(b, _) in &found[window_from..] {
                self.window_holders[b.0 as usize] += 1;
            }
        }
        let s = self
            .seqs
            .get_mut(&id)
            .expect("attach_prefix looked the sequence up above");
        for &(b, h) in &found {
            s.blocks.push(b);
            s.hashes.push(h);
        }
        s.tokens.extend_from_slice(&tokens[..len]);
        s.window_from = window_from;
        self.prefix_hit_blocks += found.len() as u64;
        Ok(len)
    }

    /// Shortens a sequence to `len` tokens (e.g. rejected speculative tokens), freeing blocks
    /// no longer needed. A block that loses tokens leaves the prefix cache if this sequence was
    /// its only holder (its cached content held tokens the sequence no longer has), so a
    /// rollback leaves the cache as if those tokens had never been computed; a kept partial
    /// block that is still shared is copied first. A sequence with windowed layers can go back
    /// at most [`ROLLBACK_SLACK`] tokens past what its window released; further is refused
    /// (nothing changed), as is a rollback whose shared partial block cannot get the pages of
    /// its copy ([`EngineError::OutOfBlocks`]).
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        let s = self
            .seqs
            .get(&id)
            .ok_or(EngineError::UnknownSequence(id.0))?;
        if len >= s.len() {
            return Ok(());
        }
        let keep = len.div_ceil(BLOCK_TOKENS);
        let old_from = s.window_from;
        // The windowed layers must still hold what a query at `len` sees; the sequence's
        // window covers those blocks again.
        let need = self.first_needed_block(len);
        let back = need.min(old_from)..old_from.min(keep);
        if !s.blocks[back.clone()]
            .iter()
            .all(|&b| self.has_window_pages(b))
        {
            return Err(EngineError::InvalidInput(format!(
                "sequence {} cannot be truncated from {} to {len} tokens: its sliding-window \
                 layers released the keys that far back",
                id.0,
                s.len()
            )));
        }
        // A kept partial block that stays shared is copied below: refuse now, before anything
        // changes, if the pool cannot give the copy its pages even with what the dropped
        // blocks return (the sequence would otherwise be left truncated onto a shared block).
        let layers = self.layout.n_layers;
        if !len.is_multiple_of(BLOCK_TOKENS) && self.after_unregister(s.blocks[keep - 1]).0 > 1 {
            let returned: usize = s.blocks[keep..]
                .iter()
                .filter(|&&b| match self.after_unregister(b) {
                    (1, _) => true,        // freed
                    (2, cached) => cached, // left to the prefix cache alone: evictable
                    _ => false,
                })
                .map(|&b| self.present_pages(b))
                .sum();
            if self.available_pages() + returned < layers {
                return Err(EngineError::OutOfBlocks {
                    needed: 1,
                    free: self.available_pages() / layers,
                });
            }
        }
        let losing: Vec<BlockId> = s.blocks[len / BLOCK_TOKENS..].to_vec();
        let covered_again: Vec<BlockId> = s.blocks[back].to_vec();
        for b in losing {
            self.unregister_private(b);
        }
        for b in covered_again {
            self.window_holders[b.0 as usize] += 1;
        }
        let s = self
            .seqs
            .get_mut(&id)
            .expect("truncate looked the sequence up above");
        s.window_from = old_from.min(need);
        s.tokens.truncate(len);
        s.hashes.truncate(len / BLOCK_TOKENS);
        let dropped: Vec<BlockId> = s.blocks.drain(keep..).collect();
        // Dropped blocks the window covered lose this holder.
        let dropped_from = old_from.max(keep);
        let partial = (!len.is_multiple_of(BLOCK_TOKENS)).then(|| s.blocks[keep - 1]);
        if self.window.is_some() {
            for (j, b) in dropped.iter().enumerate() {
                if keep + j >= dropped_from {
                    self.window_holders[b.0 as usize] -= 1;
                }
            }
        }
        for b in dropped {
            self.release(b);
        }
        if let Some(b) = partial {
            if self.refcount[b.0 as usize] > 1 {
                self.copy_on_write(id, keep - 1);
            }
        }
        Ok(())
    }

    /// Block `b`'s references and whether it stays cached once [`Self::unregister_private`]
    /// has run on it.
    fn after_unregister(&self, b: BlockId) -> (u32, bool) {
        let i = b.0 as usize;
        match (self.refcount[i], self.block_hash[i].is_some()) {
            (2, true) => (1, false),
            (n, cached) => (n, cached),
        }
    }

    /// Takes block `b` out of the prefix cache if it is registered and one sequence is its only
    /// other holder (the caller's): its content is about to change.
    fn unregister_private(&mut self, b: BlockId) {
        let i = b.0 as usize;
        if self.refcount[i] != 2 {
            return;
        }
        if let Some(h) = self.block_hash[i].take() {
            self.prefix.remove(&h);
            self.refcount[i] -= 1;
        }
    }

    /// Replaces block `idx` of a sequence by a private copy. The caller checked that the pool
    /// has the copy's pages.
    fn copy_on_write(&mut self, id: SeqId, idx: usize) {
        let layers = self.layout.n_layers;
        let new = self.take_block();
        let s = self
            .seqs
            .get_mut(&id)
            .expect("copy_on_write's caller holds the sequence");
        let old = std::mem::replace(&mut s.blocks[idx], new);
        let covered = idx >= s.window_from;
        for l in 0..layers {
            let (src, dst) = (self.page_index(old, l), self.page_index(new, l));
            if self.pages[src] != NO_PAGE {
                self.store.copy_slots(
                    self.pages[src] as usize * BLOCK_TOKENS,
                    self.pages[dst] as usize * BLOCK_TOKENS,
                    BLOCK_TOKENS,
                );
            }
        }
        if self.window.is_some() && covered {
            self.window_holders[old.0 as usize] -= 1;
            self.window_holders[new.0 as usize] += 1;
        }
        self.release(old);
    }

    /// A free page, evicting the least recently used cached block if none is free. The caller
    /// checked `available_pages()`.
    fn take_page(&mut self) -> u32 {
        while self.free_pages.is_empty() && self.evict_lru() {
            self.evictions += 1;
        }
        self.free_pages
            .pop()
            .expect("callers check available_pages() before taking pages")
    }

    /// Frees the least recently used evictable block; false if there is none.
    fn evict_lru(&mut self) -> bool {
        let Some((_, b)) = self.lru.pop_first() else {
            return false;
        };
        let b = BlockId(b);
        if let Some(h) = self.block_hash[b.0 as usize].take() {
            self.prefix.remove(&h);
        }
        self.evictable_pages -= self.present_pages(b);
        self.refcount[b.0 as usize] = 0;
        self.free_block(b);
        true
    }

    /// A new block (one reference) with a page for every layer. The caller checked that
    /// `n_layers` pages are available.
    fn take_block(&mut self) -> BlockId {
        let layers = self.layout.n_layers;
        let b = match self.free_block_ids.pop() {
            Some(b) => b,
            None => {
                let b = BlockId(self.refcount.len() as u32);
                self.refcount.push(0);
                self.pages.extend(std::iter::repeat_n(NO_PAGE, layers));
                self.window_holders.push(0);
                self.block_hash.push(None);
                self.last_use.push(0);
                b
            }
        };
        for l in 0..layers {
            let p = self.take_page();
            let i = self.page_index(b, l);
            self.pages[i] = p;
        }
        self.refcount[b.0 as usize] = 1;
        self.window_holders[b.0 as usize] = 0;
        b
    }

    /// Returns every page of an unreferenced block, and its id.
    fn free_block(&mut self, b: BlockId) {
        for l in 0..self.layout.n_layers {
            let i = self.page_index(b, l);
            let p = std::mem::replace(&mut self.pages[i], NO_PAGE);
            if p != NO_PAGE {
                self.free_pages.push(p);
            }
        }
        self.free_block_ids.push(b);
    }

    fn retain(&mut self, b: BlockId) {
        let i = b.0 as usize;
        if self.refcount[i] == 1 && self.block_hash[i].is_some() {
            self.lru.remove(&(self.last_use[i], b.0));
            self.evictable_pages -= self.present_pages(b);
        }
        self.refcount[i] += 1;
        self.tick += 1;
        self.last_use[i] = self.tick;
    }

    fn release(&mut self, b: BlockId) {
        let i = b.0 as usize;
        self.refcount[i] -= 1;
        match self.refcount[i] {
            0 => self.free_block(b),
            1 if self.block_hash[i].is_some() => {
                self.lru.insert((self.last_use[i], b.0));
                self.evictable_pages += self.present_pages(b);
            }
            _ => {}
        }
    }

    /// Blocks (by index in the sequence) whose windowed pages `id` no longer needs at its
    /// current length, with whether the sequence is their last window holder.
    fn out_of_window(&self, s: &SeqState) -> std::ops::Range<usize> {
        let to = self.first_windowed_block(s.len()).min(s.blocks.len());
        s.window_from.min(to)..to
    }

    /// Moves the sequence's window forward: blocks it has left lose a holder, and a block with
    /// no holder left returns its windowed layers' pages. The caller checked that `id` exists.
    fn slide_window(&mut self, id: SeqId) {
        let s = self
            .seqs
            .get(&id)
            .expect("slide_window's caller checked the sequence");
        let range = self.out_of_window(s);
        if range.is_empty() {
            return;
        }
        let blocks: Vec<BlockId> = s.blocks[range.clone()].to_vec();
        for b in blocks {
            let i = b.0 as usize;
            self.window_holders[i] -= 1;
            if self.window_holders[i] == 0 {
                for k in 0..self.windowed.len() {
                    let pi = self.page_index(b, self.windowed[k]);
                    let p = std::mem::replace(&mut self.pages[pi], NO_PAGE);
                    if p != NO_PAGE {
                        self.free_pages.push(p);
                        self.window_pages_released += 1;
                    }
                }
            }
        }
        self.seqs
            .get_mut(&id)
            .expect("slide_window looked the sequence up above")
            .window_from = range.end;
    }

    /// Tokens of sequence `id`; None if it does not exist.
    pub fn seq_len(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.len())
    }

    /// Whether sequence `id` exists.
    pub fn contains(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// Pages `id` needs beyond what it holds to take `new_tokens` more: a page per layer for
    /// each new block, less the windowed pages it is about to release.
    fn pages_needed(&self, id: SeqId, new_tokens: usize) -> usize {
        let s = self.seqs.get(&id);
        let have = s.map_or(0, |s| s.blocks.len());
        let len = s.map_or(0, |s| s.len());
        let new_blocks = (len + new_tokens)
            .div_ceil(BLOCK_TOKENS)
            .saturating_sub(have);
        let released = s.map_or(0, |s| {
            s.blocks[self.out_of_window(s)]
                .iter()
                .filter(|b| self.window_holders[b.0 as usize] == 1)
                .map(|&b| {
                    self.windowed
                        .iter()
                        .filter(|&&l| self.pages[self.page_index(b, l)] != NO_PAGE)
                        .count()
                })
                .sum()
        });
        (new_blocks * self.layout.n_layers).saturating_sub(released)
    }

    /// Block equivalents a sequence needs beyond what it holds to take `new_tokens` more
    /// (rounded up: a step that fits [`KvStats::available_blocks`] never runs out).
    pub fn blocks_needed(&self, id: SeqId, new_tokens: usize) -> usize {
        self.pages_needed(id, new_tokens)
            .div_ceil(self.layout.n_layers.max(1))
    }

    /// Reserves room for `tokens` appended to `id` and records them for the prefix cache;
    /// returns the position of the first one. All-or-nothing: on error nothing changed (the
    /// sequence's window may have moved, which only returns pages it no longer needs).
    pub fn extend(&mut self, id: SeqId, tokens: &[u32]) -> Result<usize> {
        if !self.seqs.contains_key(&id) {
            return Err(EngineError::UnknownSequence(id.0));
        }
        self.slide_window(id);
        let layers = self.layout.n_layers;
        let needed = self.pages_needed(id, tokens.len());
        if needed > self.available_pages() {
            return Err(EngineError::OutOfBlocks {
                needed: needed.div_ceil(layers),
                free: self.available_pages() / layers,
            });
        }
        let s = self
            .seqs
            .get(&id)
            .expect("extend checked the sequence above");
        let n_new = (s.len() + tokens.len())
            .div_ceil(BLOCK_TOKENS)
            .saturating_sub(s.blocks.len());
        let new_blocks: Vec<BlockId> = (0..n_new).map(|_| self.take_block()).collect();
        if self.window.is_some() {
            for b in &new_blocks {
                self.window_holders[b.0 as usize] += 1;
            }
        }
        let s = self
            .seqs
            .get_mut(&id)
            .expect("extend checked the sequence above");
        s.blocks.extend(new_blocks);
        let start = s.len();
        let mut filled = Vec::new();
        for &t in tokens {
            s.tokens.push(t);
            if s.tokens.len().is_multiple_of(BLOCK_TOKENS) {
                let parent = s.hash();
                let mut toks = [0u32; BLOCK_TOKENS];
                toks.copy_from_slice(&s.tokens[s.tokens.len() - BLOCK_TOKENS..]);
                let h = chain_hash(parent, &toks);
                s.hashes.push(h);
                filled.push((s.blocks[s.hashes.len() - 1], parent, h, toks));
            }
        }
        for (b, parent, h, tokens) in filled {
            let i = b.0 as usize;
            if self.prefix.contains_key(&h) || self.block_hash[i].is_some() {
                continue; // same content already cached (computed twice concurrently)
            }
            self.prefix.insert(
                h,
                CachedBlock {
                    block: b,
                    parent,
                    tokens,
                },
            );
            self.block_hash[i] = Some(h);
            self.refcount[i] += 1;
            self.tick += 1;
            self.last_use[i] = self.tick;
        }
        Ok(start)
    }

    /// Drops every evictable cached block (tests, memory trimming).
    pub fn clear_prefix_cache(&mut self) {
        while self.evict_lru() {}
    }

    /// The block table of a sequence.
    pub fn block_table(&self, id: SeqId) -> Option<&[BlockId]> {
        self.seqs.get(&id).map(|s| s.blocks.as_slice())
    }

    /// The token slot (in [`KvStore`]) of position `pos` of a block table in layer `layer`.
    #[inline]
    pub fn slot(&self, layer: usize, table: &[BlockId], pos: usize) -> usize {
        let page = self.pages[self.page_index(table[pos / BLOCK_TOKENS], layer)];
        debug_assert!(page != NO_PAGE, "layer {layer} position {pos} was released");
        page as usize * BLOCK_TOKENS + pos % BLOCK_TOKENS
    }

    /// Stores tokens' key and value rows (f32, `kv_dim` each) of layer `layer`: token `t` at
    /// position `positions[t]` of block table `tables[t]`.
    pub fn write(
        &mut self,
        kernels: &Kernels,
        layer: usize,
        tables: &[&[BlockId]],
        positions: &[usize],
        keys: &[f32],
        values: &[f32],
    ) {
        let slots: Vec<usize> = tables
            .iter()
            .zip(positions)
            .map(|(t, &p)| self.slot(layer, t, p))
            .collect();
        self.store.write(kernels, &slots, keys, values)
    }

    /// Attention over KV head `kv_head` of layer `layer` at `positions` of block table
    /// `table` ([`KvStore::attend`]; `query.keys` index into `positions`).
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        &self,
        kernels: &Kernels,
        layer: usize,
        kv_head: usize,
        table: &[BlockId],
        positions: std::ops::RangeInclusive<usize>,
        query: &AttendQuery<'_>,
        out: &mut [f32],
    ) {
        let slots: Vec<usize> = positions.map(|j| self.slot(layer, table, j)).collect();
        self.store.attend(kernels, kv_head, &slots, query, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(n_layers: usize) -> KvLayout {
        KvLayout {
            n_layers,
            kv_dim: 4,
            head_dim: 4,
            kv_type: KvType::F16,
        }
    }

    fn cache(blocks: usize) -> KvCache {
        KvCache::new(layout(1), &[None], blocks).unwrap()
    }

    fn toks(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
    }

    /// Frees `ids` and the prefix cache, then checks that every page is free again.
    fn assert_drains(kv: &mut KvCache, ids: std::ops::RangeInclusive<u64>) {
        for id in ids {
            kv.free_sequence(SeqId(id));
        }
        kv.clear_prefix_cache();
        assert_eq!(kv.stats().free_pages, kv.stats().total_pages);
    }

    #[test]
    fn blocks_return_to_pool() {
        let mut kv = cache(8);
        kv.add_sequence(SeqId(1)).unwrap();
        assert_eq!(kv.extend(SeqId(1), &toks(17, 1)).unwrap(), 0);
        assert_eq!(kv.stats().available_blocks(), 6);
        assert_eq!(kv.extend(SeqId(1), &toks(15, 2)).unwrap(), 17);
        assert_eq!(kv.stats().available_blocks(), 6);
        assert!(matches!(
            kv.extend(SeqId(1), &toks(7 * 16, 3)),
            Err(EngineError::OutOfBlocks { .. })
        ));
        kv.truncate(SeqId(1), 10).unwrap();
        assert_eq!(kv.stats().available_blocks(), 7);
        kv.free_sequence(SeqId(1));
        assert_eq!(kv.stats().available_blocks(), 8);
        assert_eq!(kv.stats().used_blocks(), 0);
    }

    #[test]
    fn shared_prefix_is_reused_and_evicted_lru() {
        let mut kv = cache(8);
        let prompt = toks(40, 5); // two full blocks + 8
        kv.add_sequence(SeqId(1)).unwrap();
        kv.extend(SeqId(1), &prompt).unwrap();
        let s = kv.stats();
        assert_eq!(
            (s.cached_blocks, s.free_blocks, s.evictable_blocks),
            (2, 5, 0)
        );

        // Same prompt: both full blocks attach, the partial one is recomputed.
        kv.add_sequence(SeqId(2)).unwrap();
        assert_eq!(kv.attach_prefix(SeqId(2), &prompt).unwrap(), 32);
        assert_eq!(
            kv.block_table(SeqId(2)).unwrap(),
            &kv.block_table(SeqId(1)).unwrap()[..2]
        );
        // A different second block stops the match after the first.
        let mut other = prompt.clone();
        other[20] += 1;
        kv.add_sequence(SeqId(3)).unwrap();
        assert_eq!(kv.attach_prefix(SeqId(3), &other).unwrap(), 16);
        // A prompt of exactly one block keeps its last token to compute.
        kv.add_sequence(SeqId(4)).unwrap();
        assert_eq!(kv.attach_prefix(SeqId(4), &prompt[..16]).unwrap(), 0);
        assert_eq!(kv.stats().prefix_hit_blocks, 3);

        for id in 1..=4 {
            kv.free_sequence(SeqId(id));
        }
        let s = kv.stats();
        assert_eq!((s.evictable_blocks, s.available_blocks()), (2, 8));
        // Needing all 8 blocks evicts the cached ones.
        kv.add_sequence(SeqId(5)).unwrap();
        kv.extend(SeqId(5), &toks(8 * 16, 9)).unwrap();
        assert_eq!(kv.stats().evictions, 2);
        kv.free_sequence(SeqId(5));
        kv.clear_prefix_cache();
        assert_eq!(kv.stats().free_blocks, 8);
    }

    #[test]
    fn truncating_into_a_shared_block_copies_it() {
        let mut kv = cache(8);
        let prompt = toks(48, 3);
        kv.add_sequence(SeqId(1)).unwrap();
        kv.extend(SeqId(1), &prompt).unwrap();
        kv.add_sequence(SeqId(2)).unwrap();
        assert_eq!(kv.attach_prefix(SeqId(2), &prompt).unwrap(), 32);
        let shared = kv.block_table(SeqId(2)).unwrap()[1];
        kv.truncate(SeqId(2), 20).unwrap();
        let t = kv.block_table(SeqId(2)).unwrap();
        assert_eq!(t.len(), 2);
        assert_ne!(t[1], shared, "a shared block must not be written in place");
        assert_drains(&mut kv, 1..=2);
    }

    /// A rollback into a block another sequence shares needs a copy of it; with no page left
    /// for the copy it is refused and changes nothing. (It used to drop the tokens first and
    /// fail at the copy, leaving the sequence to append into the shared block.)
    #[test]
    fn rollback_without_room_for_the_copy_changes_nothing() {
        let mut kv = cache(3);
        let prompt = toks(33, 1);
        kv.add_sequence(SeqId(1)).unwrap();
        kv.extend(SeqId(1), &prompt[..32]).unwrap();
        kv.add_sequence(SeqId(2)).unwrap();
        assert_eq!(kv.attach_prefix(SeqId(2), &prompt).unwrap(), 32);
        kv.extend(SeqId(2), &prompt[32..]).unwrap();
        assert_eq!(kv.stats().available_blocks(), 0);
        let table = kv.block_table(SeqId(1)).unwrap().to_vec();
        assert!(matches!(
            kv.truncate(SeqId(1), 20),
            Err(EngineError::OutOfBlocks { .. })
        ));
        assert_eq!(kv.seq_len(SeqId(1)), Some(32));
        assert_eq!(kv.block_table(SeqId(1)).unwrap(), &table[..]);
        // Once the other holder is gone the block is private again: no copy needed.
        kv.free_sequence(SeqId(2));
        kv.truncate(SeqId(1), 20).unwrap();
        assert_eq!(kv.block_table(SeqId(1)).unwrap(), &table[..2]);
        assert_drains(&mut kv, 1..=2);
    }

    /// Two layers, one with a 32-token window: pages of blocks every window has left return
    /// to the pool, the global layer keeps its pages, and the budget counts what is left.
    #[test]
    fn windowed_layers_release_the_pages_behind_the_window() {
        let mut kv = KvCache::new(layout(2), &[Some(32), None], 16).unwrap();
        assert_eq!(kv.stats().total_pages, 32);
        kv.add_sequence(SeqId(1)).unwrap();
        kv.extend(SeqId(1), &toks(160, 1)).unwrap(); // 10 blocks, 20 pages
        assert_eq!(kv.stats().free_pages, 12);
        // The next extend slides the window: blocks wholly before key 160 - 32 - 16 + 1 = 113
        // (blocks 0..6) lose their windowed page; the decode token needs a new block (2 pages).
        assert_eq!(kv.blocks_needed(SeqId(1), 1), 0, "7 pages freed, 2 needed");
        kv.extend(SeqId(1), &toks(1, 9)).unwrap();
        let s = kv.stats();
        assert_eq!((s.free_pages, s.window_pages_released), (12 + 7 - 2, 7));
        assert_eq!(s.available_blocks(), 17 / 2);
        // The released layer's slots are gone, the global layer's remain.
        let table = kv.block_table(SeqId(1)).unwrap().to_vec();
        assert!(kv.pages[kv.page_index(table[0], 0)] == NO_PAGE);
        assert!(kv.pages[kv.page_index(table[0], 1)] != NO_PAGE);
        // A rollback of up to ROLLBACK_SLACK tokens stays possible, further is refused.
        kv.truncate(SeqId(1), 161 - ROLLBACK_SLACK).unwrap();
        assert_eq!(kv.seq_len(SeqId(1)), Some(145));
        let e = kv.truncate(SeqId(1), 40).unwrap_err().to_string();
        assert!(e.contains("sliding-window"), "{e}");
        assert_drains(&mut kv, 1..=1);
    }

    /// A prefix attaches only where the window before its end still has its pages; a block
    /// another sequence's window still covers keeps its pages.
    #[test]
    fn prefix_attach_stops_where_the_window_was_released() {
        let mut kv = KvCache::new(layout(2), &[Some(32), None], 64).unwrap();
        let prompt = toks(200, 3);
        kv.add_sequence(SeqId(1)).unwrap();
        kv.extend(SeqId(1), &prompt[..64]).unwrap();
        // Sequence 2 shares the first 48 tokens while 1 is still near them.
        kv.add_sequence(SeqId(2)).unwrap();
        assert_eq!(kv.attach_prefix(SeqId(2), &prompt[..49]).unwrap(), 48);
        kv.extend(SeqId(1), &prompt[64..200]).unwrap();
        // Sliding 1's window to block 9 releases blocks 3..8; sequence 2 (at 48 tokens, its
        // window and slack from block 0) keeps blocks 0..2.
        kv.extend(SeqId(1), &toks(1, 0)).unwrap();
        let t2 = kv.block_table(SeqId(2)).unwrap().to_vec();
        assert!(t2.iter().all(|&b| kv.has_window_pages(b)));
        // A third sequence with the whole prompt attaches all 12 full blocks: the window
        // before token 192 (blocks 9..11) is intact, and nothing earlier is needed.
        kv.add_sequence(SeqId(3)).unwrap();
        assert_eq!(kv.attach_prefix(SeqId(3), &prompt).unwrap(), 192);
        // A fourth that shares only the first 96 tokens cannot use blocks 3..5 (released):
        // it attaches the 48 tokens whose window (blocks 0..2) sequence 2 kept alive.
        let mut other = prompt[..96].to_vec();
        other.extend(toks(40, 99));
        kv.add_sequence(SeqId(4)).unwrap();
        assert_eq!(kv.attach_prefix(SeqId(4), &other).unwrap(), 48);
        assert_drains(&mut kv, 1..=4);
    }

    /// The key and value row written for token `t` at position `p` (exact in f16).
    fn marker(t: u32, p: usize) -> Vec<f32> {
        vec![t as f32, p as f32, -(t as f32), 0.5]
    }

    /// Everything the cache maintains incrementally, recomputed from scratch and compared:
    /// the sequences against `model` (what the test appended and truncated), reference counts,
    /// the free lists, page ownership, the prefix registry, the LRU of evictable blocks, window
    /// holders, and the keys and values of every position still held.
    fn check_invariants(kv: &KvCache, model: &HashMap<SeqId, Vec<u32>>, ctx: &str) {
        let nb = kv.refcount.len();
        let layers = kv.layout.n_layers;
        assert!(
            kv.pages.len() == nb * layers
                && kv.window_holders.len() == nb
                && kv.block_hash.len() == nb
                && kv.last_use.len() == nb,
            "{ctx}: per-block tables out of step"
        );
        assert_eq!(kv.seqs.len(), model.len(), "{ctx}: live sequences");
        // Per block: sequences holding it, and sequences whose window covers it.
        let mut held = vec![0u32; nb];
        let mut covering = vec![0u32; nb];
        for (id, s) in &kv.seqs {
            let ctx = format!("{ctx}: sequence {}", id.0);
            let want = model
                .get(id)
                .unwrap_or_else(|| panic!("{ctx} is unknown to the test"));
            assert_eq!(&s.tokens, want, "{ctx}: tokens");
            assert_eq!(
                s.blocks.len(),
                s.len().div_ceil(BLOCK_TOKENS),
                "{ctx}: blocks"
            );
            // The chain hashes are those of the sequence's own tokens.
            let mut h = ROOT_HASH;
            let chunks = s.tokens.chunks_exact(BLOCK_TOKENS);
            assert_eq!(s.hashes.len(), chunks.len(), "{ctx}: hashes");
            for (i, chunk) in chunks.enumerate() {
                h = chain_hash(h, chunk);
                assert_eq!(s.hashes[i], h, "{ctx}: hash of block {i}");
            }
            for (i, &b) in s.blocks.iter().enumerate() {
                let bi = b.0 as usize;
                assert!(!s.blocks[..i].contains(&b), "{ctx}: holds block {bi} twice");
                held[bi] += 1;
                // A block in the prefix cache holds this sequence's prefix up to its end.
                if let Some(hb) = kv.block_hash[bi] {
                    assert!(
                        i < s.hashes.len() && s.hashes[i] == hb,
                        "{ctx}: block {i} is cached under another prefix"
                    );
                }
                if kv.window.is_some() && i >= s.window_from {
                    covering[bi] += 1;
                    assert!(
                        kv.has_window_pages(b),
                        "{ctx}: its window covers block {i}, which lost its windowed pages"
                    );
                }
            }
            // The block the next token is written into is the sequence's alone.
            if !s.len().is_multiple_of(BLOCK_TOKENS) {
                let last = s.blocks[s.blocks.len() - 1];
                assert_eq!(
                    kv.refcount[last.0 as usize], 1,
                    "{ctx}: its partial block {} is shared",
                    last.0
                );
            }
            assert!(
                s.window_from <= kv.first_needed_block(s.len()),
                "{ctx}: the window starts past what its next query sees"
            );
            // Every position's rows are the ones written for it: shared blocks were never
            // written over, copies carried their content.
            for (p, &t) in s.tokens.iter().enumerate() {
                let b = s.blocks[p / BLOCK_TOKENS];
                for l in 0..layers {
                    let page = kv.pages[kv.page_index(b, l)];
                    if page == NO_PAGE {
                        assert!(
                            kv.windowed.contains(&l) && p / BLOCK_TOKENS < s.window_from,
                            "{ctx}: position {p} lost its layer {l} page"
                        );
                        continue;
                    }
                    let (k, v) = kv
                        .store
                        .rows_f16(page as usize * BLOCK_TOKENS + p % BLOCK_TOKENS);
                    assert!(
                        k == marker(t, p) && v == marker(t, p),
                        "{ctx}: position {p} layer {l} holds {k:?} / {v:?}, wrote token {t}"
                    );
                }
            }
        }
        // Reference counts: the sequences holding a block, plus one while it is cached.
        for b in 0..nb {
            let cached = u32::from(kv.block_hash[b].is_some());
            assert_eq!(
                kv.refcount[b],
                held[b] + cached,
                "{ctx}: block {b}: {} sequences, cached {cached}",
                held[b]
            );
            assert_eq!(
                kv.window_holders[b], covering[b],
                "{ctx}: block {b} window holders"
            );
        }
        // Free block ids: each listed once, exactly the unreferenced blocks, which hold no
        // pages and are not cached; a live block keeps its global layers' pages.
        let mut listed = vec![false; nb];
        for &b in &kv.free_block_ids {
            assert!(
                !listed[b.0 as usize],
                "{ctx}: block {} listed free twice",
                b.0
            );
            listed[b.0 as usize] = true;
        }
        for (b, &free) in listed.iter().enumerate() {
            let id = BlockId(b as u32);
            assert_eq!(
                free,
                kv.refcount[b] == 0,
                "{ctx}: block {b} free vs referenced"
            );
            if free {
                assert_eq!(kv.present_pages(id), 0, "{ctx}: free block {b} holds pages");
                assert!(
                    kv.block_hash[b].is_none(),
                    "{ctx}: free block {b} is cached"
                );
            } else {
                for l in (0..layers).filter(|l| !kv.windowed.contains(l)) {
                    let page = kv.pages[kv.page_index(id, l)];
                    assert_ne!(page, NO_PAGE, "{ctx}: block {b} lost its layer {l} page");
                }
            }
        }
        // Pages: each is free or the page of exactly one (block, layer), so free + held ==
        // total.
        let mut owners = vec![0u32; kv.total_pages];
        for &p in kv.free_pages.iter().chain(&kv.pages) {
            if p != NO_PAGE {
                owners[p as usize] += 1;
            }
        }
        assert!(
            owners.iter().all(|&n| n == 1),
            "{ctx}: a page is lost or has two owners"
        );
        // The prefix registry: hash and block name each other, the block is live, the key is
        // the chain hash of the entry's parent and tokens.
        for (h, c) in &kv.prefix {
            let b = c.block.0 as usize;
            assert_eq!(
                kv.block_hash[b],
                Some(*h),
                "{ctx}: entry {h:x} -> block {b}"
            );
            assert!(kv.refcount[b] >= 1, "{ctx}: entry {h:x} -> free block {b}");
            assert_eq!(
                chain_hash(c.parent, &c.tokens),
                *h,
                "{ctx}: entry {h:x} content"
            );
        }
        for (b, h) in kv.block_hash.iter().enumerate() {
            if let Some(h) = h {
                let entry = kv.prefix.get(h).map(|c| c.block.0 as usize);
                assert_eq!(entry, Some(b), "{ctx}: block {b} cached under {h:x}");
            }
        }
        // The LRU holds exactly the cached blocks no sequence holds, by last use, and the
        // evictable page count is theirs.
        let lru: BTreeSet<(u64, u32)> = (0..nb)
            .filter(|&b| kv.refcount[b] == 1 && kv.block_hash[b].is_some())
            .map(|b| (kv.last_use[b], b as u32))
            .collect();
        assert_eq!(kv.lru, lru, "{ctx}: evictable blocks");
        let evictable: usize = lru.iter().map(|&(_, b)| kv.present_pages(BlockId(b))).sum();
        assert_eq!(kv.evictable_pages, evictable, "{ctx}: evictable pages");
        let st = kv.stats();
        assert_eq!(
            (st.free_pages, st.sequences, st.cached_blocks),
            (kv.free_pages.len(), kv.seqs.len(), kv.prefix.len()),
            "{ctx}: stats"
        );
        assert_eq!(st.available_blocks(), kv.available_pages() / layers.max(1));
    }

    /// Appends `toks` to `id` as the engine does (reserve, then write every layer's rows), or
    /// checks that a refusal changed nothing. Returns whether it was appended.
    fn append(
        kv: &mut KvCache,
        model: &mut HashMap<SeqId, Vec<u32>>,
        id: SeqId,
        toks: &[u32],
        ctx: &str,
    ) -> bool {
        let table = kv.block_table(id).map(<[BlockId]>::to_vec);
        let fits = kv.blocks_needed(id, toks.len()) <= kv.stats().available_blocks();
        match kv.extend(id, toks) {
            Ok(start) => {
                assert_eq!(start, model[&id].len(), "{ctx}: first position");
                let table = kv
                    .block_table(id)
                    .map(<[BlockId]>::to_vec)
                    .unwrap_or_default();
                for (j, &t) in toks.iter().enumerate() {
                    let m = marker(t, start + j);
                    for l in 0..kv.layout.n_layers {
                        kv.write(&Kernels::scalar(), l, &[&table], &[start + j], &m, &m);
                    }
                }
                model.entry(id).or_default().extend_from_slice(toks);
                true
            }
            Err(EngineError::OutOfBlocks { .. }) => {
                assert!(!fits, "{ctx}: refused what blocks_needed said fits");
                assert_eq!(kv.block_table(id).map(<[BlockId]>::to_vec), table, "{ctx}");
                false
            }
            Err(e) => panic!("{ctx}: {e}"),
        }
    }

    /// Seeded random traffic (new sequences that share prefixes with a stem or fork a live
    /// sequence through the prefix cache, decode and prefill appends, rollbacks, frees, cache
    /// clears) in a pool small enough that appends are refused and cached blocks evicted; the
    /// invariants are checked after every operation, and at the end every page is free.
    /// Returns counts of (prefix hits, evictions, refused appends, copies of shared blocks,
    /// refused rollbacks).
    fn random_traffic(seed: u64, windows: &[Option<usize>], blocks: usize) -> [u64; 5] {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let mut kv = KvCache::new(layout(windows.len()), windows, blocks).unwrap();
        let stems: Vec<Vec<u32>> = (0..3)
            .map(|_| (0..96).map(|_| rng.gen_range(0..40)).collect())
            .collect();
        let mut model: HashMap<SeqId, Vec<u32>> = HashMap::new();
        let (mut next, mut refused, mut copies, mut kept) = (0u64, 0u64, 0u64, 0u64);
        for step in 0..2500 {
            let mut live: Vec<SeqId> = model.keys().copied().collect();
            live.sort();
            let any = live.get(rng.gen_range(0..live.len().max(1))).copied();
            let op = rng.gen_range(0..100);
            let ctx = format!("seed {seed} windows {windows:?} step {step} op {op}");
            match (op, any) {
                // A new sequence: a stem's or a live sequence's prefix (a fork) and a tail of
                // its own, attached through the prefix cache as far as cached, then prefilled.
                (0..=19, _) if live.len() < 8 => {
                    let base = match any {
                        Some(id) if rng.gen_bool(0.4) => model[&id].clone(),
                        _ => stems[rng.gen_range(0..stems.len())].clone(),
                    };
                    let mut prompt = base[..rng.gen_range(0..=base.len())].to_vec();
                    prompt.extend((0..rng.gen_range(1..24)).map(|_| rng.gen_range(0..40)));
                    let id = SeqId(next);
                    next += 1;
                    kv.add_sequence(id).unwrap();
                    model.insert(id, Vec::new());
                    let hit = kv.attach_prefix(id, &prompt).unwrap();
                    assert!(
                        hit < prompt.len() && hit.is_multiple_of(BLOCK_TOKENS),
                        "{ctx}: hit {hit}"
                    );
                    model.insert(id, prompt[..hit].to_vec());
                    check_invariants(&kv, &model, &ctx);
                    refused += u64::from(!append(&mut kv, &mut model, id, &prompt[hit..], &ctx));
                }
                // Decode or a prefill chunk: random tokens, or the continuation of a stem (so
                // that sequences fill blocks with the same content).
                (20..=59, Some(id)) => {
                    let n = if rng.gen_bool(0.6) {
                        1
                    } else {
                        rng.gen_range(2..=20)
                    };
                    let len = model[&id].len();
                    let stem = &stems[rng.gen_range(0..stems.len())];
                    let toks: Vec<u32> = if rng.gen_bool(0.5) && len + n <= stem.len() {
                        stem[len..len + n].to_vec()
                    } else {
                        (0..n).map(|_| rng.gen_range(0..40)).collect()
                    };
                    refused += u64::from(!append(&mut kv, &mut model, id, &toks, &ctx));
                }
                // A rollback: usually a few tokens, sometimes far; refused ones change nothing.
                (60..=74, Some(id)) => {
                    let len = model[&id].len();
                    let to = if rng.gen_bool(0.7) {
                        len.saturating_sub(rng.gen_range(1..=20))
                    } else {
                        rng.gen_range(0..=len)
                    };
                    let table = kv.block_table(id).unwrap_or_default().to_vec();
                    let shared = to < len
                        && !to.is_multiple_of(BLOCK_TOKENS)
                        && kv.refcount[table[to / BLOCK_TOKENS].0 as usize] > 1;
                    // A refusal changes nothing: `check_invariants` compares with the model.
                    match kv.truncate(id, to) {
                        Ok(()) => {
                            model.get_mut(&id).unwrap().truncate(to);
                            copies += u64::from(shared);
                        }
                        Err(EngineError::OutOfBlocks { .. }) if shared => kept += 1,
                        Err(EngineError::InvalidInput(e)) if kv.window.is_some() => {
                            assert!(e.contains("sliding-window"), "{ctx}: {e}");
                            kept += 1;
                        }
                        Err(e) => panic!("{ctx}: {e}"),
                    }
                }
                (75..=89, Some(id)) => {
                    kv.free_sequence(id);
                    model.remove(&id);
                }
                (90..=92, _) => kv.clear_prefix_cache(),
                _ => continue,
            }
            check_invariants(&kv, &model, &ctx);
        }
        let ids: Vec<SeqId> = model.keys().copied().collect();
        for id in ids {
            kv.free_sequence(id);
            model.remove(&id);
            check_invariants(&kv, &model, &format!("seed {seed}: freeing all"));
        }
        kv.clear_prefix_cache();
        check_invariants(&kv, &model, &format!("seed {seed}: drained"));
        // No leak: every block and page is free again.
        assert!(kv.refcount.iter().all(|&r| r == 0) && kv.prefix.is_empty());
        assert_eq!(kv.free_block_ids.len(), kv.refcount.len());
        assert_eq!(kv.free_pages.len(), kv.total_pages);
        let st = kv.stats();
        [st.prefix_hit_blocks, st.evictions, refused, copies, kept]
    }

    /// [`random_traffic`] with several seeds over three geometries: one global layer; a
    /// windowed and a global layer; two windows of different sizes around a global layer.
    /// Every kind of event must have happened somewhere, or the test proves little.
    #[test]
    fn random_traffic_keeps_every_invariant() {
        let mut totals = [0u64; 5];
        for seed in 0..6 {
            for (windows, blocks) in [
                (&[None][..], 20),
                (&[Some(32), None][..], 24),
                (&[Some(24), None, Some(40)][..], 24),
            ] {
                let counts = random_traffic(seed, windows, blocks);
                for (t, c) in totals.iter_mut().zip(counts) {
                    *t += c;
                }
            }
        }
        let [hits, evictions, refused, copies, kept] = totals;
        let seen = format!(
            "prefix hits {hits}, evictions {evictions}, refused appends {refused}, copies of \
             shared blocks {copies}, refused rollbacks {kept}"
        );
        eprintln!("{seen}");
        assert!(totals.iter().all(|&n| n > 0), "{seen}");
    }
}
