//! The lottery-ticket controls (see `lth_sweep::Control`): what each changes about a ticket.
//!
//! - `reinit`: the ticket's masks, unchanged, on a network initialised from [`reinit_seed`] (a
//!   seed derived from the trial's seed and the level) instead of θk. Data order and augmentation
//!   still follow the trial's seed, so only the initialisation differs from the ticket.
//! - `random_mask`: θk under masks drawn by [`random_masks`]: in every layer exactly the ticket's
//!   number of kept weights, at uniformly random positions (open_lth's layerwise `randomly_prune`).
//!
//! Both train the ticket's span, from the rewind point k to the end of training, with the same
//! learning-rate schedule positions (open_lth's default `start_at = rewind`).

use super::prune::LayerMask;
use super::rng::Rng;

/// The initialisation seed of a `reinit` control at `level` of a trial seeded `seed`.
pub fn reinit_seed(seed: u64, level: u32) -> u64 {
    // Masked to i64's range: seeds travel through the database as BIGINT.
    Rng::derive(seed, "control/reinit", level as u64).next_u64() >> 1
}

/// Random masks with exactly `ticket`'s per-layer kept counts; each layer's draw is its own
/// stream of (seed, level, layer name), so it does not depend on the other layers.
pub fn random_masks(ticket: &[LayerMask], seed: u64, level: u32) -> Vec<LayerMask> {
    ticket
        .iter()
        .map(|m| {
            let mut rng = Rng::derive(seed, &format!("control/random_mask/{}", m.name), level as u64);
            let total = m.total as usize;
            let kept = m.kept as usize;
            // Partial Fisher–Yates: the first `kept` entries of a uniformly random permutation.
            let mut idx: Vec<usize> = (0..total).collect();
            for i in 0..kept {
                let j = i + rng.below((total - i) as u64) as usize;
                idx.swap(i, j);
            }
            let mut keep = vec![false; total];
            for &i in &idx[..kept] {
                keep[i] = true;
            }
            LayerMask::from_bools(&m.name, &m.shape, &keep)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_masks_keep_each_layers_count_and_move_the_weights() {
        let a = LayerMask::from_bools("a", &[4, 25], &(0..100).map(|i| i < 37).collect::<Vec<_>>());
        let b = LayerMask::from_bools("b", &[10], &[true; 10]);
        let c = LayerMask::from_bools("c", &[7], &[false; 7]);
        let r = random_masks(&[a.clone(), b, c], 3, 2);
        assert_eq!(r.iter().map(|m| m.kept).collect::<Vec<_>>(), vec![37, 10, 0]);
        assert_eq!(r[0].shape, vec![4, 25]);
        assert_ne!(r[0].bits, a.bits, "a random mask that equals the ticket's");
        let one = std::slice::from_ref(&a);
        assert_eq!(random_masks(one, 3, 2), random_masks(one, 3, 2));
        assert_ne!(random_masks(one, 3, 2), random_masks(one, 3, 3));
        assert_ne!(reinit_seed(1, 5), 1);
        assert_ne!(reinit_seed(1, 5), reinit_seed(1, 6));
    }
}
