//! Importance metrics against hand-computed values, the global cut, layer collapse and the
//! minimum-keep guard, and the sparsity reached after L levels.

use lth_sweep::ImportanceMetric as M;
use lth_worker::engine::prune::{layer_scores, prune, LayerMask, LayerWeights};
use lth_worker::engine::rng::Rng;

fn close(a: &[Option<f64>], b: &[Option<f64>]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        match (x, y) {
            (Some(x), Some(y)) => assert!((x - y).abs() < 1e-9, "{a:?} vs {b:?}"),
            (None, None) => {}
            _ => panic!("{a:?} vs {b:?}"),
        }
    }
}

/// A layer whose last weight (the largest, 3.0) is already pruned: it must not enter any sum,
/// min or max.
fn layer() -> (Vec<f64>, LayerMask) {
    (vec![0.5, -1.0, 2.0, 3.0], LayerMask::from_bools("l", &[4], &[true, true, true, false]))
}

#[test]
fn metrics_match_hand_computed_values_over_unpruned_weights() {
    let (w, m) = layer();
    let mut r = Rng::new(0);
    close(&layer_scores(M::Magnitude, &w, &m, &mut r), &[Some(0.5), Some(1.0), Some(2.0), None]);
    close(&layer_scores(M::L1, &w, &m, &mut r), &[Some(1.0 / 7.0), Some(2.0 / 7.0), Some(4.0 / 7.0), None]);
    close(&layer_scores(M::L2, &w, &m, &mut r), &[Some(0.25 / 5.25), Some(1.0 / 5.25), Some(4.0 / 5.25), None]);
    // exp(0.5), e, exp(2) = 1.6487212707, 2.7182818285, 7.3890560989; sum 11.7560591981
    close(
        &layer_scores(M::Softmax, &w, &m, &mut r),
        &[Some(1.6487212707001282 / 11.756059198074235), Some(2.718281828459045 / 11.756059198074235), Some(7.38905609893065 / 11.756059198074235), None],
    );
    // min 0.5, max 2.0 (not 3.0: that weight is pruned)
    close(&layer_scores(M::MinMax, &w, &m, &mut r), &[Some(0.0), Some(1.0 / 3.0), Some(1.0), None]);
    // LAMP: 2 → 4/4; 1 → 1/(4+1); 0.5 → 0.25/(4+1+0.25)
    close(&layer_scores(M::Lamp, &w, &m, &mut r), &[Some(0.25 / 5.25), Some(0.2), Some(1.0), None]);
    let rand = layer_scores(M::Random, &w, &m, &mut r);
    assert!(rand[3].is_none() && rand[..3].iter().all(|s| s.map(|v| (0.0..1.0).contains(&v)).unwrap()));
}

#[test]
fn lamp_ties_share_the_sum_over_weights_at_least_as_large() {
    let w = vec![1.0, -1.0, 2.0];
    let m = LayerMask::ones("l", &[3]);
    close(&layer_scores(M::Lamp, &w, &m, &mut Rng::new(0)), &[Some(1.0 / 6.0), Some(1.0 / 6.0), Some(1.0)]);
}

#[test]
fn layerwise_normalisation_changes_which_weights_go() {
    // Layer a: small weights; layer b: large ones. Magnitude prunes a first, L1 compares shares.
    let a = vec![0.1, 0.2, 0.3, 0.4];
    let b = vec![1.0, 2.0, 3.0, 10.0];
    let (ma, mb) = (LayerMask::ones("a", &[4]), LayerMask::ones("b", &[4]));
    let layers = [LayerWeights { name: "a", weights: &a, mask: &ma }, LayerWeights { name: "b", weights: &b, mask: &mb }];
    let mag = prune(&layers, M::Magnitude, 0.25, 0.0, 0, 1).unwrap();
    assert_eq!((mag[0].kept, mag[1].kept), (2, 4));
    // L1 shares: a = .1,.2,.3,.4 ; b = 1/16, 2/16, 3/16, 10/16 → lowest two are b's 1/16 and a's .1
    let l1 = prune(&layers, M::L1, 0.25, 0.0, 0, 1).unwrap();
    assert_eq!(l1[0].to_bools(), vec![false, true, true, true]);
    assert_eq!(l1[1].to_bools(), vec![false, true, true, true]);
}

#[test]
fn global_magnitude_collapses_a_layer_and_min_keep_prevents_it() {
    let small = vec![0.01, -0.02, 0.03, 0.04];
    let big: Vec<f64> = (1..=8).map(|i| i as f64).collect();
    let (ms, mb) = (LayerMask::ones("small", &[4]), LayerMask::ones("big", &[8]));
    let layers = [LayerWeights { name: "small", weights: &small, mask: &ms }, LayerWeights { name: "big", weights: &big, mask: &mb }];
    // round(0.4 × 12) = 5: all of `small` and the 1.0 of `big`.
    let collapsed = prune(&layers, M::Magnitude, 0.4, 0.0, 0, 1).unwrap();
    assert_eq!(collapsed[0].kept, 0, "the small layer collapses under one global threshold");
    assert_eq!(collapsed[1].kept, 7);
    // keep ≥ ceil(0.25 × 4) = 1 in every layer: the cut skips small's largest and takes big's 2.0.
    let guarded = prune(&layers, M::Magnitude, 0.4, 0.25, 0, 1).unwrap();
    assert_eq!(guarded[0].to_bools(), vec![false, false, false, true]);
    assert_eq!(guarded[1].to_bools(), vec![false, false, true, true, true, true, true, true]);
    assert_eq!(guarded[0].kept + guarded[1].kept, 7, "the level still removes round(rate × remaining)");
}

#[test]
fn ties_fall_on_earlier_layers_and_lower_indices() {
    let w = vec![1.0; 4];
    let m = LayerMask::ones("a", &[4]);
    let m2 = LayerMask::ones("b", &[4]);
    let layers = [LayerWeights { name: "a", weights: &w, mask: &m }, LayerWeights { name: "b", weights: &w, mask: &m2 }];
    let out = prune(&layers, M::Magnitude, 0.25, 0.0, 0, 1).unwrap();
    assert_eq!(out[0].to_bools(), vec![false, false, true, true]);
    assert_eq!(out[1].kept, 4);
}

#[test]
fn sparsity_after_l_levels_is_one_minus_keep_to_the_l() {
    let sizes = [1000usize, 300, 37, 5000];
    let mut rng = Rng::new(42);
    let weights: Vec<Vec<f64>> = sizes.iter().map(|&n| (0..n).map(|_| rng.next_f64() * 2.0 - 1.0).collect()).collect();
    let total: usize = sizes.iter().sum();
    let names = ["a", "b", "c", "d"];
    for metric in lth_sweep::ImportanceMetric::ALL {
        for &rate in &[0.2, 0.5] {
            let mut masks: Vec<LayerMask> = sizes.iter().zip(names).map(|(&n, name)| LayerMask::ones(name, &[n as i64])).collect();
            for level in 1..=6u32 {
                let layers: Vec<LayerWeights> =
                    masks.iter().zip(&weights).zip(names).map(|((m, w), n)| LayerWeights { name: n, weights: w, mask: m }).collect();
                masks = prune(&layers, metric, rate, 0.0, 7, level).unwrap();
                let kept: u64 = masks.iter().map(|m| m.kept).sum();
                let sparsity = 1.0 - kept as f64 / total as f64;
                let expected = 1.0 - (1.0f64 - rate).powi(level as i32);
                // global rounding: ≤ ½ weight per level; uniform: ≤ ½ weight per layer per level
                let slack = level as f64 * sizes.len() as f64 * 0.5 / total as f64 + 1e-12;
                assert!((sparsity - expected).abs() <= slack, "{metric} rate {rate} level {level}: {sparsity} vs {expected}");
                // pruned stays pruned
                for (m, w) in masks.iter().zip(&weights) {
                    assert_eq!(m.total as usize, w.len());
                }
            }
        }
    }
}

#[test]
fn pruned_weights_stay_pruned_across_levels() {
    let w: Vec<f64> = (0..100).map(|i| ((i * 37) % 101) as f64 / 100.0).collect();
    let mut m = LayerMask::ones("a", &[100]);
    for level in 1..=5 {
        let next = prune(&[LayerWeights { name: "a", weights: &w, mask: &m }], M::Softmax, 0.3, 0.0, 1, level).unwrap().remove(0);
        for i in 0..100 {
            if !m.get(i) {
                assert!(!next.get(i), "weight {i} came back");
            }
        }
        m = next;
    }
}

#[test]
fn random_metric_is_seeded() {
    let w: Vec<f64> = (0..50).map(|i| i as f64).collect();
    let m = LayerMask::ones("a", &[50]);
    let l = [LayerWeights { name: "a", weights: &w, mask: &m }];
    let a = prune(&l, M::Random, 0.5, 0.0, 3, 1).unwrap();
    let b = prune(&l, M::Random, 0.5, 0.0, 3, 1).unwrap();
    let c = prune(&l, M::Random, 0.5, 0.0, 4, 1).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn bad_rates_are_refused_with_a_reason() {
    let w = vec![1.0];
    let m = LayerMask::ones("a", &[1]);
    let e = prune(&[LayerWeights { name: "a", weights: &w, mask: &m }], M::L1, 1.5, 0.0, 0, 1).unwrap_err();
    assert!(e.to_string().contains("[0, 1)"), "{e}");
}
