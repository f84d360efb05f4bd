//! The chain's catalogue and each store's shelves.

use anyhow::Context;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, LogNormal, Zipf};

/// First SKU id; SKU `i` of the catalogue is `SKU_BASE + i`.
pub const SKU_BASE: u64 = 5_000_000_000;

/// Zipf exponent of SKU popularity: the classic retail long tail.
pub const ZIPF_EXPONENT: f64 = 1.07;

/// One product of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Product {
    /// Its id.
    pub sku: u64,
    /// Shelf price before tax, in pence.
    pub price: i64,
    /// Tax rate in basis points (0, 500 or 2000: zero-rated, reduced, standard).
    pub tax_bp: i64,
}

impl Product {
    /// Tax on a line amount, rounded half up.
    pub fn tax_on(&self, amount: i64) -> i64 {
        (amount.max(0) * self.tax_bp + 5_000) / 10_000
    }
}

/// The products every store sells.
#[derive(Debug, Clone)]
pub struct Catalogue {
    products: Vec<Product>,
}

impl Catalogue {
    /// `n` products (at least 1) with log-normal prices (median about
    /// £2.50, a long tail to about £100) ending in 9 pence, and tax bands.
    pub fn new(n: u32, rng: &mut StdRng) -> anyhow::Result<Self> {
        let price = LogNormal::new(250f64.ln(), 0.9).context("price distribution")?;
        let products = (0..n.max(1))
            .map(|i| {
                let raw = price.sample(rng).clamp(19.0, 25_000.0) as i64;
                let tax_bp = match rng.random_range(0..100) {
                    0..45 => 0,
                    45..50 => 500,
                    _ => 2_000,
                };
                Product {
                    sku: SKU_BASE + u64::from(i),
                    price: (raw / 10) * 10 + 9,
                    tax_bp,
                }
            })
            .collect();
        Ok(Self { products })
    }

    /// Products in the catalogue.
    pub fn len(&self) -> usize {
        self.products.len()
    }

    /// Whether it is empty (never).
    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// Product `i` (wrapping, so never out of range).
    pub fn get(&self, i: usize) -> Product {
        self.products[i % self.products.len()]
    }
}

/// One store's view of the catalogue: which products sell best there, and
/// the simulated shelf levels the sensors report.
#[derive(Debug, Clone)]
pub struct Shelves {
    /// Popularity rank → catalogue index.
    by_rank: Vec<u32>,
    zipf: Zipf<f64>,
    /// Simulated units on the shelf, by catalogue index.
    levels: Vec<i64>,
}

impl Shelves {
    /// A store with its own popularity order over `catalogue`.
    pub fn new(catalogue: &Catalogue, rng: &mut StdRng) -> anyhow::Result<Self> {
        let n = catalogue.len();
        let mut by_rank: Vec<u32> = (0..u32::try_from(n).unwrap_or(u32::MAX)).collect();
        by_rank.shuffle(rng);
        let levels = (0..n).map(|_| rng.random_range(20..200)).collect();
        let zipf = Zipf::new(n.max(1) as f64, ZIPF_EXPONENT).context("popularity distribution")?;
        Ok(Self {
            by_rank,
            zipf,
            levels,
        })
    }

    /// Draws a catalogue index by popularity (Zipf over ranks).
    pub fn pick(&self, rng: &mut StdRng) -> usize {
        let rank = (self.zipf.sample(rng) as usize).saturating_sub(1);
        self.by_rank.get(rank).map_or(0, |&i| i as usize)
    }

    /// The popularity rank (0 = best seller) of catalogue index `i`.
    pub fn rank_of(&self, i: usize) -> Option<usize> {
        self.by_rank.iter().position(|&x| x as usize == i)
    }

    /// Simulated level of catalogue index `i`.
    pub fn level(&self, i: usize) -> i64 {
        self.levels.get(i).copied().unwrap_or(0)
    }

    /// Moves the simulated level of catalogue index `i` by `delta`.
    pub fn adjust(&mut self, i: usize, delta: i64) {
        if let Some(l) = self.levels.get_mut(i) {
            *l = l.saturating_add(delta);
        }
    }

    /// Sets the simulated level (after a count).
    pub fn set(&mut self, i: usize, level: i64) {
        if let Some(l) = self.levels.get_mut(i) {
            *l = level;
        }
    }
}
