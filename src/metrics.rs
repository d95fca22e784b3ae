//! Detection metrics: AUROC (image and pixel level) and quantiles.

/// Area under the ROC curve of `scores` against `labels` (true = anomalous), with ties
/// counted as half (the Mann-Whitney statistic). `None` when either class is absent.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let mut order: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let positives = labels.iter().filter(|l| **l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    // Sum over positives of (negatives strictly below + half the negatives tied).
    let (mut below, mut sum) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        let (mut pos, mut neg) = (0.0, 0.0);
        while j < order.len() && order[j].0 == order[i].0 {
            if order[j].1 {
                pos += 1.0
            } else {
                neg += 1.0
            }
            j += 1;
        }
        sum += pos * (below + 0.5 * neg);
        below += neg;
        i = j;
    }
    Some(sum / (positives * negatives))
}

/// The `q` quantile (0..=1) with linear interpolation between order statistics (numpy's
/// default). Sorts `values` in place. `None` for an empty slice.
pub fn quantile(values: &mut [f32], q: f64) -> Option<f32> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f32::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let frac = (pos - lo as f64) as f32;
    Some(values[lo] + (values[hi] - values[lo]) * frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_of_perfect_random_and_inverted_rankings() {
        let s = [0.1, 0.2, 0.8, 0.9];
        assert_eq!(auroc(&s, &[false, false, true, true]), Some(1.0));
        assert_eq!(auroc(&s, &[true, true, false, false]), Some(0.0));
        assert_eq!(auroc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
        assert_eq!(auroc(&s, &[false; 4]), None);
    }

    #[test]
    fn auroc_matches_pairwise_count_with_ties() {
        let s = [0.3, 0.3, 0.1, 0.7, 0.3, 0.9, 0.2];
        let l = [true, false, false, true, true, false, false];
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for i in 0..s.len() {
            for j in 0..s.len() {
                if l[i] && !l[j] {
                    pairs += 1.0;
                    wins += if s[i] > s[j] {
                        1.0
                    } else if s[i] == s[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert!((auroc(&s, &l).unwrap() - wins / pairs).abs() < 1e-12);
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        let mut v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(quantile(&mut v, 0.5), Some(2.5));
        assert_eq!(quantile(&mut v, 1.0), Some(4.0));
        assert_eq!(quantile(&mut v, 0.0), Some(1.0));
        assert!((quantile(&mut v, 0.9).unwrap() - 3.7).abs() < 1e-6);
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
