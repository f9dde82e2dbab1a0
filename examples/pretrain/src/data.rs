//! The corpus, its windows and the byte batcher.

use std::path::Path;
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::prelude::*;

/// The embedded corpus (see `data/SOURCE.md`).
pub const TINY_SHAKESPEARE: &[u8] = include_bytes!("../data/tinyshakespeare.txt");

/// A byte-level corpus.
#[derive(Clone)]
pub struct Corpus {
    bytes: Arc<Vec<u8>>,
}

impl Corpus {
    /// The embedded tiny Shakespeare.
    pub fn embedded() -> Self {
        Self {
            bytes: Arc::new(TINY_SHAKESPEARE.to_vec()),
        }
    }

    /// A file's bytes.
    pub fn from_path(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(Self {
            bytes: Arc::new(bytes),
        })
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// `(train, valid)` windows of `seq + 1` bytes: train from the first 90%, valid from the last
    /// 10%; at most `max_train` / `max_valid` of each, in a seeded order.
    pub fn windows(
        &self,
        seq: usize,
        max_train: usize,
        max_valid: usize,
        seed: u64,
    ) -> Result<(Windows, Windows), String> {
        let split = self.bytes.len() * 9 / 10;
        let len = seq + 1;
        let train = Windows::new(self.bytes.clone(), 0..split, len, max_train, seed)?;
        let valid = Windows::new(
            self.bytes.clone(),
            split..self.bytes.len(),
            len,
            max_valid,
            seed,
        )?;
        Ok((train, valid))
    }
}

/// Non-overlapping windows of a byte range, in a seeded order (fixed across epochs).
#[derive(Clone)]
pub struct Windows {
    bytes: Arc<Vec<u8>>,
    starts: Vec<usize>,
    len: usize,
}

impl Windows {
    fn new(
        bytes: Arc<Vec<u8>>,
        range: std::ops::Range<usize>,
        len: usize,
        max: usize,
        seed: u64,
    ) -> Result<Self, String> {
        let count = (range.end - range.start) / len;
        if count == 0 {
            return Err(format!(
                "the corpus split of {} bytes holds no window of {len} bytes; use a longer corpus \
                 or a shorter --seq",
                range.end - range.start
            ));
        }
        let mut rng = ember_core::rng::SplitMix64::new(seed, &[0x57494e]);
        let mut starts: Vec<usize> = rng
            .sample(count, count)
            .into_iter()
            .map(|i| range.start + i * len)
            .collect();
        starts.truncate(max.min(count));
        Ok(Self { bytes, starts, len })
    }
}

impl Dataset<Vec<u8>> for Windows {
    fn get(&self, index: usize) -> Option<Vec<u8>> {
        let s = *self.starts.get(index)?;
        Some(self.bytes[s..s + self.len].to_vec())
    }

    fn len(&self) -> usize {
        self.starts.len()
    }
}

/// A batch of token windows `[batch, seq + 1]`.
#[derive(Clone, Debug)]
pub struct TokenBatch<B: Backend> {
    /// Byte ids.
    pub tokens: Tensor<B, 2, Int>,
}

/// Bytes → token ids.
#[derive(Clone, Default)]
pub struct ByteBatcher;

impl<B: Backend> Batcher<B, Vec<u8>, TokenBatch<B>> for ByteBatcher {
    fn batch(&self, items: Vec<Vec<u8>>, device: &B::Device) -> TokenBatch<B> {
        let (n, t) = (items.len(), items[0].len());
        let ids: Vec<i32> = items.iter().flatten().map(|&b| b as i32).collect();
        TokenBatch {
            tokens: Tensor::from_data(TensorData::new(ids, [n, t]), device),
        }
    }
}
