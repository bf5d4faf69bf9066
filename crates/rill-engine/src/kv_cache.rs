//! The paged KV cache: a pool of fixed-size blocks (keys and values of every layer, stored in
//! the cache's [`KvType`] by [`KvStore`]), a block table per sequence, and the prefix cache.
//!
//! Blocks are reference-counted. Every block a sequence fills completely is registered in the
//! prefix cache under a chained hash of all tokens up to its end (so a block is only ever reused
//! behind the exact same prefix); the cache holds one reference of its own. A new sequence whose
//! prompt starts with cached blocks attaches them instead of recomputing them
//! ([`KvCache::attach_prefix`]). A cached block nobody else holds is *evictable*: it still counts
//! as available and is reclaimed least-recently-used first when the free list runs dry. Shared
//! blocks are never written: a sequence only appends past its length, and truncating into a
//! shared block copies it first.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use crate::error::{EngineError, Result};
pub use crate::kv_store::{AttendQuery, KvRotation, KvStore, KvType};
use crate::quant::Kernels;

/// Tokens per KV block.
pub const BLOCK_TOKENS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockId(pub u32);

/// Block usage, for schedulers and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvStats {
    pub total_blocks: usize,
    /// Blocks on the free list.
    pub free_blocks: usize,
    /// Blocks held only by the prefix cache (reclaimable on demand).
    pub evictable_blocks: usize,
    /// Blocks registered in the prefix cache (shared or evictable).
    pub cached_blocks: usize,
    pub block_tokens: usize,
    pub bytes_per_block: usize,
    /// The element format of keys and values.
    pub kv_type: KvType,
    pub sequences: usize,
    /// Cumulative blocks reused from the prefix cache instead of being recomputed.
    pub prefix_hit_blocks: u64,
    /// Cumulative cached blocks reclaimed for other use.
    pub evictions: u64,
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
    pub n_layers: usize,
    /// n_kv_heads * head_dim
    pub kv_dim: usize,
    pub head_dim: usize,
    pub kv_type: KvType,
}

impl KvLayout {
    /// Bytes of one block across all layers, keys and values.
    pub fn bytes_per_block(&self) -> usize {
        self.n_layers * 2 * BLOCK_TOKENS * self.kv_type.row_bytes(self.kv_dim)
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

#[derive(Debug)]
struct SeqState {
    blocks: Vec<BlockId>,
    len: usize,
    /// Chain hash after the last full block.
    hash: u64,
    /// Tokens of the current partial block (for registering it once full).
    tail: Vec<u32>,
    /// False once the token history is unknown (after truncating mid-block): nothing more of
    /// this sequence is registered in the prefix cache.
    cacheable: bool,
}

impl Default for SeqState {
    fn default() -> Self {
        Self {
            blocks: Vec::new(),
            len: 0,
            hash: ROOT_HASH,
            tail: Vec::new(),
            cacheable: true,
        }
    }
}

#[derive(Debug)]
struct CachedBlock {
    block: BlockId,
    parent: u64,
    tokens: [u32; BLOCK_TOKENS],
}

pub struct KvCache {
    pub layout: KvLayout,
    /// Keys and values of every layer, `total_blocks * BLOCK_TOKENS` token slots each.
    store: KvStore,
    refcount: Vec<u32>,
    free: Vec<BlockId>,
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
}

impl KvCache {
    /// A pool of `total_blocks` blocks. The layout's head dim must suit its KV type
    /// ([`KvType::check_head_dim`]).
    pub fn new(layout: KvLayout, total_blocks: usize) -> Result<Self> {
        layout.kv_type.check_head_dim(layout.head_dim)?;
        Ok(Self {
            layout,
            store: KvStore::new(
                layout.kv_type,
                layout.n_layers,
                layout.kv_dim,
                layout.head_dim,
                total_blocks * BLOCK_TOKENS,
            ),
            refcount: vec![0; total_blocks],
            // Pop from the end: hand out low ids first.
            free: (0..total_blocks as u32).rev().map(BlockId).collect(),
            seqs: HashMap::new(),
            prefix: HashMap::new(),
            block_hash: vec![None; total_blocks],
            lru: BTreeSet::new(),
            last_use: vec![0; total_blocks],
            tick: 0,
            prefix_hit_blocks: 0,
            evictions: 0,
        })
    }

    pub fn stats(&self) -> KvStats {
        KvStats {
            total_blocks: self.refcount.len(),
            free_blocks: self.free.len(),
            evictable_blocks: self.lru.len(),
            cached_blocks: self.prefix.len(),
            block_tokens: BLOCK_TOKENS,
            bytes_per_block: self.layout.bytes_per_block(),
            kv_type: self.layout.kv_type,
            sequences: self.seqs.len(),
            prefix_hit_blocks: self.prefix_hit_blocks,
            evictions: self.evictions,
        }
    }

    fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

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
            for b in s.blocks {
                self.release(b);
            }
        }
    }

    /// Attaches the longest cached prefix of `tokens` to an empty sequence, leaving at least one
    /// token to compute (its logits are needed). Returns the number of tokens reused.
    pub fn attach_prefix(&mut self, id: SeqId, tokens: &[u32]) -> Result<usize> {
        let s = self
            .seqs
            .get(&id)
            .ok_or(EngineError::UnknownSequence(id.0))?;
        if s.len != 0 {
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
        // Touch leaf first so that parents carry the newer tick and outlive their children.
        for &(b, _) in found.iter().rev() {
            self.retain(b);
        }
        let s = self
            .seqs
            .get_mut(&id)
            .ok_or(EngineError::UnknownSequence(id.0))?;
        for &(b, h) in &found {
            s.blocks.push(b);
            s.hash = h;
        }
        s.len = found.len() * BLOCK_TOKENS;
        self.prefix_hit_blocks += found.len() as u64;
        Ok(s.len)
    }

    /// Shortens a sequence to `len` tokens (e.g. rejected speculative tokens), freeing blocks
    /// no longer needed. A kept partial block that is shared is copied first.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        let s = self
            .seqs
            .get_mut(&id)
            .ok_or(EngineError::UnknownSequence(id.0))?;
        if len >= s.len {
            return Ok(());
        }
        let old_len = s.len;
        s.len = len;
        let keep = len.div_ceil(BLOCK_TOKENS);
        let dropped: Vec<BlockId> = s.blocks.drain(keep..).collect();
        let full_blocks = len / BLOCK_TOKENS;
        let within_tail = old_len / BLOCK_TOKENS == full_blocks;
        if within_tail {
            s.tail.truncate(len % BLOCK_TOKENS);
        } else {
            // The token history of the new partial block is gone: stop registering.
            s.cacheable = s.cacheable && len.is_multiple_of(BLOCK_TOKENS);
            s.tail.clear();
            if s.cacheable {
                s.hash = s
                    .blocks
                    .last()
                    .and_then(|b| self.block_hash[b.0 as usize])
                    .unwrap_or(ROOT_HASH);
                // Only exact if the last kept block is registered; otherwise give up.
                s.cacheable = s.blocks.is_empty()
                    || s.blocks
                        .last()
                        .is_some_and(|b| self.block_hash[b.0 as usize].is_some());
            }
        }
        let partial = (!len.is_multiple_of(BLOCK_TOKENS)).then(|| s.blocks[keep - 1]);
        for b in dropped {
            self.release(b);
        }
        if let Some(b) = partial {
            if self.refcount[b.0 as usize] > 1 {
                self.copy_on_write(id, keep - 1)?;
            }
        }
        Ok(())
    }

    /// Replaces block `idx` of a sequence by a private copy.
    fn copy_on_write(&mut self, id: SeqId, idx: usize) -> Result<()> {
        if self.available() == 0 {
            return Err(EngineError::OutOfBlocks { needed: 1, free: 0 });
        }
        let new = self.take_block();
        let s = self
            .seqs
            .get_mut(&id)
            .ok_or(EngineError::UnknownSequence(id.0))?;
        let old = std::mem::replace(&mut s.blocks[idx], new);
        self.store.copy_block(old.0 as usize, new.0 as usize);
        self.release(old);
        Ok(())
    }

    /// Takes a block from the free list, evicting the least recently used cached block if the
    /// list is empty. The caller checked `available() > 0`.
    fn take_block(&mut self) -> BlockId {
        if self.free.is_empty() {
            if let Some((_, b)) = self.lru.pop_first() {
                if let Some(h) = self.block_hash[b as usize].take() {
                    self.prefix.remove(&h);
                }
                self.refcount[b as usize] = 0;
                self.free.push(BlockId(b));
                self.evictions += 1;
            }
        }
        let b = self.free.pop().unwrap_or(BlockId(0));
        self.refcount[b.0 as usize] = 1;
        b
    }

    fn retain(&mut self, b: BlockId) {
        let i = b.0 as usize;
        if self.refcount[i] == 1 && self.block_hash[i].is_some() {
            self.lru.remove(&(self.last_use[i], b.0));
        }
        self.refcount[i] += 1;
        self.tick += 1;
        self.last_use[i] = self.tick;
    }

    fn release(&mut self, b: BlockId) {
        let i = b.0 as usize;
        self.refcount[i] -= 1;
        match self.refcount[i] {
            0 => self.free.push(b),
            1 if self.block_hash[i].is_some() => {
                self.lru.insert((self.last_use[i], b.0));
            }
            _ => {}
        }
    }

    pub fn seq_len(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.len)
    }

    pub fn contains(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// Blocks a sequence needs beyond what it holds to take `new_tokens` more.
    pub fn blocks_needed(&self, id: SeqId, new_tokens: usize) -> usize {
        let s = self.seqs.get(&id);
        let have = s.map_or(0, |s| s.blocks.len());
        let len = s.map_or(0, |s| s.len);
        (len + new_tokens)
            .div_ceil(BLOCK_TOKENS)
            .saturating_sub(have)
    }

    /// Reserves room for `tokens` appended to `id` and records them for the prefix cache;
    /// returns the position of the first one. All-or-nothing: on error nothing changed.
    pub fn extend(&mut self, id: SeqId, tokens: &[u32]) -> Result<usize> {
        let needed = self.blocks_needed(id, tokens.len());
        if needed > self.available() {
            return Err(EngineError::OutOfBlocks {
                needed,
                free: self.available(),
            });
        }
        if !self.seqs.contains_key(&id) {
            return Err(EngineError::UnknownSequence(id.0));
        }
        let new_blocks: Vec<BlockId> = (0..needed).map(|_| self.take_block()).collect();
        let Some(s) = self.seqs.get_mut(&id) else {
            return Err(EngineError::UnknownSequence(id.0));
        };
        s.blocks.extend(new_blocks);
        let start = s.len;
        s.len += tokens.len();
        if !s.cacheable {
            return Ok(start);
        }
        let mut pos = start;
        let mut filled = Vec::new();
        for &t in tokens {
            s.tail.push(t);
            pos += 1;
            if s.tail.len() == BLOCK_TOKENS {
                let h = chain_hash(s.hash, &s.tail);
                let mut toks = [0u32; BLOCK_TOKENS];
                toks.copy_from_slice(&s.tail);
                filled.push((s.blocks[pos / BLOCK_TOKENS - 1], s.hash, h, toks));
                s.hash = h;
                s.tail.clear();
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
        while let Some((_, b)) = self.lru.pop_first() {
            if let Some(h) = self.block_hash[b as usize].take() {
                self.prefix.remove(&h);
            }
            self.refcount[b as usize] = 0;
            self.free.push(BlockId(b));
        }
    }

    /// The block table of a sequence.
    pub fn block_table(&self, id: SeqId) -> Option<&[BlockId]> {
        self.seqs.get(&id).map(|s| s.blocks.as_slice())
    }

    /// The token slot of position `pos` of a block table.
    #[inline]
    pub fn slot(table: &[BlockId], pos: usize) -> usize {
        table[pos / BLOCK_TOKENS].0 as usize * BLOCK_TOKENS + pos % BLOCK_TOKENS
    }

    /// Stores tokens' key and value rows (f32, `kv_dim` each) of layer `layer` at `slots`.
    pub fn write(
        &mut self,
        kernels: &Kernels,
        layer: usize,
        slots: &[usize],
        keys: &[f32],
        values: &[f32],
    ) {
        self.store.write(kernels, layer, slots, keys, values)
    }

    /// Attention over KV head `kv_head` of layer `layer` at token `slots` ([`KvStore::attend`]).
    pub fn attend(
        &self,
        kernels: &Kernels,
        layer: usize,
        kv_head: usize,
        slots: &[usize],
        query: &AttendQuery<'_>,
        out: &mut [f32],
    ) {
        self.store
            .attend(kernels, layer, kv_head, slots, query, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(blocks: usize) -> KvCache {
        KvCache::new(
            KvLayout {
                n_layers: 1,
                kv_dim: 4,
                head_dim: 4,
                kv_type: KvType::F16,
            },
            blocks,
        )
        .unwrap()
    }

    fn toks(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
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
        kv.free_sequence(SeqId(1));
        kv.free_sequence(SeqId(2));
        kv.clear_prefix_cache();
        assert_eq!(kv.stats().free_blocks, 8);
    }
}
