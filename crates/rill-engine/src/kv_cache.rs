//! The paged KV cache: a pool of fixed-size blocks (f16 keys and values for every layer) and a
//! block table per sequence. Blocks are reference-counted so a later prefix cache can share them
//! between sequences; a block returns to the free list when its last holder lets go.

use std::collections::HashMap;

use crate::error::{EngineError, Result};

/// Tokens per KV block.
pub const BLOCK_TOKENS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockId(pub u32);

/// Block usage, for schedulers and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvStats {
    pub total_blocks: usize,
    pub free_blocks: usize,
    pub block_tokens: usize,
    pub bytes_per_block: usize,
    pub sequences: usize,
}

/// Geometry of the cache.
#[derive(Debug, Clone, Copy)]
pub struct KvLayout {
    pub n_layers: usize,
    /// n_kv_heads * head_dim
    pub kv_dim: usize,
}

impl KvLayout {
    /// Bytes of one block across all layers, keys and values.
    pub fn bytes_per_block(&self) -> usize {
        self.n_layers * 2 * BLOCK_TOKENS * self.kv_dim * 2
    }
}

#[derive(Debug, Default)]
struct SeqState {
    blocks: Vec<BlockId>,
    len: usize,
}

pub struct KvCache {
    pub layout: KvLayout,
    /// Per layer: keys then values, each `total_blocks * BLOCK_TOKENS * kv_dim` f16 bits.
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
    refcount: Vec<u32>,
    free: Vec<BlockId>,
    seqs: HashMap<SeqId, SeqState>,
}

impl KvCache {
    pub fn new(layout: KvLayout, total_blocks: usize) -> Self {
        let per_layer = total_blocks * BLOCK_TOKENS * layout.kv_dim;
        Self {
            layout,
            k: (0..layout.n_layers)
                .map(|_| vec![0u16; per_layer])
                .collect(),
            v: (0..layout.n_layers)
                .map(|_| vec![0u16; per_layer])
                .collect(),
            refcount: vec![0; total_blocks],
            // Pop from the end: hand out low ids first.
            free: (0..total_blocks as u32).rev().map(BlockId).collect(),
            seqs: HashMap::new(),
        }
    }

    pub fn stats(&self) -> KvStats {
        KvStats {
            total_blocks: self.refcount.len(),
            free_blocks: self.free.len(),
            block_tokens: BLOCK_TOKENS,
            bytes_per_block: self.layout.bytes_per_block(),
            sequences: self.seqs.len(),
        }
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

    /// Shortens a sequence to `len` tokens (e.g. rejected speculative tokens), freeing blocks
    /// no longer needed.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        let s = self
            .seqs
            .get_mut(&id)
            .ok_or(EngineError::UnknownSequence(id.0))?;
        if len < s.len {
            s.len = len;
            let keep = len.div_ceil(BLOCK_TOKENS);
            let dropped: Vec<BlockId> = s.blocks.drain(keep..).collect();
            for b in dropped {
                self.release(b);
            }
        }
        Ok(())
    }

    fn release(&mut self, b: BlockId) {
        let rc = &mut self.refcount[b.0 as usize];
        *rc -= 1;
        if *rc == 0 {
            self.free.push(b);
        }
    }

    pub fn seq_len(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.len)
    }

    pub fn contains(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// Blocks a sequence of `len` tokens needs beyond what it holds.
    pub fn blocks_needed(&self, id: SeqId, new_tokens: usize) -> usize {
        let s = self.seqs.get(&id);
        let have = s.map_or(0, |s| s.blocks.len());
        let len = s.map_or(0, |s| s.len);
        (len + new_tokens)
            .div_ceil(BLOCK_TOKENS)
            .saturating_sub(have)
    }

    /// Reserves room for `n` more tokens of `id`; returns the position of the first one.
    /// All-or-nothing: on error nothing changed.
    pub fn extend(&mut self, id: SeqId, n: usize) -> Result<usize> {
        let needed = self.blocks_needed(id, n);
        if needed > self.free.len() {
            return Err(EngineError::OutOfBlocks {
                needed,
                free: self.free.len(),
            });
        }
        let s = self
            .seqs
            .get_mut(&id)
            .ok_or(EngineError::UnknownSequence(id.0))?;
        for _ in 0..needed {
            // Checked above that enough blocks are free.
            if let Some(b) = self.free.pop() {
                self.refcount[b.0 as usize] = 1;
                s.blocks.push(b);
            }
        }
        let start = s.len;
        s.len += n;
        Ok(start)
    }

    /// The block table of a sequence.
    pub fn block_table(&self, id: SeqId) -> Option<&[BlockId]> {
        self.seqs.get(&id).map(|s| s.blocks.as_slice())
    }

    /// Index (in f16 elements) of token slot `pos` of a block table within a layer buffer.
    #[inline]
    pub fn slot_offset(&self, table: &[BlockId], pos: usize) -> usize {
        let b = table[pos / BLOCK_TOKENS].0 as usize;
        (b * BLOCK_TOKENS + pos % BLOCK_TOKENS) * self.layout.kv_dim
    }

    pub fn layer(&self, l: usize) -> (&[u16], &[u16]) {
        (&self.k[l], &self.v[l])
    }

    pub fn layer_mut(&mut self, l: usize) -> (&mut [u16], &mut [u16]) {
        (&mut self.k[l], &mut self.v[l])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_return_to_pool() {
        let mut kv = KvCache::new(
            KvLayout {
                n_layers: 1,
                kv_dim: 4,
            },
            8,
        );
        kv.add_sequence(SeqId(1)).unwrap();
        assert_eq!(kv.extend(SeqId(1), 17).unwrap(), 0);
        assert_eq!(kv.stats().free_blocks, 6);
        assert_eq!(kv.extend(SeqId(1), 15).unwrap(), 17);
        assert_eq!(kv.stats().free_blocks, 6);
        assert!(matches!(
            kv.extend(SeqId(1), 7 * 16),
            Err(EngineError::OutOfBlocks { .. })
        ));
        kv.truncate(SeqId(1), 10).unwrap();
        assert_eq!(kv.stats().free_blocks, 7);
        kv.free_sequence(SeqId(1));
        assert_eq!(kv.stats().free_blocks, 8);
    }
}
